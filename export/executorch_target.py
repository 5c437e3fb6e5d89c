"""ExecuTorch: a `.pte` lowered to XNNPACK (runs here through `executorch.runtime`) and a `.pte` lowered to the Core
ML delegate for iOS (lowers here; runs only on Apple devices: parity evaluates the Core ML program it embeds,
export/coreml_mil.py). Ops left outside each delegate are counted.

A backbone for a list of sizes (--sizes) is one `.pte` with one method per size (`forward_HxW`), each lowered whole
to XNNPACK; ExecuTorch stores constants once, so the weights are shared. Why not one dynamic-size program: its
views, slices and shape arithmetic stayed outside the delegate (docs/multisize.md).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edge_crossformer.util import captured_native_stderr

from . import coreml_mil, executorch_weights
from .base import Artifact, TargetContext, require
from .sizes import Size, export_sizes, method_name, size_dispatch

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
    """One call: ATen program (or {method name: program}) -> edge program manager with every XNNPACK-able op in the
    delegate; `.to_executorch().buffer` is the `.pte`."""
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


def lower_xnnpack_sizes(modules_or_programs: Sequence, sizes: Sequence[Size]):
    """One edge program manager with a method per size (`forward_HxW`), every method lowered to XNNPACK."""
    return lower_xnnpack(export_sizes(modules_or_programs, sizes))


def delegation(edge) -> dict[str, dict]:
    """Per method: XNNPACK delegate pieces and the histogram of compute ops left outside them."""
    report = {}
    for name in edge.methods:
        program = edge.exported_program(name)
        report[name] = {"delegates": delegate_count(program), "outside": outside_delegate(program)}
    return report


def save_program(edge, path: str | Path) -> int:
    """Write the `.pte`; its size in bytes."""
    data = edge.to_executorch().buffer
    Path(path).write_bytes(data)
    return len(data)


def load_runner(path, threads: int | None = None, method: str = "forward"):
    """One method of a .pte on ExecuTorch's runtime: [1, 3, H, W] float32 -> logits (a backbone: its maps).
    `threads` resizes the process-wide XNNPACK thread pool (the runtime has no per-program setting)."""
    runtime = require("executorch.runtime", "executorch")
    # The C++ runtime's cpuinfo and "Resetting threadpool" chatter on fd 2.
    with captured_native_stderr():
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        program = runtime.Runtime.get().load_program(str(path))
    if method not in program.method_names:
        raise KeyError(f"{Path(path).name} has no method {method!r}; it has {sorted(program.method_names)}")
    method = program.load_method(method)

    def run(x: np.ndarray) -> np.ndarray:
        outputs = method.execute([torch.from_numpy(np.ascontiguousarray(x))])
        # A classifier has one output (logits); a backbone returns its maps as a list.
        return outputs[0].numpy() if len(outputs) == 1 else [out.numpy() for out in outputs]

    return run


# --max-accuracy-drop: after the simulated search, the .pte itself is scored on the search images; where XNNPACK's
# kernels lose more than the simulation (about 0.1 pp on crossformer-fmnist), the search goes on with the target
# lowered by the difference, this many times at most.
ACCURACY_ROUNDS = 3


def _int8_program(ctx: TargetContext, example: torch.Tensor):
    """The INT8 torch.export program, its graph made by the target's scheme (export/schemes.py)."""
    graph = ctx.int8.graph(ctx, example)
    with torch.no_grad():
        return torch.export.export(graph, (example,))


def _accuracy_controlled(ctx: TargetContext, example: torch.Tensor, path):
    """Search, lower, score the .pte on the search images; go on searching while the runtime misses the bound."""
    ctx.step("ranking layers for --max-accuracy-drop (XNNPACK scheme)")
    rounds = []
    for _ in range(ACCURACY_ROUNDS):
        edge = lower_xnnpack(_int8_program(ctx, example))
        save_program(edge, path)
        found, _ = ctx.source.keep_float_search
        drop = ctx.source.search_drop(load_runner(path))
        rounds.append({"kept_float": len(found.kept_float), "simulated_drop_pp": found.drop_pp,
                       "runtime_drop_pp": drop})
        if drop <= ctx.request.max_accuracy_drop + 1e-9 or not found.met:
            break
        ctx.step(f"XNNPACK measured {drop:.2f} pp (simulated {found.drop_pp:.2f}): keeping more layers float")
        ctx.source.refine_keep_float(ctx.request.max_accuracy_drop - (drop - found.drop_pp))
    return edge, ctx.int8.search_info(ctx, rounds)


