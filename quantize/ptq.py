"""Post-training INT8 through NNCF, one function per model representation (in-memory; no file formats here).

- OpenVINO `ov.Model` and ONNX `ModelProto`: `nncf.quantize` with the transformer model type (keeps LayerNorm,
  residual adds and softmax inputs in float, adds SmoothQuant); what a runtime wants rearranged in the result lives
  with its target (export/onnx_qdq.py).
- torch (for ExecuTorch XNNPACK and Core ML W8A8): NNCF's `quantize_pt2e` driving ExecuTorch's `XNNPACKQuantizer`
  (symmetric per-channel weights, per-tensor activations) on a torch.export graph; the result is a quantize /
  dequantize graph that ExecuTorch lowers to XNNPACK INT8 kernels and coremltools converts to a W8A8 ML program.
"""

from __future__ import annotations

import re
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
    # OpenVINO / ONNX weights: NNCF's overflow fix on every layer ("all": 7-bit values, at most 64 in magnitude,
    # stored as INT8), on none ("none": full range [-127, 127]) or on the first layer only ("first_layer": NNCF's
    # default). Why: x86 CPUs without VNNI sum adjacent u8 x s8 products in a saturating int16 (pmaddubsw); with
    # full-range weights 255 x (|w_i| + |w_i+1|) can exceed 32767 and results then differ from a VNNI / AMX / Arm
    # CPU's. With 7-bit weights every pair stays <= 128 x 255 = 32640: one file, the same numbers on every CPU.
    overflow_fix: str = "all"


def _nncf():
    try:
        import nncf
    except ImportError as e:
        raise ImportError("INT8 needs NNCF: pip install 'edge-crossformer[int8]'") from e
    return nncf


def _advanced(opts: QuantOptions):
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                       OverflowFix)

    fixes = {"all": OverflowFix.ENABLE, "none": OverflowFix.DISABLE, "first_layer": OverflowFix.FIRST_LAYER}
    if opts.overflow_fix not in fixes:
        raise ValueError(f"overflow_fix must be one of {', '.join(fixes)}, got {opts.overflow_fix!r}")
    kw = {"overflow_fix": fixes[opts.overflow_fix]}
    if opts.smooth_quant_alpha is not None:
        kw["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=opts.smooth_quant_alpha)
    return AdvancedQuantizationParameters(**kw)


def _ignored(opts: QuantOptions):
    nncf = _nncf()
    return nncf.IgnoredScope(patterns=list(opts.keep_float), validate=False) if opts.keep_float else None


@dataclass
class AccuracyTarget:
    """What `--max-accuracy-drop` asks of INT8: the largest top-1 drop in percentage points on `images` (batch-1
    arrays), against `labels` (ground truth, or the FP32 model's top-1 where there are none: agreement then)."""
    images: list[np.ndarray]
    labels: np.ndarray
    max_drop_pp: float


def _quantize(model, calibration: list, opts: QuantOptions, transform, accuracy: AccuracyTarget | None,
              runner_of):
    """nncf.quantize, or with `accuracy` NNCF's quantize_with_accuracy_control (it reverts the quantizer groups
    that cost most to float until the drop holds); `runner_of(model)` runs what NNCF hands the validation."""
    nncf = _nncf()
    common = {"model_type": nncf.ModelType.TRANSFORMER, "subset_size": min(opts.subset_size, len(calibration)),
              "ignored_scope": _ignored(opts), "fast_bias_correction": opts.fast_bias_correction}
    dataset = nncf.Dataset(calibration, transform)
    if accuracy is None:
        return nncf.quantize(model, dataset, advanced_parameters=_advanced(opts), **common)
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    def validate(candidate, items) -> tuple[float, list[float]]:
        run = runner_of(candidate)
        hits = [float(np.argmax(run(x)) == y) for x, y in items]
        return (float(np.mean(hits)) if hits else 0.0), hits

    items = list(zip(accuracy.images, accuracy.labels.tolist()))
    return nncf.quantize_with_accuracy_control(
        model, dataset, nncf.Dataset(items, lambda item: transform(item[0])), validate,
        max_drop=accuracy.max_drop_pp / 100.0, drop_type=nncf.DropType.ABSOLUTE,
        advanced_quantization_parameters=_advanced(opts),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            ranking_subset_size=min(300, len(items)), num_ranking_workers=1), **common)


