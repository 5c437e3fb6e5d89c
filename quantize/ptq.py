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


def quantize_onnx(model, calibration: list[np.ndarray], opts: QuantOptions, input_name: str = "image",
                  plain: bool = False):
    """INT8 ONNX model with QuantizeLinear/DequantizeLinear pairs (QDQ), which ONNX Runtime fuses into INT8 kernels.
    `plain` returns NNCF's output untouched (the benchmarks' baseline)."""
    nncf = _nncf()
    dataset = nncf.Dataset(calibration, lambda x: {input_name: x})
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=min(opts.subset_size, len(calibration)), ignored_scope=_ignored(opts),
                              fast_bias_correction=opts.fast_bias_correction, advanced_parameters=_advanced(opts))
    return quantized if plain else keep_qdq_matmuls_integer(quantized)


def keep_qdq_matmuls_integer(model):
    """Give each quantized MatMul's bias the MatMul's rank ([N] -> [1, 1, N]: same broadcast, same numbers).

    ONNX Runtime's MatMulAddFusion turns MatMul + Add(bias [N]) on 3-D tokens into Reshape + Gemm + Reshape before
    its QDQ fusions run, and a Gemm whose output is not quantized has no INT8 kernel: the weights were dequantized
    on every run and multiplied in float (CrossFormer-T 224: 64 of 80 linears; 2.6x slower than with the fusion
    off). That fusion takes only a rank-1 bias on N-D inputs, so with a full-rank bias the DequantizeLinear ->
    MatMul pairs become MatMulIntegerToFloat (INT8 GEMM) as intended.
    """
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in list(inferred.graph.value_info) + list(
        inferred.graph.output) if v.type.tensor_type.HasField("shape")}
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}
    made: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for i, name in enumerate(node.input):
            matmul = producer.get(node.input[1 - i])
            if name not in inits or matmul is None or matmul.op_type != "MatMul":
                continue
            weight = producer.get(matmul.input[1])
            r = rank.get(matmul.output[0], 0)
            bias = numpy_helper.to_array(inits[name])
            if weight is None or weight.op_type != "DequantizeLinear" or bias.ndim != 1 or r < 3:
                continue
            key = f"{name}_rank{r}"
            if key not in made:
                model.graph.initializer.append(numpy_helper.from_array(bias.reshape((1,) * (r - 1) + (-1,)), key))
                made[key] = key
            node.input[i] = key
    used = {n for node in model.graph.node for n in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return model


# Ops the XNNPACK quantizer would make INT8 besides linears and convs. Measured on crossformer-fmnist, 10k test images
# (FP32 92.15%): everything (its default: every add and mul, i.e. also LayerNorm's arithmetic, the attention bias
# add and q's scaling) 91.90%, 98.28% agreement; linears + convs only 91.97%, 99.17%; linears + convs + the
# residual adds 91.99%, 99.02%, and faster than linears-only (the residual stream stays INT8 between blocks).
ELEMENTWISE = (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)


def _residual_only(node) -> bool:
    """Quantize an add / mul only where a transformer block adds its residual (not inside norms or attention)."""
    if node.target not in ELEMENTWISE:
        return True
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return False
    owner = list(stack.values())[-1][1]
    return getattr(owner, "__name__", str(owner)).split(".")[-1].endswith("Block")


def xnnpack_quantizer(scope: str = "residual"):
    """XNNPACK's quantizer (symmetric per-channel weights, per-tensor activations) over `scope`: "residual"
    (linears, convs, residual adds), "gemm" (linears and convs) or "all" (XNNPACK's default set)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer()
    if scope == "all":
        return quantizer.set_global(config)
    if scope == "residual":
        quantizer.set_global(config)
        quantizer.set_filter_function(_residual_only)
        return quantizer
    if scope == "gemm":
        return quantizer.set_module_type(nn.Linear, config).set_module_type(nn.Conv2d, config)
    raise ValueError(f"unknown XNNPACK quantization scope {scope!r}; use residual, gemm or all")


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
