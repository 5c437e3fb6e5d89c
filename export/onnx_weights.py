"""ONNX weight compression (`--precision w8 / w4`, export.compression), for ONNX Runtime's CPU kernels.

Linears: ONNX Runtime's `MatMulNBitsQuantizer` (4- or 8-bit `com.microsoft.MatMulNBits`, symmetric, blockwise along
the input channels). It takes MatMul nodes with a constant weight, and the ONNX spelling (Spelling(flat_linears))
writes token linears as Gemm (ONNX Runtime's INT8 QGemm wants them so), so each Gemm with a constant weight first
becomes MatMul + Add. Convolutions (the stem, the merges): ONNX Runtime has no N-bit convolution, so their weights
are stored INT8 per output channel behind a DequantizeLinear (the scheme keeps them at 8 bits anyway). Weights are
counted from the written graph: a compression that did nothing shows as 0 compressed layers.
"""

from __future__ import annotations

import numpy as np

from .base import TargetContext, require

# MatMulNBits' block: the plan's group size (w4); for 8-bit weights, whose scheme is per output channel, blocks of
# this many input channels (MatMulNBits is blockwise only; a larger block than the layer's inputs is one block).
BLOCK_8BIT = 128
# MatMulNBits' accuracy_level per weight width: 8-bit weights with float activations (level 0) ran crossformer-fmnist
# 3x slower than FP32 (min 2.03 ms vs 0.48); level 4 (activations quantized to int8 per block inside the kernel) ran
# 0.68 ms with the same top-1 (docs/compression.md). 4-bit: float activations, its own kernels are fast.
ACCURACY_LEVEL = {8: 4, 4: None}


def module_path(weight_name: str) -> str:
    """The module a weight initializer belongs to: 'model.layers.0.blocks.0.mlp.fc1.weight' -> 'layers.0...fc1'."""
    return weight_name.removeprefix("model.").removesuffix(".weight")


def compress(ctx: TargetContext, model):
    """The ModelProto with the plan's weights compressed, and its manifest record."""
    require("onnxruntime.quantization", "onnx")
    plan = ctx.weights
    ctx.step(f"compressing ONNX weights to {plan.scheme.bits} bits (ONNX Runtime MatMulNBits)")
    linears = gemms_to_matmuls(model)
    kept = [name for name, path in linears.items() if plan.kept(path)]
    low = [name for name in linears if name not in kept]
    block = plan.group_size or BLOCK_8BIT
    model = _nbits(model, plan.scheme.bits, block, low)
    if kept and plan.scheme.bits != 8:
        model = _nbits(model, 8, BLOCK_8BIT, kept)
    convs = int8_conv_weights(model)
    bits = {node.name.removesuffix(f"_Q{b}"): b for node in model.graph.node if node.op_type == "MatMulNBits"
            for b in [_attr(node, "bits")]}
    at_scheme = sum(b == plan.scheme.bits for b in bits.values())
    at_8 = sum(b == 8 for b in bits.values()) + convs if plan.scheme.bits != 8 else 0
    record = plan.record(at_scheme + (convs if plan.scheme.bits == 8 else 0), at_8,
                         runtime_op="com.microsoft.MatMulNBits (linears), DequantizeLinear INT8 -> Conv (convolutions)",
                         activations={f"{b}-bit MatMulNBits": "int8 per block at run time (accuracy_level 4)"
                                      if ACCURACY_LEVEL[b] == 4 else "float" for b in sorted(set(bits.values()))},
                         linears_found=len(linears), matmul_nbits={f"{b}-bit": sum(v == b for v in bits.values())
                                                                   for b in sorted(set(bits.values()))},
                         block_size=block, int8_convolutions=convs,
                         float_weights=[n for n in linears if n not in bits])
    return model, record


def gemms_to_matmuls(model) -> dict[str, str]:
    """In place: each Gemm (alpha = beta = 1, A not transposed) whose weight is an initializer becomes MatMul with
    the weight stored [in, out] + Add of the bias, the MatMul keeping the Gemm's name. {node name: module path}."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    found, nodes = {}, []
    for node in model.graph.node:
        weight = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else None
        if weight not in inits or _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 \
                or _attr(node, "beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[weight])
        inits[weight].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T if _attr(node, "transB", 0) else w),
                                                       weight))
        out = node.output[0] if len(node.input) < 3 else f"{node.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [out], name=node.name))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        found[node.name] = module_path(weight)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return found


def _nbits(model, bits: int, block: int, names: list[str]):
    """ONNX Runtime's MatMulNBits quantizer on the MatMuls `names` only."""
    if not names:
        return model
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # nodes_to_include adds to the MatMuls it would take anyway: the others are excluded by name instead.
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in names]
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, nodes_to_exclude=others,
                                     accuracy_level=ACCURACY_LEVEL[bits])
    quantizer.process()
    return quantizer.model.model


def int8_conv_weights(model) -> int:
    """In place: every Conv weight initializer stored INT8 per output channel (symmetric), dequantized by a
    DequantizeLinear in front of the Conv. How many."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    count, front = 0, []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        name = node.input[1]
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = np.abs(w.reshape(len(w), -1)).max(1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        model.graph.initializer.remove(inits.pop(name))
        model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                        numpy_helper.from_array(scale, f"{name}_scale")])
        front.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name], axis=0,
                                      name=f"{node.name}_weight_dq"))
        count += 1
    for i, node in enumerate(front):  # before every node: its output is an initializer's name, used anywhere
        model.graph.node.insert(i, node)
    return count


def _attr(node, name: str, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