def _openvino_runner(compiled):
    return lambda x: compiled(x)[0]


def quantize_openvino(model, calibration: list[np.ndarray], opts: QuantOptions,
                      accuracy: AccuracyTarget | None = None):
    """INT8 OpenVINO model (FakeQuantize nodes the CPU plugin runs as INT8); 7-bit weights by default (see
    QuantOptions.overflow_fix). `accuracy`: NNCF's accuracy control keeps what costs most in float."""
    return _quantize(model, calibration, opts, lambda x: x, accuracy, _openvino_runner)


def _onnx_runner(input_name: str):
    import onnxruntime as ort

    cache: dict = {}

    def runner_of(model):
        # NNCF hands the same ModelProto for many single-item validations: one session per model.
        if cache.get("model") is not model:
            cache["model"] = model
            cache["session"] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session = cache["session"]
        return lambda x: session.run(None, {input_name: x})[0]
    return runner_of


def quantize_onnx(model, calibration: list[np.ndarray], opts: QuantOptions, input_name: str = "image",
                  accuracy: AccuracyTarget | None = None):
    """INT8 ONNX model with QuantizeLinear/DequantizeLinear pairs (QDQ), as NNCF writes it (the ONNX target then
    rearranges it for ONNX Runtime's INT8 kernels: export/onnx_qdq.py); `accuracy` as in quantize_openvino."""
    return _quantize(model, calibration, opts, lambda x: {input_name: x}, accuracy, _onnx_runner(input_name))


ELEMENTWISE = (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)


def _residual_only(node) -> bool:
    """Quantize an add / mul only where a transformer block adds its residual (not inside norms or attention)."""
    if node.target not in ELEMENTWISE:
        return True
    owner = _module_of(node)
    if owner is None:
        return False
    return getattr(owner[1], "__name__", str(owner[1])).split(".")[-1].endswith("Block")


def _module_of(node) -> tuple | None:
    """(dotted path, type) of the innermost module a PT2E node came from, e.g. ("model.layers.0.blocks.1.mlp.fc2",
    nn.Linear); None if the node records none."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1] if stack else None


def _module_path(node) -> str:
    owner = _module_of(node)
    return owner[0] if owner else ""


def _kept_float(node, patterns: tuple[str, ...]) -> bool:
    """`--keep-float` for PT2E graphs: a regular expression found in the node's module path or in its name."""
    return any(re.search(p, _module_path(node)) or re.search(p, node.name) for p in patterns)


