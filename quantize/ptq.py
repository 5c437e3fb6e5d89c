"""Post-training INT8 through NNCF, one function per model representation (in-memory; no file formats here).

- OpenVINO `ov.Model` and ONNX `ModelProto`: `nncf.quantize` with the transformer model type (keeps LayerNorm,
  residual adds and softmax inputs in float, adds SmoothQuant).
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
                  plain: bool = False, accuracy: AccuracyTarget | None = None):
    """INT8 ONNX model with QuantizeLinear/DequantizeLinear pairs (QDQ), which ONNX Runtime fuses into INT8 kernels.
    `plain` returns NNCF's output untouched (the benchmarks' baseline); `accuracy` as in quantize_openvino."""
    quantized = _quantize(model, calibration, opts, lambda x: {input_name: x}, accuracy, _onnx_runner(input_name))
    if plain:
        return quantized
    model = quantize_gemm_biases(keep_qdq_matmuls_integer(quantized))
    model = quantize_conv_outputs(model, calibration[:opts.subset_size], input_name)
    return fold_float_conv_weights(model)


def _conv_output_ranges(model, names: list[str], calibration: list[np.ndarray], input_name: str) -> dict:
    """min / max of the named tensors over the calibration images (ONNX Runtime, tensors exposed as outputs)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in names])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    lo = {n: 0.0 for n in names}
    hi = {n: 0.0 for n in names}
    for x in calibration:
        for n, y in zip(names, session.run(names, {input_name: x})):
            lo[n], hi[n] = min(lo[n], float(y.min())), max(hi[n], float(y.max()))
    return {n: (lo[n], hi[n]) for n in names}


VALUE_PRESERVING = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def _source_dequantize(name: str, producer: dict):
    """The DequantizeLinear that `name` comes from through value-preserving reshapes and transposes, or None."""
    while name in producer:
        node = producer[name]
        if node.op_type == "DequantizeLinear":
            return node
        if node.op_type not in VALUE_PRESERVING:
            return None
        name = node.input[0]
    return None


def _uint8_input(model, conv, dq, inits: dict) -> bool:
    """Feed `conv` through its own uint8 Quantize / Dequantize pair with the scale of the int8 pair its input came
    from and zero point + 128: the values are already on that grid, so they pass unchanged."""
    from onnx import helper, numpy_helper

    if len(dq.input) < 3 or dq.input[2] not in inits or dq.input[1] not in inits:
        return False
    zero = numpy_helper.to_array(inits[dq.input[2]])
    if zero.size != 1 or zero.dtype not in (np.int8, np.uint8):
        return False
    shift = 128 if zero.dtype == np.int8 else 0
    base = f"{conv.name}_input_u8"
    model.graph.initializer.append(numpy_helper.from_array(
        np.array(int(zero.reshape(())) + shift).astype(np.uint8), f"{base}_zero_point"))
    new_q = helper.make_node("QuantizeLinear", [conv.input[0], dq.input[1], f"{base}_zero_point"], [f"{base}_q"],
                             name=f"{base}_quantize")
    new_dq = helper.make_node("DequantizeLinear", [f"{base}_q", dq.input[1], f"{base}_zero_point"], [f"{base}_dq"],
                              name=f"{base}_dequantize")
    at = list(model.graph.node).index(conv)
    model.graph.node.insert(at, new_dq)
    model.graph.node.insert(at, new_q)
    conv.input[0] = f"{base}_dq"
    return True


def quantize_conv_outputs(model, calibration: list[np.ndarray], input_name: str = "image"):
    """Quantize each QDQ Conv's output too (uint8, per tensor, min / max over the calibration images), so ONNX
    Runtime runs DequantizeLinear -> Conv -> QuantizeLinear as one INT8 QLinearConv (on x86 its QDQ conv fusion takes
    uint8 activations only, so the conv's input pair is made uint8 too: same scale, zero point + 128, same values).

    NNCF quantizes the convs' inputs and weights but not their outputs (CrossFormer's embedding and merge convs feed
    a concat and LayerNorm), and ONNX Runtime has no INT8 kernel for a QDQ Conv with a float output: it ran them in
    float (CrossFormer-T 224: 4.4 ms, 15% of the INT8 model).
    """
    from onnx import helper, numpy_helper

    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) >= 2
             and producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear"
             and _source_dequantize(n.input[0], producer) is not None]
    if not convs or not calibration:
        return model
    ranges = _conv_output_ranges(model, [c.output[0] for c in convs], calibration, input_name)
    for conv in convs:
        if not _uint8_input(model, conv, _source_dequantize(conv.input[0], producer), inits):
            continue
        out = conv.output[0]
        lo, hi = ranges[out]
        scale = np.float32(max(hi - lo, 1e-8) / 255.0)
        zero = np.uint8(np.clip(np.round(-lo / scale), 0, 255))
        raw = f"{out}_float"
        conv.output[0] = raw
        model.graph.initializer.extend([numpy_helper.from_array(np.array(scale), f"{out}_scale"),
                                        numpy_helper.from_array(np.array(zero), f"{out}_zero_point")])
        q = helper.make_node("QuantizeLinear", [raw, f"{out}_scale", f"{out}_zero_point"], [f"{out}_q"],
                             name=f"{out}_quantize")
        dq = helper.make_node("DequantizeLinear", [f"{out}_q", f"{out}_scale", f"{out}_zero_point"], [out],
                              name=f"{out}_dequantize")
        at = list(model.graph.node).index(conv) + 1
        model.graph.node.insert(at, dq)
        model.graph.node.insert(at, q)
    return model


