"""Static check of an x86 INT8 artifact: can its weights saturate the 16-bit pair sums of CPUs without VNNI?

ONNX Runtime and OpenVINO multiply u8 activations by s8 weights. With VNNI or AMX the products go straight into
32-bit sums. Without (SSE, AVX2, AVX-512 without VNNI) `pmaddubsw` first adds two adjacent products into a
saturating int16: x_i * w_i + x_i+1 * w_i+1 with x in [0, 255]. The largest such sum is 255 x (the pair's positive
weights) and the smallest -255 x (its negative weights), so a pair can leave int16 exactly when
255 x (w_i+ + w_i+1+) > 32767 or 255 x (w_i- + w_i+1-) > 32768. 7-bit weights (|w| <= 64) never can.

"Adjacent" is the kernels' reduction order: along K for MatMul / Gemm (the weight's input-feature axis), and for
convolutions along the input channels, innermost in the (kh, kw, C) patch order of ONNX Runtime's NHWC im2col and
of oneDNN's channel-blocked weights. Reading the file, not running it, makes the check hold on any CI machine.

Products of two INT8 activations (attention's q @ k^T) have no weight to bound and are only counted
(`activation_products`): ONNX Runtime moves both operands to u8, and its u8 x u8 kernels widen to 16 bits before
multiplying (pmaddwd), which cannot saturate; OpenVINO's fused attention is its own kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INT16_MAX = 32767
U8_MAX = 255
RULE = ("255 x (sum of a pair's same-sign weights) must stay within int16 for every adjacent pair of INT8 weights "
        "in the kernels' reduction order")


def pairs_at_risk(weights: np.ndarray) -> tuple[int, int]:
    """(pairs that can saturate, largest same-sign pair sum) for integer weights [rows, K], paired along K."""
    w = np.asarray(weights, dtype=np.int64)
    if w.shape[-1] % 2:
        w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,), np.int64)], axis=-1)
    a, b = w[..., 0::2], w[..., 1::2]
    pos = np.maximum(a, 0) + np.maximum(b, 0)
    neg = np.maximum(-a, 0) + np.maximum(-b, 0)
    risky = (pos * U8_MAX > INT16_MAX) | (neg * U8_MAX > INT16_MAX + 1)
    return int(risky.sum()), int(max(pos.max(initial=0), neg.max(initial=0)))


def reduction_rows(weights: np.ndarray, kind: str, k_axis: int = -1) -> np.ndarray:
    """Weights as [outputs, K] in the order the INT8 kernels reduce them.

    kind "conv": [O, I, kh, kw] -> [O, kh * kw * I] (channels innermost); "matmul": the K axis moved last."""
    if kind == "conv":
        w = np.asarray(weights)
        return np.moveaxis(w, 1, -1).reshape(w.shape[0], -1) if w.ndim >= 3 else w.reshape(w.shape[0], -1)
    w = np.moveaxis(np.asarray(weights), k_axis, -1)
    return w.reshape(-1, w.shape[-1])


@dataclass
class SaturationReport:
    layers: int = 0
    at_risk: list[dict] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    # Products of two INT8 activations (attention): no weight to bound; recorded, outside the check.
    activation_products: int = 0
    max_pair_sum: int = 0

    def add(self, name: str, rows: np.ndarray) -> None:
        self.layers += 1
        risky, worst = pairs_at_risk(rows)
        self.max_pair_sum = max(self.max_pair_sum, worst)
        if risky:
            self.at_risk.append({"layer": name, "pairs": risky, "max_pair_sum": worst})

    def as_dict(self) -> dict:
        safe = not self.at_risk and not self.unchecked  # no INT8 weight at all cannot saturate either
        return {"saturation_safe": safe, "int8_weight_layers": self.layers, "layers_at_risk": len(self.at_risk),
                "pairs_at_risk": sum(r["pairs"] for r in self.at_risk), "max_pair_sum": self.max_pair_sum,
                "limit_pair_sum": INT16_MAX // U8_MAX, "at_risk": self.at_risk[:20],
                "unchecked": self.unchecked[:20], "float_weight_layers": self.float_layers,
                "activation_products": self.activation_products, "rule": RULE}


def _onnx_integer_weight(name: str, producer: dict, inits: dict):
    """Integer weight values (zero point removed) behind `name`, as its consumer sees them: a constant
    DequantizeLinear, then any Transpose / Reshape with constant arguments. None for anything else."""
    from onnx import helper, numpy_helper

    chain = []
    node = producer.get(name)
    while node is not None and node.op_type in ("Reshape", "Transpose"):
        chain.append(node)
        node = producer.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return None
    raw = numpy_helper.to_array(inits[node.input[0]])
    if raw.dtype not in (np.int8, np.uint8):
        return None
    q = raw.astype(np.int64)
    if len(node.input) > 2 and node.input[2] in inits:
        zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.int64)
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        if zero.ndim == 1 and zero.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            zero = zero.reshape(shape)
        q = q - zero
    for step in reversed(chain):
        if step.op_type == "Transpose":
            perm = next((list(a.ints) for a in step.attribute if a.name == "perm"), None)
            q = np.transpose(q, perm)
        elif step.input[1] in inits:
            q = q.reshape(numpy_helper.to_array(inits[step.input[1]]).astype(np.int64))
        else:
            return None
    return q


def _source_dequantize(name: str, producer: dict):
    node = producer.get(name)
    while node is not None and node.op_type in ("Reshape", "Transpose"):
        node = producer.get(node.input[0])
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def _through_shape_ops_from_dequantize(name: str, producer: dict) -> bool:
    """An activation that left a DequantizeLinear and only went through shape ops (ONNX Runtime carries the INT8
    value through them: attention's k after its slice and transpose)."""
    node = producer.get(name)
    while node is not None and node.op_type in ("Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze"):
        node = producer.get(node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def _quantized_between(node, producer: dict, consumers: dict) -> bool:
    """Input from a DequantizeLinear and output only into QuantizeLinear: ONNX Runtime runs it as an INT8 kernel."""
    after = consumers.get(node.output[0], [])
    return (_source_dequantize(node.input[0], producer) is not None and bool(after)
            and all(c.op_type == "QuantizeLinear" for c in after))


def check_onnx(path: Path) -> dict:
    """Every MatMul / Gemm / Conv fed by a constant INT8 weight (QDQ), in the reduction order of its kernel."""
    import onnx

    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    report = SaturationReport()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        dq = _source_dequantize(node.input[1], producer)
        name = node.name or node.output[0]
        if dq is None and _source_dequantize(node.input[0], producer) is not None and node.input[1] not in inits:
            report.activation_products += int(_through_shape_ops_from_dequantize(node.input[1], producer))
        if dq is None:
            if node.input[1] in inits and _quantized_between(node, producer, consumers):
                # ONNX Runtime quantizes a float weight between Q/DQ activations itself at load time, over the
                # full 8-bit range: nothing in the file bounds its pairs.
                report.unchecked.append(name)
            elif node.input[1] in inits:
                report.float_layers.append(name)
            continue  # otherwise a float operand: this product runs in float
        w = _onnx_integer_weight(node.input[1], producer, inits)
        if w is None:  # an INT8 activation as the second operand: no static bound on its pairs
            report.unchecked.append(name)
        elif node.op_type == "Conv":
            report.add(name, reduction_rows(w, "conv"))
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            report.add(name, reduction_rows(w, "matmul", k_axis=-1 if trans_b else 0))
        else:
            report.add(name, reduction_rows(w, "matmul", k_axis=-2 if w.ndim >= 2 else -1))
    return report.as_dict()


def _openvino_integer_weight(port):
    """Integer weight values behind an OpenVINO input port: i8/u8 Constant -> Convert -> [Subtract zp] ->
    Multiply(scale) (how NNCF's compressed INT8 weights are stored); None for anything else."""
    node = port.get_node()
    zero = None
    while node.get_type_name() in ("Multiply", "Subtract", "Convert"):
        if node.get_type_name() == "Subtract":
            const = node.input_value(1).get_node()
            if const.get_type_name() == "Convert":
                const = const.input_value(0).get_node()
            if const.get_type_name() != "Constant":
                return None
            zero = const.get_data().astype(np.int64)
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant" or node.get_output_element_type(0).get_type_name() not in ("i8", "u8"):
        return None
    q = node.get_data().astype(np.int64)
    return q - zero if zero is not None else q


def _fed_by_fake_quantize(port) -> bool:
    node = port.get_node()
    while node.get_type_name() in ("Reshape", "Transpose", "Squeeze", "Unsqueeze"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


def check_openvino(path: Path) -> dict:
    """Every MatMul / Convolution of an OpenVINO IR fed by a compressed INT8 weight."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    report = SaturationReport()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "ScaledDotProductAttention" or (kind == "MatMul" and all(
                _fed_by_fake_quantize(op.input_value(i)) for i in range(2))):
            report.activation_products += 1
            continue
        if kind not in ("MatMul", "Convolution", "GroupConvolution"):
            continue
        port = op.input_value(1)
        producer = port.get_node().get_type_name()
        if producer not in ("Multiply", "Subtract", "Convert", "FakeQuantize"):
            if producer == "Constant":
                report.float_layers.append(op.get_friendly_name())
            continue  # float weights or an activation operand
        w = _openvino_integer_weight(port)
        name = op.get_friendly_name()
        if w is None:
            if producer != "FakeQuantize" or port.get_node().input_value(0).get_node().get_type_name() == "Constant":
                report.unchecked.append(name)
            continue
        if kind == "MatMul":
            trans_b = bool(op.get_attributes().get("transpose_b", False))
            report.add(name, reduction_rows(w, "matmul", k_axis=-1 if trans_b else -2))
        elif kind == "GroupConvolution":  # [G, O/G, I/G, kh, kw]
            report.add(name, reduction_rows(w.reshape((-1,) + w.shape[2:]), "conv"))
        else:
            report.add(name, reduction_rows(w, "conv"))
    return report.as_dict()


def weight_range_info(full_range: bool) -> str:
    return "full 8-bit range (--full-range-int8-weights)" if full_range else "7-bit (NNCF overflow fix)"


def x86_int8_info(ctx, check: dict) -> dict:
    """What an OpenVINO / ONNX target adds to its INT8 artifact's info: the saturation check, the weight range asked
    for, and with --max-accuracy-drop NNCF's accuracy control (the layers it left float are the float weights)."""
    info = {"int8_weights": weight_range_info(ctx.request.full_range_int8_weights), "saturation_check": check}
    if ctx.request.cpu is not None:
        info["cpu_int8"] = {"asked": ctx.request.cpu, "cpu": ctx.request.cpu_level,
                            "kept_float": list(ctx.target.keep_float_on(ctx.request.cpu_level)),
                            "float_weight_layers": len(check.get("float_weight_layers") or [])}
    if ctx.request.max_accuracy_drop is not None:
        info["accuracy_control"] = ctx.source.accuracy_control_info(
            "NNCF quantize_with_accuracy_control", kept_float=check["float_weight_layers"])
    return info
