"""One artifact's per-node profile, in a process of its own: `python -m benchmarks.profile_worker SPEC.json`.

A process per case so that a capped ISA (oneDNN reads ONEDNN_MAX_CPU_ISA once, when OpenVINO's CPU plugin loads) and
each runtime's thread pool and profiler stay with that case. SPEC: {runtime, artifact, threads, warmup, runs, input
(.npy), output (folder)}. Writes OUTPUT/nodes.json ({nodes: [{name, type, kernel, kind, ms}], wall_ms: [...],
notes}) and OUTPUT/logits.npy (the first run's output, for the cap check).

Node times are medians over the timed runs (OpenVINO, ExecuTorch: each run's counters; ONNX Runtime: every run's
events in its profile file).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .node_kinds import kind_of, xnnpack_kernel


def median_nodes(runs: list[list[dict]]) -> list[dict]:
    """Nodes in first-run order, each with its median ms over the runs it appeared in."""
    times: dict[str, list[float]] = {}
    first: dict[str, dict] = {}
    for nodes in runs:
        for node in nodes:
            times.setdefault(node["name"], []).append(node["ms"])
            first.setdefault(node["name"], node)
    return [{**first[n], "ms": round(statistics.median(t), 5)} for n, t in times.items()]


def _timed(run, x: np.ndarray, warmup: int, runs: int, after=None) -> tuple[np.ndarray, list[float]]:
    y = np.asarray(run(x))
    for _ in range(warmup):
        run(x)
    wall = []
    for _ in range(runs):
        t = time.perf_counter()
        run(x)
        wall.append((time.perf_counter() - t) * 1e3)
        if after:
            after()
    return y, wall


def openvino(spec: dict, x: np.ndarray) -> tuple[np.ndarray, list[float], list[dict], list[str]]:
    import openvino as ov

    from export.openvino_target import cpu_config

    compiled = ov.Core().compile_model(spec["artifact"], "CPU", {**cpu_config(spec["threads"]), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    per_run: list[list[dict]] = []

    def counters():
        nodes = []
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue  # optimized out / fused into a neighbour: no time of its own
            # A MatMul the plugin did not turn into FullyConnected multiplies two activations (attention).
            nodes.append({"name": info.node_name, "type": info.node_type, "kernel": info.exec_type,
                          "kind": kind_of(info.node_type, weight_operand=False if info.node_type == "MatMul"
                                          else None, name=info.node_name),
                          "ms": info.real_time.total_seconds() * 1e3})
        per_run.append(nodes)

    y, wall = _timed(lambda a: request.infer({0: a})[output], x, spec["warmup"], spec["runs"], counters)
    return y, wall, median_nodes(per_run), []


def onnxruntime(spec: dict, x: np.ndarray) -> tuple[np.ndarray, list[float], list[dict], list[str]]:
    import onnxruntime as ort

    from export.onnx_target import session_options

    options = session_options(spec["threads"])
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(spec["output"]) / "ort_profile")
    session = ort.InferenceSession(spec["artifact"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    y, wall = _timed(lambda a: session.run(None, {name: a})[0], x, 0, spec["warmup"] + spec["runs"])
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    # The timed runs only: the first (the output check) and the warm-up runs are left out by start time.
    start = runs[1 + spec["warmup"]]["ts"] if len(runs) > 1 + spec["warmup"] else 0
    per_run: dict[int, list[dict]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        run_index = sum(1 for r in runs if r["ts"] <= e["ts"])
        per_run.setdefault(run_index, []).append({
            "name": e["name"][: -len("_kernel_time")], "type": op, "kernel": f"{op} ({args.get('provider', '?')})",
            "kind": kind_of(op, _second_operand_is_weight(args)), "ms": e["dur"] / 1e3})
    wall = wall[spec["warmup"]:]  # ORT profiles every run: its warm-up runs are timed here and dropped
    notes = ["ONNX Runtime's profiler names the op and provider, not the MLAS routine (MLAS picks its kernel from "
             "cpuid at load)"]
    return y, wall, median_nodes(list(per_run.values())), notes


def _second_operand_is_weight(args: dict) -> bool | None:
    """ONNX Runtime's event lists its inputs' shapes: a rank-2 second operand is a weight matrix (a linear layer), a
    higher rank one a batch of activations (attention)."""
    shapes = args.get("input_type_shape") or []
    if len(shapes) < 2:
        return None
    dims = next(iter(shapes[1].values()), [])
    return len(dims) == 2


def executorch(spec: dict, x: np.ndarray) -> tuple[np.ndarray, list[float], list[dict], list[str]]:
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(spec["threads"])
    program = Runtime.get().load_program(spec["artifact"], enable_etdump=True, debug_buffer_size=0)
    method = program.load_method("forward")
    y, wall = _timed(lambda a: method.execute([torch.from_numpy(np.ascontiguousarray(a))])[0].numpy(), x,
                     spec["warmup"], spec["runs"])
    etdump = Path(spec["output"]) / "etdump.etdp"
    program.write_etdump_result_to_file(str(etdump), str(etdump.with_suffix(".bin")))
    nodes, notes = _etdump_nodes(etdump, 1 + spec["warmup"])
    return y, wall, nodes, notes


def _etdump_nodes(path: Path, skip: int) -> tuple[list[dict], list[str]]:
    """ETDump's events per run (ExecuTorch's devtools Inspector), the first `skip` runs left out."""
    from executorch.devtools import Inspector

    inspector = Inspector(etdump_path=str(path))
    per_run: list[list[dict]] = []
    delegate: list[float] = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if not event.perf_data or event.name in ("Method::execute", "Program::load_method"):
                continue
            if event.name == "DELEGATE_CALL":  # the whole XNNPACK call; its operators come as events of their own
                delegate += list(event.perf_data.raw)
                continue
            for i, ms in enumerate(event.perf_data.raw):
                while len(per_run) <= i:
                    per_run.append([])
                kernel = xnnpack_kernel(event.name)
                per_run[i].append({"name": event.name, "type": kernel.split(" (")[0], "kernel": kernel,
                                   "kind": kind_of(kernel), "ms": ms})
    nodes = median_nodes(per_run[skip:] or per_run)
    calls = delegate[skip:] or delegate
    notes = [f"ExecuTorch {_version('executorch')} ETDump: XNNPACK's per-operator events (the delegate call: median "
             f"{statistics.median(calls):.3f} ms, of which its operators {sum(n['ms'] for n in nodes):.3f} ms)"
             if calls else "ExecuTorch ETDump: no delegate call recorded"]
    if not nodes:
        notes.append("this runtime build records no per-operator events inside the XNNPACK delegate")
    return nodes, notes


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


PROFILERS = {"openvino": openvino, "onnxruntime": onnxruntime, "executorch": executorch}


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    x = np.load(spec["input"])
    y, wall, nodes, notes = PROFILERS[spec["runtime"]](spec, x)
    out = Path(spec["output"])
    np.save(out / "logits.npy", np.asarray(y, dtype=np.float32))
    (out / "nodes.json").write_text(json.dumps({"nodes": nodes, "wall_ms": [round(w, 4) for w in wall],
                                                "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
