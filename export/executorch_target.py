"""ExecuTorch: a `.pte` lowered to XNNPACK (runs here through `executorch.runtime`) and a `.pte` lowered to the Core
ML delegate for iOS (lowers here; runs only on Apple devices). Ops left outside each delegate are counted."""

from __future__ import annotations

import collections

import numpy as np
import torch

from .base import Artifact, TargetContext, require
from .request import ExportError

# Graph nodes that are bookkeeping, not compute: they may sit outside a delegate.
NON_COMPUTE = ("executorch_call_delegate", "getitem", "alloc", "memory.view", "dim_order_ops._clone_dim_order")


def outside_delegate(edge_program) -> dict[str, int]:
    """Histogram of compute ops the partitioner left outside every delegate."""
    counts: collections.Counter = collections.Counter()
    for node in edge_program.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if any(tag in str(node.target) or tag in name for tag in NON_COMPUTE):
            continue
        counts[name] += 1
    return dict(sorted(counts.items()))


def delegate_count(edge_program) -> int:
    return sum(1 for n in edge_program.graph.nodes if "executorch_call_delegate" in str(n.target))


def lower_xnnpack(exported_program):
    """One call: ATen program -> edge program with every XNNPACK-able op in the delegate."""
    exir = require("executorch.exir", "executorch")
    partition = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
    return exir.to_edge_transform_and_lower(exported_program, partitioner=[partition.XnnpackPartitioner()])


def lower_coreml(exported_program, precision: str):
    ct = require("coremltools", "executorch")
    exir = require("executorch.exir", "executorch")
    coreml_partition = require("executorch.backends.apple.coreml.partition", "executorch")
    coreml_compiler = require("executorch.backends.apple.coreml.compiler", "executorch")
    specs = coreml_compiler.CoreMLBackend.generate_compile_specs(
        compute_unit=ct.ComputeUnit.ALL, minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)
    return exir.to_edge_transform_and_lower(
        exported_program, partitioner=[coreml_partition.CoreMLPartitioner(compile_specs=specs)])


def save_program(edge, path) -> None:
    program = edge.to_executorch()
    path.write_bytes(program.buffer)


def load_runner(path):
    runtime = require("executorch.runtime", "executorch")
    method = runtime.Runtime.get().load_program(str(path)).load_method("forward")

    def run(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()

    return run


def _search_info(ctx: TargetContext) -> dict:
    """The keep-float search's outcome for the manifest (shared with the Core ML target)."""
    found, units = ctx.source.keep_float_search
    return ctx.source.accuracy_control_info(
        "keep the most sensitive layers float (python -m quantize sensitivity ranking)", kept_float=found.kept_float,
        layers=units, simulated_drop_pp=found.drop_pp, simulated_all_int8_drop_pp=found.all_int8_drop_pp,
        met_in_simulation=found.met)


def export(ctx: TargetContext) -> list[Artifact]:
    require("executorch.exir", "executorch")
    artifacts = []
    if ctx.precision == "int8":
        from quantize import quantize_pt2e, quantize_pt2e_dynamic
        from quantize.qat import QATError, convert_with_ranges

        example = ctx.source.example()
        ranges = ctx.source.qat_ranges
        accuracy = None
        if ctx.request.int8_activations == "dynamic":
            ctx.step("quantizing for XNNPACK (linears' inputs quantized per row at run time)")
            graph = quantize_pt2e_dynamic(ctx.source.deployable(decompose_layernorm=True), example,
                                          ctx.source.quant_options())
        elif ranges is not None:
            ctx.step(f"quantizing for XNNPACK with the ranges learned in QAT ({ranges.name})")
            try:
                graph = convert_with_ranges(ctx.source.deployable(decompose_layernorm=True), ranges, example)
            except QATError as e:
                raise ExportError(str(e)) from e
        else:
            if ctx.request.max_accuracy_drop is not None:
                ctx.step("ranking layers for --max-accuracy-drop (XNNPACK scheme)")
                accuracy = _search_info(ctx)
            ctx.step("quantizing for XNNPACK (NNCF quantize_pt2e)")
            graph = quantize_pt2e(ctx.source.deployable(decompose_layernorm=True), example,
                                  ctx.source.calibration(), ctx.source.pt2e_quant_options())
        with torch.no_grad():
            program = torch.export.export(graph, (example,))
    else:
        program = ctx.source.exported_program(decompose_layernorm=True)
    ctx.step("lowering to ExecuTorch XNNPACK")
    edge = lower_xnnpack(program)
    outside = outside_delegate(edge.exported_program())
    path = ctx.file_name("executorch", "xnnpack", "pte")
    save_program(edge, path)
    artifacts.append(Artifact("executorch", "xnnpack", ctx.precision, path, load_runner(path), info={
        "delegates": delegate_count(edge.exported_program()), "ops_outside_delegate": sum(outside.values()),
        "ops_outside_delegate_by_op": outside,
        **({"int8_activations": ctx.request.int8_activations,
            "int8_ranges": "per row at run time" if ctx.request.int8_activations == "dynamic"
            else "learned in QAT" if ctx.source.qat_ranges else "calibrated"}
           if ctx.precision == "int8" else {}),
        **({"accuracy_control": accuracy} if accuracy else {})}))

    if ctx.precision == "int8":
        # INT8 on iOS goes through the Core ML target's W8A8 ML program; the delegate .pte here is FP16 only.
        return artifacts
    ctx.step("lowering to ExecuTorch Core ML delegate")
    # The Core ML delegate computes in FP16 (what the Neural Engine runs), whatever the XNNPACK precision.
    coreml_precision = "fp16"
    edge = lower_coreml(ctx.source.exported_program(), coreml_precision)
    outside = outside_delegate(edge.exported_program())
    path = ctx.file_name("executorch", "coreml", "pte", precision=coreml_precision)
    save_program(edge, path)
    artifacts.append(Artifact(
        "executorch", "coreml", coreml_precision, path, None,
        skip_reason="the ExecuTorch Core ML delegate runs only on Apple devices (Core ML runtime)",
        info={"delegates": delegate_count(edge.exported_program()), "ops_outside_delegate": sum(outside.values()),
              "ops_outside_delegate_by_op": outside, "coreml_compute_precision": coreml_precision}))
    return artifacts
