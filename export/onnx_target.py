"""ONNX: `.onnx`, opset 20 (GELU as one op), checked with `onnx.checker`, batch 1 unless --dynamic-batch; parity on ONNX Runtime."""

from __future__ import annotations

import torch

from .base import Artifact, TargetContext, require

# 20: GELU is one `Gelu` node (ONNX Runtime runs it as one kernel) instead of Div / Erf / Add / Mul / Mul.
OPSET = 20


def load_runner(path, threads: int | None = None):
    """ONNX Runtime (CPU) session for an .onnx: [1, 3, S, S] float32 -> its first output (logits)."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No busy-waiting workers: the benchmarks interleave runtimes, and an idle session's spinning threads took the
    # cores from whichever case ran next (CrossFormer-T 224, ORT INT8: median 39 ms with spinning, 29 ms without,
    # min 25 ms either way).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    # A classifier has one output (logits); a backbone returns its maps as a list.
    return lambda x: _one_or_all(session.run(None, {name: x}))


def _one_or_all(outputs: list):
    return outputs[0] if len(outputs) == 1 else outputs


# Node metadata torch.onnx records: the Python stack (file paths and line numbers of the exporting checkout).
SOURCE_METADATA = ("pkg.torch.onnx.stack_trace",)


def without_source_paths(model):
    """The model without the exporting machine's source paths and line numbers in its node metadata: the same model
    exported from another checkout or machine gives the same bytes, and the file does not carry local paths."""
    for node in model.graph.node:
        kept = [prop for prop in node.metadata_props if prop.key not in SOURCE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def output_names(req) -> list[str]:
    if req.task == "classify":
        return ["logits"]
    from .features import output_names as maps

    return maps(req)


def to_onnx(module, example, dynamic, names: list[str], path):
    """torch.onnx (dynamo) export to `path`, without source paths; returns the loaded ModelProto."""
    onnx = require("onnx", "onnx")
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, input_names=["image"],
                                    output_names=names, dynamic_shapes=dynamic, verbose=False, optimize=True)
    program.save(str(path))
    return without_source_paths(onnx.load(str(path)))


def max_rank(model) -> int:
    """Highest tensor rank in the graph after ONNX shape inference (symbolic sizes count as dims)."""
    onnx = require("onnx", "onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return max(len(v.type.tensor_type.shape.dim) for v in values if v.type.HasField("tensor_type"))


def export(ctx: TargetContext) -> list[Artifact]:
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")
    require("onnxruntime", "onnx")
    path = ctx.file_name("onnx", None, "onnx")
    module = ctx.deployable()
    ctx.step("exporting to ONNX")
    dynamic = ctx.source.dynamic_shapes()
    example = ctx.source.example()
    if ctx.request.dynamic_batch:
        # Traced with batch 2: an example of batch 1 would specialise the dimension to 1.
        example = ctx.source.example(batch=2)
        dynamic = ({0: torch.export.Dim("batch", min=1, max=64)},)
    model = to_onnx(module, example, dynamic, output_names(ctx.request), path)
    if ctx.int8:
        from quantize import quantize_onnx

        from .onnx_qdq import fix_for_onnxruntime

        model = ctx.int8.quantize(ctx, model, quantize_onnx, "ONNX")
        if not ctx.request.plain_int8:  # ONNX Runtime's own part: its INT8 kernels' patterns
            model = fix_for_onnxruntime(model, ctx.source.calibration(), ctx.source.quant_options().subset_size)
    onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    info = {"opset": OPSET, "dynamic_batch": ctx.request.dynamic_batch, "op_histogram": dict(sorted(ops.items())),
            "gather_ops": sum(v for k, v in ops.items() if k.startswith("Gather")),
            "quantize_linear_ops": ops.get("QuantizeLinear", 0)}
    if ctx.request.task == "features" or ctx.request.dynamic_size:
        info.update(dynamic_size=ctx.request.dynamic_size, max_rank=max_rank(model))
    if ctx.int8:
        from .saturation import check_onnx, x86_int8_info

        info.update(x86_int8_info(ctx, check_onnx(path)))
    return [Artifact("onnx", None, ctx.precision, path, load_runner(path), info=info)]