def _input_scale(name: str, producer: dict, inits: dict) -> np.ndarray | None:
    """The per-tensor scale of the DequantizeLinear that `name` comes from, through value-preserving reshapes."""
    from onnx import numpy_helper

    node = _source_dequantize(name, producer)
    scale = inits.get(node.input[1]) if node is not None else None
    return None if scale is None else numpy_helper.to_array(scale).astype(np.float64)


def quantize_gemm_biases(model):
    """Give each QDQ Gemm an INT32 bias (scale = input scale x weight scale, zero point 0), the QDQ form of a bias.

    ONNX Runtime fuses DequantizeLinear -> Gemm into one INT8 QGemm (bias and rescale inside: no separate Add, no
    float GEMM) only when the bias is dequantized too; NNCF leaves it float. Rounding the bias to a grid of
    input scale x weight scale changes it by at most half that step (far below the activations' own quantization).
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    added = []
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        weight = producer.get(node.input[1])
        a_scale = _input_scale(node.input[0], producer, inits)
        if not trans_b or weight is None or weight.op_type != "DequantizeLinear" or a_scale is None \
                or a_scale.size != 1 or weight.input[1] not in inits:
            continue
        w_scale = numpy_helper.to_array(inits[weight.input[1]]).astype(np.float64).reshape(-1)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        scale = (a_scale.reshape(()) * w_scale * np.ones_like(bias)).astype(np.float32)
        q = np.clip(np.round(bias / scale.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
        base = f"{node.input[2]}_int32"
        model.graph.initializer.extend([numpy_helper.from_array(q, base),
                                        numpy_helper.from_array(scale, f"{base}_scale"),
                                        numpy_helper.from_array(np.zeros_like(q), f"{base}_zero_point")])
        dq = helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"], [f"{base}_dq"],
                              name=f"{base}_dq", axis=0)
        added.append((node, dq))
        node.input[2] = f"{base}_dq"
    for node, dq in added:
        model.graph.node.insert(list(model.graph.node).index(node), dq)
    return _drop_unused_initializers(model)


def _drop_unused_initializers(model):
    used = {n for node in model.graph.node for n in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return model


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
    return _drop_unused_initializers(model)


def fold_float_conv_weights(model):
    """Replace each constant DequantizeLinear that feeds only float Convs (output not quantized) by its float
    result (same numbers).

    ONNX Runtime has no INT8 kernel for a QDQ Conv whose output is not quantized (CrossFormer's convs feed a concat
    and LayerNorm): it ran DequantizeLinear on the weights every inference and then a float Conv that could not
    pre-pack them (CrossFormer-T 224: 8.7 ms of convs + 2.6 ms of dequantization vs 4.4 ms for the FP32 model's
    convs). With the dequantized weights stored as constants the Conv pre-packs them like any float conv, and its
    input keeps its Quantize/Dequantize pair, so the numbers are those of the QDQ model.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not all(n in inits for n in node.input if n):
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "Conv" for u in users):
            continue
        after = [c for u in users for c in consumers.get(u.output[0], [])]
        if after and all(c.op_type == "QuantizeLinear" for c in after):
            # Output quantized (quantize_conv_outputs): ONNX Runtime fuses it into QLinearConv with these INT8
            # weights. Folded to float, ORT would requantize them itself at load time, over the full 8-bit range.
            continue
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        model.graph.initializer.append(numpy_helper.from_array((q - zero) * scale, node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    return _drop_unused_initializers(model)


# Ops the XNNPACK quantizer would make INT8 besides linears and convs. Measured on crossformer-fmnist, 10k test images
# (FP32 92.15%): everything (its default: every add and mul, i.e. also LayerNorm's arithmetic, the attention bias
# add and q's scaling) 91.90%, 98.28% agreement; linears + convs only 91.97%, 99.17%; linears + convs + the
# residual adds 91.99%, 99.02%, and faster than linears-only (the residual stream stays INT8 between blocks).
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


def calibration_list(images: torch.Tensor) -> list[np.ndarray]:
    """[N, 3, S, S] in [0, 1] -> N arrays of [1, 3, S, S] float32 (artifacts are batch 1)."""
    return [images[i:i + 1].numpy().astype(np.float32) for i in range(len(images))]
