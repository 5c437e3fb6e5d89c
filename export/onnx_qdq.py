"""ONNX Runtime's view of an NNCF QDQ model: graph fixes so its INT8 kernels take what NNCF quantized.

NNCF writes QuantizeLinear / DequantizeLinear pairs; ONNX Runtime fuses a pattern into an INT8 kernel only when every
input and output around it is in the shape it expects. These passes rearrange the QDQ graph (same quantization
parameters, no new rounding beyond what each says) and run after `quantize.quantize_onnx`, unless the benchmarks ask
for NNCF's output as is (`ExportRequest.plain_int8`).
"""

from __future__ import annotations

import numpy as np


def fix_for_onnxruntime(model, calibration: list[np.ndarray], subset_size: int, input_name: str = "image"):
    """All the passes below, in the order they depend on each other."""
    model = quantize_gemm_biases(keep_qdq_matmuls_integer(model))
    model = quantize_conv_outputs(model, calibration[:subset_size], input_name)
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
