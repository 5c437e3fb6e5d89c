"""LiteRT (formerly TensorFlow Lite): a `.tflite` converted by litert-torch, run here on the `ai-edge-litert`
interpreter (XNNPACK CPU, as on Android's CPU path).

FP32; FP16 (FP16 weights: half the file, FP32 arithmetic on the CPU, what the GPU delegate computes in FP16 anyway);
INT8 (the target's INT8 scheme's NNCF-calibrated quantize / dequantize graph, which the converter turns into INT8
kernels). The manifest records the file's op histogram and a static check of every op against the ops LiteRT's GPU
delegate builds (`GPU_DELEGATE_OPS`; where that list comes from: docs/litert.md): a phone's delegate hands the graph
back to the CPU from the first op it lacks.
"""

from __future__ import annotations

import collections
import copy
from pathlib import Path

import numpy as np
import torch

from quantize.ptq import float_outputs

from .base import Artifact, TargetContext, require

# The builtin ops LiteRT's GPU delegate parses (its NewOperationParser), and the highest tensor rank it takes (its
# tensors are BHWC). Source and version: docs/litert.md, "GPU delegate".
GPU_DELEGATE_OPS = frozenset({
    "ABS", "ADD", "ADD_N", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION", "CONV_2D", "COS", "CUMSUM",
    "DENSIFY", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "ELU", "EQUAL", "EXP", "FLOOR",
    "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GELU", "GREATER", "GREATER_EQUAL", "HARD_SWISH",
    "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND", "LOGISTIC", "LSTM", "MAX_POOL_2D", "MAXIMUM", "MEAN",
    "MINIMUM", "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "ONE_HOT", "PACK", "PAD", "PADV2", "POW", "PRELU",
    "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "RELU", "RELU_0_TO_1", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SELECT", "SELECT_V2", "SIGN", "SIN", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "STRIDED_SLICE", "SUB", "SUM",
    "TANH", "TILE", "TRANSPOSE", "TRANSPOSE_CONV", "UNPACK",
})
GPU_DELEGATE_MAX_RANK = 4


def load_runner(path, threads: int | None = None):
    """The .tflite on the ai-edge-litert interpreter with its default XNNPACK CPU delegate: [1, 3, H, W] float32 ->
    logits (a backbone: its maps, in the order the model returns them)."""
    lite = require("ai_edge_litert.interpreter", "litert")
    interpreter = lite.Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
    runner = interpreter.get_signature_runner()
    (image,) = runner.get_input_details()
    # litert-torch names a signature's outputs output_0, output_1, ... in the order the model returns them.
    names = sorted(runner.get_output_details(), key=lambda name: int(name.rsplit("_", 1)[-1]))

    def run(x: np.ndarray):
        outputs = runner(**{image: np.ascontiguousarray(x, dtype=np.float32)})
        return outputs[names[0]] if len(names) == 1 else [outputs[name] for name in names]

    return run


def ops_of(path) -> tuple[collections.Counter, collections.Counter, int]:
    """(histogram of the file's builtin op names, the same for ops whose first input is INT8, highest tensor rank),
    read from the flatbuffer itself (the interpreter, once its delegate is applied, shows DELEGATE nodes instead)."""
    schema = require("ai_edge_litert.schema_py_generated", "litert")
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    ops: collections.Counter = collections.Counter()
    int8: collections.Counter = collections.Counter()
    rank = 0
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # the schema's two-field opcode
            name = names.get(builtin, str(builtin))
            name = name if name != "CUSTOM" else f"CUSTOM:{code.CustomCode().decode()}"
            ops[name] += 1
            first = op.Inputs(0) if op.InputsLength() else -1
            if first >= 0 and graph.Tensors(first).Type() == schema.TensorType.INT8:
                int8[name] += 1
        rank = max([rank] + [graph.Tensors(t).ShapeLength() for t in range(graph.TensorsLength())])
    return ops, int8, rank


def gpu_delegate_info(ops: collections.Counter, rank: int) -> dict:
    """The static GPU-delegate check of one file: which of its ops the delegate does not build, and whether every
    tensor fits its rank (op-specific limits, e.g. broadcast shapes, are not checked here)."""
    unsupported = sorted(op for op in ops if op not in GPU_DELEGATE_OPS)
    return {"gpu_delegate_unsupported_ops": unsupported, "gpu_delegate_max_rank_ok": rank <= GPU_DELEGATE_MAX_RANK,
            "gpu_delegate_all_ops": not unsupported and rank <= GPU_DELEGATE_MAX_RANK}


