"""OpenVINO: IR `.xml` + `.bin` (FP16 weight compression for fp16); parity on the CPU plugin with the f32 hint
(CPUs with BF16 otherwise run bf16, docs/parity.md)."""

from __future__ import annotations

import re

import torch

from .base import Artifact, TargetContext, require


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
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision_hint, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return lambda x: request.infer({0: x})[out]


def export(ctx: TargetContext) -> list[Artifact]:
    ov = require("openvino", "openvino")
    path = ctx.file_name("openvino", None, "xml")
    ctx.step("converting to OpenVINO IR")
    with torch.no_grad():
        # From the module (OpenVINO's own tracing): its ExportedProgram path mis-infers shapes in a reshape pass
        # on single-token groups (OpenVINO 2026.4, crossformer-fmnist stage 4).
        model = ov.convert_model(ctx.deployable(),
                                 example_input=ctx.source.example())
    model.inputs[0].get_tensor().set_names({"image"})
    if ctx.int8:
        from quantize import quantize_openvino

        model = ctx.int8.quantize(ctx, model, quantize_openvino, "OpenVINO")
    _stable_names(model, ctx.request.model)
    model.outputs[0].get_tensor().set_names({"logits"})
    ov.save_model(model, str(path), compress_to_fp16=ctx.precision == "fp16")
    ops: dict[str, int] = {}
    for op in model.get_ordered_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    info = {"runtime_precision_hint": "f32", "op_histogram": dict(sorted(ops.items())),
            "fake_quantize_ops": ops.get("FakeQuantize", 0)}
    if ctx.int8:
        from .saturation import check_openvino, x86_int8_info

        info.update(x86_int8_info(ctx, check_openvino(path)))
    return [Artifact("openvino", None, ctx.precision, path, load_runner(path), extra_files=[path.with_suffix(".bin")],
                     info=info)]