def _xnnpack(ctx: TargetContext) -> Artifact:
    """The XNNPACK .pte: the whole network in one delegate, in the request's precision and INT8 scheme (compressed
    weights: export/executorch_weights.py)."""
    path = ctx.file_name("xnnpack", "pte")
    accuracy = compression = None
    if ctx.int8 and ctx.request.max_accuracy_drop is not None:
        edge, accuracy = _accuracy_controlled(ctx, ctx.source.example(), path)
    elif ctx.weights:
        plan = ctx.weights
        ctx.step(f"quantizing linears to {plan.scheme.bits}-bit weights, INT8 dynamic activations (torchao)")
        program, bits = executorch_weights.compressed_program(ctx, ctx.source.example())
        ctx.step("lowering to ExecuTorch XNNPACK")
        edge = lower_xnnpack(program)
        save_program(edge, path)
        compression = executorch_weights.record(ctx, bits, path.read_bytes())
    else:
        program = (_int8_program(ctx, ctx.source.example()) if ctx.int8
                   else ctx.source.exported_program(ctx.spelling))
        ctx.step("lowering to ExecuTorch XNNPACK")
        edge = lower_xnnpack(program)
        save_program(edge, path)
    outside = outside_delegate(edge.exported_program())
    return Artifact(ctx.target.name, "xnnpack", ctx.precision, path, load_runner(path), info={
        "delegates": delegate_count(edge.exported_program()), "ops_outside_delegate": sum(outside.values()),
        "ops_outside_delegate_by_op": outside,
        **({"int8_activations": ctx.request.int8_activations, "int8_ranges": ctx.int8.ranges(ctx)}
           if ctx.int8 else {}),
        **({"accuracy_control": accuracy} if accuracy else {}),
        **({"compression": compression} if ctx.weights else {})})


def _xnnpack_sizes(ctx: TargetContext) -> Artifact:
    """A backbone for --sizes: one method per size in one .pte, each lowered whole to XNNPACK, weights stored once."""
    sizes = ctx.request.sizes
    ctx.step(f"lowering to ExecuTorch XNNPACK, {len(sizes)} methods")
    edge = lower_xnnpack_sizes([ctx.source.deployable_at(ctx.spelling, hw) for hw in sizes], sizes)
    path = ctx.file_name("xnnpack", "pte")
    save_program(edge, path)
    report = delegation(edge)
    outside: collections.Counter = collections.Counter()
    for method in report.values():
        outside.update(method["outside"])
    runner = size_dispatch({hw: load_runner(path, method=method_name(*hw)) for hw in sizes})
    return Artifact(ctx.target.name, "xnnpack", ctx.precision, path, runner, info={
        "methods": [method_name(*hw) for hw in sizes], "delegates": sum(m["delegates"] for m in report.values()),
        "ops_outside_delegate": sum(outside.values()), "ops_outside_delegate_by_op": dict(sorted(outside.items())),
        "delegation_by_method": report})


def export(ctx: TargetContext) -> list[Artifact]:
    """The XNNPACK .pte (FP32, INT8 in the request's scheme or w8 / w4 weights; a backbone for --sizes: one method
    per size) and, for FP32, the Core ML delegate .pte (FP16) for iOS."""
    require("executorch.exir", "executorch")
    if ctx.request.sizes:
        # The Core ML delegate .pte is one size per file; Core ML's own target makes the multifunction package.
        return [_xnnpack_sizes(ctx)]
    artifacts = [_xnnpack(ctx)]
    if ctx.int8 or ctx.weights:
        # INT8 on iOS goes through the Core ML target's W8A8 ML program; the delegate .pte here is FP16 only.
        # Compressed weights on iOS go through the Core ML target's .mlpackage (palettized / blockwise, decoded by
        # the MIL evaluator); the delegate's preprocess converts the graph itself and offers no weight compression.
        return artifacts
    ctx.step("lowering to ExecuTorch Core ML delegate")
    # The Core ML delegate computes in FP16 (what the Neural Engine runs), whatever the XNNPACK precision.
    coreml_precision = "fp16"
    edge = lower_coreml(ctx.source.exported_program(ctx.target.spelling_for_delegate("coreml")), coreml_precision)
    outside = outside_delegate(edge.exported_program())
    path = ctx.file_name("coreml", "pte", precision=coreml_precision)
    save_program(edge, path)
    # The delegate runs only on Apple devices; its embedded Core ML program goes through the MIL evaluator here.
    runner, why = coreml_mil.pte_runner(path, sum(outside.values()))
    artifacts.append(Artifact(
        ctx.target.name, "coreml", coreml_precision, path, runner,
        skip_reason=why and f"the ExecuTorch Core ML delegate runs only on Apple devices (Core ML runtime); {why}",
        info={"delegates": delegate_count(edge.exported_program()), "ops_outside_delegate": sum(outside.values()),
              "ops_outside_delegate_by_op": outside, "coreml_compute_precision": coreml_precision,
              "runtime": runner and f"{coreml_mil.runtime_name(coreml_precision)}, the delegate's Core ML program"}))
    return artifacts
