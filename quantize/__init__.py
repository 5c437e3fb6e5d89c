"""INT8 through NNCF: post-training quantization per model representation, and quantization-aware fine-tuning.

Sits below `export` (export imports quantize, never the reverse) and knows nothing of file formats.
"""

from .ptq import AccuracyTarget, QuantOptions, calibration_list, quantize_onnx, quantize_openvino, quantize_pt2e, quantize_pt2e_dynamic

__all__ = ["AccuracyTarget", "QuantOptions", "calibration_list", "quantize_onnx", "quantize_openvino", "quantize_pt2e",
           "quantize_pt2e_dynamic"]
