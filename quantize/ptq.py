"""Post-training INT8 through NNCF, one function per model representation (in-memory; no file formats here).

- OpenVINO `ov.Model` and ONNX `ModelProto`: `nncf.quantize` with the transformer model type (keeps LayerNorm,
  residual adds and softmax inputs in float, adds SmoothQuant).
- torch (for ExecuTorch XNNPACK and Core ML W8A8): NNCF's `quantize_pt2e` driving ExecuTorch's `XNNPACKQuantizer`
  (symmetric per-channel weights, per-tensor activations) on a torch.export graph; the result is a quantize /
  dequantize graph that ExecuTorch lowers to XNNPACK INT8 kernels and coremltools converts to a W8A8 ML program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class QuantOptions:
    # Images NNCF draws statistics from (it takes the first `subset_size` of the calibration set).
    subset_size: int = 300
    # SmoothQuant alpha for MatMul/Linear; None keeps NNCF's default for the model type, a negative value disables
    # (the default: measured to hurt crossformer-fmnist on OpenVINO, see export/request.py).
    smooth_quant_alpha: float | None = -1.0
    # Node-name regular expressions kept in float (e.g. "head" or ".*fc2.*").
    keep_float: tuple[str, ...] = field(default_factory=tuple)
    fast_bias_correction: bool = True


def _nncf():
    try:
        import nncf
    except ImportError as e:
        raise ImportError("INT8 needs NNCF: pip install 'edge-crossformer[openvino]'") from e
    return nncf


def _advanced(opts: QuantOptions):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    if opts.smooth_quant_alpha is None:
        return None
    return AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=opts.smooth_quant_alpha))


def _ignored(opts: QuantOptions):
    nncf = _nncf()
    return nncf.IgnoredScope(patterns=list(opts.keep_float), validate=False) if opts.keep_float else None


def quantize_openvino(model, calibration: list[np.ndarray], opts: QuantOptions):
    """INT8 OpenVINO model (FakeQuantize nodes the CPU plugin runs as INT8)."""
    nncf = _nncf()
    return nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=min(opts.subset_size, len(calibration)), ignored_scope=_ignored(opts),
                         fast_bias_correction=opts.fast_bias_correction, advanced_parameters=_advanced(opts))


def quantize_onnx(model, calibration: list[np.ndarray], opts: QuantOptions, input_name: str = "image"):
    """INT8 ONNX model with QuantizeLinear/DequantizeLinear pairs (QDQ), which ONNX Runtime fuses into INT8 kernels."""
    nncf = _nncf()
    dataset = nncf.Dataset(calibration, lambda x: {input_name: x})
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=min(opts.subset_size, len(calibration)), ignored_scope=_ignored(opts),
                         fast_bias_correction=opts.fast_bias_correction, advanced_parameters=_advanced(opts))


def xnnpack_quantizer():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def quantize_pt2e(module: nn.Module, example: torch.Tensor, calibration: list[np.ndarray],
                  opts: QuantOptions) -> torch.fx.GraphModule:
    """torch module -> INT8 quantize/dequantize graph (PT2E) calibrated by NNCF with the XNNPACK quantizer."""
    nncf = _nncf()
    from nncf.experimental.torch.fx import quantize_pt2e as nncf_quantize_pt2e
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    with torch.no_grad():
        graph = torch.export.export(module, (example,)).module()
    smooth = opts.smooth_quant_alpha is not None and opts.smooth_quant_alpha >= 0
    dataset = nncf.Dataset(calibration, lambda x: torch.from_numpy(x))
    return nncf_quantize_pt2e(
        graph, xnnpack_quantizer(), dataset, subset_size=min(opts.subset_size, len(calibration)),
        fast_bias_correction=opts.fast_bias_correction, smooth_quant=smooth,
        smooth_quant_params=AdvancedSmoothQuantParameters(matmul=opts.smooth_quant_alpha) if smooth else None,
        fold_quantize=True)


def calibration_list(images: torch.Tensor) -> list[np.ndarray]:
    """[N, 3, S, S] in [0, 1] -> N arrays of [1, 3, S, S] float32 (artifacts are batch 1)."""
    return [images[i:i + 1].numpy().astype(np.float32) for i in range(len(images))]