def _filtered_xnnpack_quantizer():
    """XNNPACKQuantizer whose filter also reaches `cat`: ExecuTorch 1.5.1's cat annotator ignores the filter, so a
    concatenation the filter excludes (e.g. --keep-float on the patch embedding) still quantized its inputs, and
    the annotation then propagated through the reshapes and LayerNorm statistics after it."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import propagate_annotation

    class FilteredXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = self._annotate_for_quantization_config(model)
            if self.filter_fn is not None:
                for node in model.graph.nodes:
                    if node.target == torch.ops.aten.cat.default and not self.filter_fn(node):
                        node.meta.pop("quantization_annotation", None)
            propagate_annotation(model)
            return model

    return FilteredXNNPACKQuantizer()


def xnnpack_quantizer(scope: str = "residual", qat: bool = False, keep_float: tuple[str, ...] = (),
                      dynamic: bool = False):
    """XNNPACK's quantizer (symmetric per-channel weights, per-tensor activations) over `scope`: "residual"
    (linears, convs, residual adds), "gemm" (linears and convs) or "all" (XNNPACK's default set), minus the nodes
    `keep_float` matches (module path or node name); `qat` gives fake-quantizers with moving-average ranges
    (quantization-aware training) instead of observers. `dynamic`: the linears only, their input quantized per row
    at run time (XNNPACK's qd8-f32-qc8w GEMMs: INT8 x INT8 products, FP32 out), nothing calibrated."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    quantizer = _filtered_xnnpack_quantizer()
    patterns = tuple(keep_float)
    if dynamic:
        dyn = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True, is_qat=qat)
        quantizer.set_module_type(nn.Linear, dyn)
        if patterns:
            quantizer.set_filter_function(lambda node: not _kept_float(node, patterns))
        return quantizer
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if scope not in ("residual", "gemm", "all"):
        raise ValueError(f"unknown XNNPACK quantization scope {scope!r}; use residual, gemm or all")
    if scope == "gemm":
        if keep_float:
            raise ValueError("keep_float needs the residual or all scope")
        return quantizer.set_module_type(nn.Linear, config).set_module_type(nn.Conv2d, config)
    quantizer.set_global(config)
    if scope == "residual" or patterns:
        in_scope = _residual_only if scope == "residual" else (lambda node: True)
        quantizer.set_filter_function(lambda node: in_scope(node) and not _kept_float(node, patterns))
    return quantizer


def quantize_pt2e(module: nn.Module, example: torch.Tensor, calibration: list[np.ndarray],
                  opts: QuantOptions, dynamic_shapes=None) -> torch.fx.GraphModule:
    """torch module -> INT8 quantize/dequantize graph (PT2E) calibrated by NNCF with the XNNPACK quantizer.
    `dynamic_shapes` as torch.export takes them (the sensitivity analysis evaluates batched)."""
    nncf = _nncf()
    from nncf.experimental.torch.fx import quantize_pt2e as nncf_quantize_pt2e
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    with torch.no_grad():
        graph = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes).module()
    smooth = opts.smooth_quant_alpha is not None and opts.smooth_quant_alpha >= 0
    dataset = nncf.Dataset(calibration, lambda x: torch.from_numpy(x))
    return nncf_quantize_pt2e(
        graph, xnnpack_quantizer(keep_float=opts.keep_float), dataset, subset_size=min(opts.subset_size, len(calibration)),
        fast_bias_correction=opts.fast_bias_correction, smooth_quant=smooth,
        smooth_quant_params=AdvancedSmoothQuantParameters(matmul=opts.smooth_quant_alpha) if smooth else None,
        fold_quantize=True)


def quantize_pt2e_dynamic(module: nn.Module, example: torch.Tensor, opts: QuantOptions) -> torch.fx.GraphModule:
    """torch module -> INT8 graph with dynamically quantized linears: per-channel INT8 weights, inputs quantized
    with parameters chosen at run time (the graph spells one scale per tensor; XNNPACK, whose only dynamic mode is
    per row, lowers it to one per token). Nothing to calibrate, so NNCF has no part in it.
    Measured on crossformer-fmnist (ExecuTorch, 10k test images): 0.02 pp below FP32, 99.95% top-1 agreement, vs
    0.15 pp and 99.03% for the static scheme; CrossFormer-T 224 runs 12-18% slower than static INT8."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        graph = torch.export.export(module, (example,)).module()
        prepared = prepare_pt2e(graph, xnnpack_quantizer(keep_float=opts.keep_float, dynamic=True))
        prepared(example)  # weight observers only; activations get their ranges at run time
        return convert_pt2e(prepared)


def float_outputs(graph: torch.fx.GraphModule, where=lambda producer: True) -> torch.fx.GraphModule:
    """In place: each graph output read through quantize -> dequantize whose producer satisfies `where` reads the
    producer's float tensor instead (the pair goes: nothing downstream reads an output). Returns the graph."""
    def quantized_op(node, kind: str) -> bool:  # e.g. quantized_decomposed.quantize_per_tensor.default
        return (isinstance(node, torch.fx.Node) and node.op == "call_function"
                and str(node.target).split(".")[1:2] in ([f"{kind}_per_tensor"], [f"{kind}_per_channel"]))

    def unquantized(value):
        if quantized_op(value, "dequantize") and quantized_op(value.args[0], "quantize"):
            producer = value.args[0].args[0]
            if isinstance(producer, torch.fx.Node) and where(producer):
                return producer
        return value

    output = next(node for node in graph.graph.nodes if node.op == "output")
    output.args = tuple(type(a)(unquantized(v) for v in a) if isinstance(a, (list, tuple)) else unquantized(a)
                        for a in output.args)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def calibration_list(images: torch.Tensor) -> list[np.ndarray]:
    """[N, 3, S, S] in [0, 1] -> N arrays of [1, 3, S, S] float32 (artifacts are batch 1)."""
    return [images[i:i + 1].numpy().astype(np.float32) for i in range(len(images))]
