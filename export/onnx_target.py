"""ONNX: `.onnx`, opset 20 (GELU as one op), checked with `onnx.checker`, batch 1 unless --dynamic-batch; parity on ONNX Runtime."""

from __future__ import annotations

import shutil

import torch

from quantize import quantize_onnx

from . import onnx_weights
from .base import Artifact, TargetContext, require
from .onnx_io import OPSET, max_rank, to_onnx
from .onnx_qdq import fix_for_onnxruntime
from .saturation import check_onnx, x86_int8_info
from .sizes import output_names
from .speed_check import int8_speed


def load_runner(path, threads: int | None = None):
    """ONNX Runtime (CPU) session for an .onnx: [1, 3, S, S] float32 -> its first output (logits)."""
    ort = require("onnxruntime", "onnx")
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    # A classifier has one output (logits); a backbone returns its maps as a list.
    return lambda x: _one_or_all(session.run(None, {name: x}))


def session_options(threads: int | None):
    """The session settings every load uses (benchmarks/profile_worker.py turns ORT's profiler on in them)."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No busy-waiting workers: the benchmarks interleave runtimes, and an idle session's spinning threads took the
    # cores from whichever case ran next (CrossFormer-T 224, ORT INT8: median 39 ms with spinning, 29 ms without,
    # min 25 ms either way).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _one_or_all(outputs: list):
    return outputs[0] if len(outputs) == 1 else outputs


def export(ctx: TargetContext) -> list[Artifact]:
    """The deployable through torch.onnx (dynamo, opset 20), symbolic H / W for a range of sizes, a dynamic batch on
    request; INT8 by NNCF on the ONNX graph, then fixed for ONNX Runtime's INT8 kernels (compressed weights:
    export.onnx_weights); checked by onnx.checker."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")
    require("onnxruntime", "onnx")
    path = ctx.file_name(None, "onnx")
    module = ctx.deployable()
    ctx.step("exporting to ONNX")
    dynamic = ctx.source.dynamic_shapes()
    example = ctx.source.example()
    if ctx.request.dynamic_batch:
        # Traced with batch 2: an example of batch 1 would specialise the dimension to 1.
        example = ctx.source.example(batch=2)
        dynamic = ({0: torch.export.Dim("batch", min=1, max=64)},)
    model = to_onnx(module, example, dynamic, output_names(ctx.request), path)
    fp32_reference = None
    if ctx.int8 and ctx.request.size_mode == "fixed":  # for the INT8-vs-FP32 timing (export/speed_check.py)
        fp32_reference = ctx.staging / ".tmp" / "int8-speed-fp32.onnx"
        fp32_reference.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, fp32_reference)
    if ctx.int8:
        model = ctx.int8.quantize(ctx, model, quantize_onnx, "ONNX")
        if not ctx.request.plain_int8:  # ONNX Runtime's own part: its INT8 kernels' patterns
            model = fix_for_onnxruntime(model, ctx.source.calibration(), ctx.source.quant_options().subset_size)
    if ctx.weights:
        model, compression = onnx_weights.compress(ctx, model)
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
        info.update(x86_int8_info(ctx, check_onnx(path)))
        if fp32_reference is not None:
            ctx.step("timing INT8 against FP32 on this CPU")
            info["int8_speed"] = int8_speed(load_runner, fp32_reference, path, ctx.source.example().numpy())
    if ctx.weights:
        info["compression"] = compression
    return [Artifact(ctx.target.name, None, ctx.precision, path, load_runner(path), info=info)]