def _unfold_weight_quantization(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of a PT2E graph (the scheme's graph is shared with other targets) in which each INT8 weight stored as
    an int8 constant read by a dequantize is a float constant read by a quantize, then that dequantize, with the
    same parameters: the same INT8 values (q * scale / scale rounds back to q).
    Why: the project's PT2E graphs fold their weights' quantization (what ExecuTorch lowers), and litert-torch's
    converter takes only the unfolded form ("'stablehlo.uniform_dequantize' op operand #0 must be ... quantized
    values, but got 'tensor<...xi8>'")."""
    graph = copy.deepcopy(graph)
    ops = torch.ops.quantized_decomposed  # registered once a PT2E graph exists (torchao)
    quantize_of = {ops.dequantize_per_channel.default: ops.quantize_per_channel.default,
                   ops.dequantize_per_tensor.default: ops.quantize_per_tensor.default}
    for node in list(graph.graph.nodes):
        quantize = quantize_of.get(node.target) if node.op == "call_function" else None
        if quantize is not None and node.args[0].op == "get_attr":
            _requantize_weight(graph, node, quantize)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def _requantize_weight(graph: torch.fx.GraphModule, dequantize: torch.fx.Node, quantize) -> None:
    """int8 constant -> dequantize  becomes  float constant -> quantize -> dequantize (see above)."""
    weight = getattr(graph, dequantize.args[0].target)
    if weight.dtype != torch.int8:
        return
    params = [getattr(graph, a.target) if isinstance(a, torch.fx.Node) else a for a in dequantize.args[1:]]
    name = f"{dequantize.args[0].target}_float"
    with torch.no_grad():
        graph.register_buffer(name, dequantize.target(weight, *params, **dequantize.kwargs))
    with graph.graph.inserting_before(dequantize):
        quantized = graph.graph.call_function(quantize, (graph.graph.get_attr(name), *dequantize.args[1:]),
                                              dict(dequantize.kwargs))
    dequantize.replace_input_with(dequantize.args[0], quantized)


def _quant_config(ctx: TargetContext):
    """What litert-torch is told about the precision: FP16 weights (its float-casting recipe), INT8 (a static
    quantize / dequantize graph, made before conversion), or None for FP32."""
    if ctx.precision == "fp16":
        recipes = require("litert_torch.generative.quantize.quant_recipes", "litert")
        return recipes.full_fp16_recipe()
    if ctx.precision != "int8":
        return None
    pt2e = require("litert_torch.quantize.pt2e_quantizer", "litert")
    config = require("litert_torch.quantize.quant_config", "litert")
    # Only marks the graph as statically quantized (the converter folds its quantize / dequantize pairs into INT8
    # kernels); the ranges are the ones NNCF calibrated.
    static = pt2e.PT2EQuantizer().set_global(pt2e.get_symmetric_quantization_config(is_per_channel=True))
    return config.QuantConfig(pt2e_quantizer=static)


def export(ctx: TargetContext) -> list[Artifact]:
    """One `.tflite` at the request's size (LiteRT serves one size per file), in its precision; parity on the
    ai-edge-litert interpreter; op histogram and GPU-delegate check in `info`."""
    litert_torch = require("litert_torch", "litert")
    require("ai_edge_litert.interpreter", "litert")
    example = ctx.source.example()
    module = ctx.deployable()
    if ctx.int8:
        # Float logits out: litert-torch's converter would fold a trailing quantize / dequantize pair into an INT8
        # output tensor (the interpreter then returns int8 codes, not logits; docs/litert.md).
        module = float_outputs(_unfold_weight_quantization(ctx.int8.graph(ctx, example)))
    ctx.step("converting to LiteRT")
    path = ctx.file_name(None, "tflite")
    with torch.no_grad():
        litert_torch.convert(module, (example,), quant_config=_quant_config(ctx)).export(str(path))
    ops, int8, rank = ops_of(path)
    info = {"op_histogram": dict(sorted(ops.items())), "ops": sum(ops.values()), "max_tensor_rank": rank,
            **gpu_delegate_info(ops, rank)}
    if ctx.int8:
        info.update(int8_ranges=ctx.int8.ranges(ctx), quantize_ops=ops.get("QUANTIZE", 0),
                    int8_ops=dict(sorted(int8.items())))
        if ctx.request.max_accuracy_drop is not None:  # the pipeline measures the drop on this file
            info["accuracy_control"] = ctx.int8.search_info(ctx)
    return [Artifact(ctx.target.name, None, ctx.precision, path, load_runner(path), info=info)]
