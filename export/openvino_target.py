"""OpenVINO: IR `.xml` + `.bin` (FP16 weight compression for fp16); parity on the CPU plugin with the f32 hint
(CPUs with BF16 otherwise run bf16, docs/parity.md)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from quantize import quantize_openvino

from . import openvino_weights
from .base import Artifact, TargetContext, require
from .onnx_io import to_onnx
from .saturation import check_openvino, x86_int8_info
from .sizes import output_names
from .speed_check import int8_speed


AUTO_NAME = re.compile(r"^[A-Za-z0-9]+_\d+$")


def _stable_names(model, name: str) -> None:
    """Replace OpenVINO's process-global counters in auto-generated names (Model6, Constant_108846) with names
    derived from graph order, so exporting twice gives byte-identical IR."""
    model.set_friendly_name(name)
    for index, op in enumerate(model.get_ordered_ops()):
        if AUTO_NAME.match(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{index}")


def load_runner(path, threads: int | None = None, precision_hint: str = "f32"):
    """OpenVINO CPU plugin for an IR: [1, 3, S, S] float32 -> logits. f32 hint by default: this CPU would
    otherwise run bf16 (INT8 layers stay INT8 either way)."""
    ov = require("openvino", "openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", cpu_config(threads, precision_hint))
    request = compiled.create_infer_request()
    outputs = compiled.outputs
    if len(outputs) == 1:
        return lambda x: request.infer({0: x})[outputs[0]]
    # A backbone: its maps, in order.
    return lambda x: _ordered(request.infer({0: x}), outputs)


def cpu_config(threads: int | None, precision_hint: str = "f32") -> dict:
    """The CPU plugin settings every load uses (benchmarks/profile_worker.py adds PERF_COUNT to them)."""
    return {"INFERENCE_PRECISION_HINT": precision_hint, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


def _fp32_reference(ctx: TargetContext, ov, model) -> Path | None:
    """The FP32 graph the INT8 one is quantized from, with the same one input shape, for the INT8-vs-FP32 timing
    (export/speed_check.py); only for one fixed size (a range has no one shape to time)."""
    if ctx.request.size_mode != "fixed":
        return None
    path = ctx.staging / ".tmp" / "int8-speed-fp32.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = model.clone()
    reference.reshape({reference.inputs[0]: [1, 3, *ctx.request.img_hw]})
    ov.save_model(reference, str(path), compress_to_fp16=False)
    return path


def _ordered(results, outputs) -> list:
    return [results[out] for out in outputs]


def _from_onnx(ctx: TargetContext, ov):
    """A backbone for a range of sizes, through torch.onnx (symbolic H and W; shapes read with ONNX's Shape
    start / end, no data gather). OpenVINO's module tracing picks sizes with Gather ops (116 on crossformer-fmnist)
    and its ExportedProgram path took 4 min on it, against seconds from ONNX."""
    scratch = ctx.staging / ".tmp" / "openvino-from-onnx.onnx"
    module = ctx.deployable()  # the registry's range spelling
    to_onnx(module, ctx.source.example(), ctx.source.dynamic_shapes(), output_names(ctx.request), scratch)
    model = ov.convert_model(str(scratch))
    _shape_slices(model)
    return model


def _shape_slices(model) -> None:
    """In place: each Gather that picks a constant index out of a ShapeOf (how H and W enter the arithmetic)
    becomes the equivalent StridedSlice, so the IR holds no Gather at all. Same values, one element each."""
    from openvino import opset13

    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather" or op.input_value(0).get_node().get_type_name() != "ShapeOf":
            continue
        index, axis = op.input_value(1).get_node(), op.input_value(2).get_node()
        if index.get_type_name() != "Constant" or axis.get_type_name() != "Constant" or axis.get_data().reshape(-1).tolist() != [0]:
            continue
        picks = [int(i) for i in index.get_data().reshape(-1)]
        if len(picks) != 1 or index.get_output_partial_shape(0).rank.get_length() != 1:
            continue
        sliced = opset13.strided_slice(op.input_value(0), [picks[0]], [picks[0] + 1], [1], [0], [0])
        op.output(0).replace(sliced.output(0))


def export(ctx: TargetContext) -> list[Artifact]:
    """The deployable through OpenVINO's module tracing (a range of sizes: through ONNX), ShapeOf gathers rewritten
    as slices, INT8 (or compressed weights: export.openvino_weights) by NNCF on the ov.Model, names made stable so that re-exports are byte-identical."""
    ov = require("openvino", "openvino")
    path = ctx.file_name(None, "xml")
    ctx.step("converting to OpenVINO IR")
    if ctx.request.dynamic_size:
        model = _from_onnx(ctx, ov)
    else:
        with torch.no_grad():
            # From the module (OpenVINO's own tracing): its ExportedProgram path mis-infers shapes in a reshape
            # pass on single-token groups (OpenVINO 2026.4, crossformer-fmnist stage 4).
            model = ov.convert_model(ctx.deployable(),
                                     example_input=ctx.source.example())
    model.inputs[0].get_tensor().set_names({"image"})
    if ctx.request.task == "features" or ctx.request.dynamic_size:
        _shape_slices(model)
    fp32_reference = _fp32_reference(ctx, ov, model) if ctx.int8 else None
    if ctx.int8:
        model = ctx.int8.quantize(ctx, model, quantize_openvino, "OpenVINO")
    if ctx.weights:
        model, compression = openvino_weights.compress(ctx, model)
    if ctx.request.size_mode == "fixed":
        # The IR states the one input shape it serves instead of the traced [?, ?, ?, ?]: with the dynamic shape,
        # the ARM CPU plugin computed INT8 attention wrongly (docs/arm.md: first departing node, reproduction).
        model.reshape({model.inputs[0]: [1, 3, *ctx.request.img_hw]})
    _stable_names(model, ctx.request.model)
    for out, name in zip(model.outputs, output_names(ctx.request)):
        out.get_tensor().set_names({name})
    ov.save_model(model, str(path), compress_to_fp16=ctx.precision == "fp16")
    ops: dict[str, int] = {}
    for op in model.get_ordered_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    info = {"runtime_precision_hint": "f32", "op_histogram": dict(sorted(ops.items())),
            "fake_quantize_ops": ops.get("FakeQuantize", 0)}
    if ctx.request.task == "features" or ctx.request.dynamic_size:
        info.update(dynamic_size=ctx.request.dynamic_size, max_rank=max(
            len(out.get_partial_shape()) for op in model.get_ordered_ops() for out in op.outputs()),
            # Gathers that pick H and W out of ShapeOf's [N, C, H, W] (shape arithmetic, not data).
            gather_ops=ops.get("Gather", 0) + ops.get("GatherND", 0) + ops.get("GatherElements", 0))
    if ctx.int8:
        info.update(x86_int8_info(ctx, check_openvino(path)))
        if fp32_reference is not None:
            ctx.step("timing INT8 against FP32 on this CPU")
            info["int8_speed"] = int8_speed(load_runner, fp32_reference, path, ctx.source.example().numpy())
    if ctx.weights:  # what the CPU plugin holds once loaded (weights it expands to f32 save file size only)
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        info["compression"] = {**compression, "runtime_weights": openvino_weights.runtime_weights(compiled)}
    return [Artifact(ctx.target.name, None, ctx.precision, path, load_runner(path), extra_files=[path.with_suffix(".bin")],
                     info=info)]
