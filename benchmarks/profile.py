"""`python -m benchmarks profile`: where the time goes, per node, for every runtime x precision, on this CPU's ISA and,
where a runtime can be capped, on a lower one (ISA capped on this CPU, labelled so: never a native figure).

1. The artifacts: the latency benchmark's export cache (OUTPUT/artifacts; the same --output shares it).
2. Each (case, ISA) profiled in a process of its own (benchmarks/profile_worker.py): OpenVINO's PERF_COUNT per node
   with the kernel it picked (exec type), ONNX Runtime's profiler (per-node events), ExecuTorch's ETDump (XNNPACK's
   per-operator events). Rounds run every (case, ISA) in a shuffled order, so load on the machine lands on all.
3. A capped run is compared with the uncapped one before its times count (benchmarks/isa_cap.py). `avx2-emulated`
   runs the same worker on a QEMU-emulated Haswell (export/x86_emulation.py: CPUID without AVX-512 / VNNI, so every
   runtime picks its AVX2 kernels): its kernels and outputs are recorded, never its times (the emulator's).
4. Node time grouped by kind (benchmarks/node_kinds.py); profile.json, per-node lists and a stacked-bar PNG per
   runtime x precision (one bar per ISA) under OUTPUT/profile/.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from rich.console import Console

from edge_crossformer.files import remove
from edge_crossformer.cli import MAX_IMG_SIZE, MAX_RUNS, MAX_THREADS, img_size, int_in, names
from edge_crossformer.outputs import OutputError, check_output
from edge_crossformer.util import progress_bar

from export import x86_emulation

from . import isa_cap, system
from .export_cache import TARGET_OF, export_sets, weights
from .node_kinds import by_kernel, by_kind
from .profile_worker import PROFILERS, median_nodes

RUNTIMES = tuple(r for r in TARGET_OF if r in PROFILERS)
EMULATED = "avx2-emulated"
ISAS = ("native", *isa_cap.CAPS, EMULATED)
OWNED = ("artifacts", "profile.json", "profile.md", "profile")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="crossformer-t")
    p.add_argument("--checkpoint", type=Path, help="weights (default: random init, or the bundled ones)")
    p.add_argument("--img-size", type=img_size, help=f"a multiple of 32 from 32 to {MAX_IMG_SIZE} (default: the "
                                                     "model's; --quick: 64)")
    p.add_argument("--quick", action="store_true", help="small input, few runs, FP32 and INT8 only (a smoke test)")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), help=f"1 to {MAX_THREADS} (default: all cores)")
    p.add_argument("--warmup", type=int_in(0, MAX_RUNS), help="untimed runs per process (default 5; --quick 1)")
    p.add_argument("--runs", type=int_in(1, MAX_RUNS), help="profiled runs per process (default 20; --quick 3)")
    p.add_argument("--rounds", type=int_in(1, MAX_RUNS), help="processes per case, interleaved (default 3; --quick 1)")
    p.add_argument("--runtimes", type=names(RUNTIMES, "runtime"), default=",".join(RUNTIMES),
                   help="comma list of " + ", ".join(RUNTIMES) + " (default: all)")
    p.add_argument("--isa", type=names(ISAS, "ISA"), default="native,avx2",
                   help="comma list of " + ", ".join(ISAS) + ": native, and caps below this CPU's ISA where a "
                        "runtime has one (OpenVINO through oneDNN; each cap also runs native, to check it against; "
                        f"default: native,avx2). {EMULATED}: every runtime on a QEMU-emulated AVX2-only CPU, kernels "
                        "and outputs only (needs python -m export setup-arm)")
    p.add_argument("--calib-data", type=Path, help="INT8 calibration images (as for python -m benchmarks)")
    p.add_argument("--output", type=Path, help="default: benchmark_results/<model>_<size> (the latency "
                                               "benchmark's, sharing its export cache)")
    p.add_argument("--reexport", action="store_true", help="export again even if OUTPUT/artifacts has the set")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from edge_crossformer.registry import ModelConfigError
    from export import ExportError

    from .latency import _cases, model_and_size
    from .profile_report import markdown, print_table, write_plots

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    try:
        cfg, size = model_and_size(args)
    except ModelConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output = args.output or Path("benchmark_results") / f"{args.model}_{size}"
    try:
        check_output(output, "--output", directory=True, owned=[output / n for n in OWNED],
                     inputs={"--checkpoint": args.checkpoint, "--calib-data": args.calib_data})
    except (OutputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = _settings(args, size)
    root = (output / "artifacts").resolve()
    root.mkdir(parents=True, exist_ok=True)
    started, load_before = time.time(), os.getloadavg()
    cache_args = SimpleNamespace(model=args.model, checkpoint=args.checkpoint, calib_data=args.calib_data,
                                 quick=args.quick, no_baseline=True, reexport=args.reexport)
    cache_args.checkpoint = weights(cache_args, cfg, size, root, console)
    try:
        # The latency benchmark's cache: an export it made for more runtimes serves here too.
        manifests = export_sets(cache_args, args.model, size, args.runtimes, root, console)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cases, missing = _cases(manifests, args.runtimes, root, False, False)
    host = system.machine()
    profiles, caps = _measure(cases, args.isa, settings, host, size, output, console)
    report = {
        "schema": "edge-crossformer/profile", "schema_version": 1,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": host,
        "versions": system.versions(), "commit": system.commit(),
        "settings": {**settings, "model": args.model, "img_size": size, "seconds": round(time.time() - started, 1),
                     "load_average": {"before": [round(v, 2) for v in load_before],
                                      "after": [round(v, 2) for v in os.getloadavg()]}},
        "isa_caps": caps, "profiles": profiles + [{**m, "isa": "native"} for m in missing],
    }
    folder = output / "profile"
    remove(folder)  # this command's own folder: no PNG of an earlier run's cases left beside the new ones
    folder.mkdir(parents=True, exist_ok=True)
    for entry in report["profiles"]:
        nodes = entry.pop("nodes", None)
        if nodes is not None:
            entry["nodes_file"] = f"profile/{_file_id(entry['id'])}.nodes.json"
            (output / entry["nodes_file"]).write_text(json.dumps(nodes, indent=0) + "\n")
    (output / "profile.json").write_text(json.dumps(report, indent=1) + "\n")
    write_plots(report, folder)
    (output / "profile.md").write_text(markdown(report))
    print_table(console, report)
    console.print(f"wrote {output / 'profile.json'}, profile.md and {folder}/*.png ({report['settings']['seconds']:.0f} s)")
    return 0


def _settings(args, size: int) -> dict:
    return {"threads": args.threads or system.machine()["cores"], "batch": 1,
            "warmup": args.warmup if args.warmup is not None else (1 if args.quick else 5),
            "runs": args.runs or (3 if args.quick else 20), "rounds": args.rounds or (1 if args.quick else 3),
            "isa": list(args.isa), "quick": args.quick}


def _file_id(profile_id: str) -> str:
    return profile_id.replace("/", "_")


def _measure(cases, isas, settings: dict, host: dict, size: int, output: Path, console: Console
             ) -> tuple[list[dict], dict]:
    """Every (case, ISA) profiled `rounds` times in shuffled order; capped runs checked against native ones."""
    jobs, caps = [], {}
    # A capped run is checked against the uncapped one: the native run comes with every cap.
    isas = ("native", *(i for i in isas if i != "native"))
    for case in cases:
        for isa in isas:
            why = _why_not(isa, case.runtime, host)
            if why:
                caps.setdefault(case.runtime, {})[isa] = {"measured": False, "why": why}
                continue
            if isa == EMULATED:
                caps.setdefault(case.runtime, {})[isa] = {
                    "measured": True, "emulator": " ".join(x86_emulation.command()[:3]), "times": False}
            elif isa != "native":
                caps.setdefault(case.runtime, {})[isa] = {
                    "measured": True, "variable": isa_cap.environment(isa, case.runtime)}
            jobs.append((case, isa))
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    results: dict[tuple, list[dict]] = {}
    order = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp, progress_bar(console=console) as bar:
        np.save(Path(tmp) / "x.npy", x)
        task = bar.add_task("profiling", total=len(jobs) * settings["rounds"])
        for r in range(settings["rounds"]):
            shuffled = list(jobs)
            order.shuffle(shuffled)
            for case, isa in shuffled:
                bar.update(task, description=f"round {r + 1}/{settings['rounds']}: {case.id} ({isa})")
                results.setdefault((case.id, isa), []).append(_one(case, isa, settings, Path(tmp)))
                bar.advance(task)
    return [_entry(case, isa, results, host) for case, isa in jobs], caps


def _why_not(isa: str, runtime: str, host: dict) -> str | None:
    """Why this ISA cannot be profiled for `runtime` here (None: it can)."""
    if isa == "native":
        return None
    if isa == EMULATED:
        try:
            x86_emulation.emulator()
        except x86_emulation.Unavailable as e:
            return str(e)
        return None
    return isa_cap.applicable(isa, runtime, host["isa"])


def _one(case, isa: str, settings: dict, tmp: Path) -> dict:
    """One worker process: {nodes, wall_ms, notes, logits} or {error}."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    spec = {"runtime": case.runtime, "artifact": str(case.artifact), "threads": settings["threads"],
            "warmup": settings["warmup"], "runs": settings["runs"], "input": str(tmp / "x.npy"), "output": str(out)}
    (out / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, **(isa_cap.environment(isa, case.runtime) if isa in isa_cap.CAPS else {})}
    worker = ("-m", "benchmarks.profile_worker", str(out / "spec.json"))
    try:
        done = subprocess.run(x86_emulation.command(*worker) if isa == EMULATED else [sys.executable, *worker], env=env,
                              capture_output=True, text=True, timeout=1800, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"error": "profile process timed out (30 min)"}
    if done.returncode != 0 or not (out / "nodes.json").exists():
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()] or [f"exit {done.returncode}"]
        return {"error": f"profile process failed: {lines[-1][:300]}"}
    return {**json.loads((out / "nodes.json").read_text()), "logits": np.load(out / "logits.npy")}


def _entry(case, isa: str, results: dict, host: dict) -> dict:
    runs = results[(case.id, isa)]
    label = x86_emulation.label(host["cpu"]) if isa == EMULATED else isa_cap.label(
        None if isa == "native" else isa, host["isa"])
    entry = {"id": f"{case.id}/{isa}", "runtime": case.runtime, "precision": case.precision,
             "artifact": case.artifact.name, "isa": isa, "isa_label": label, "status": "ok"}
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        return {**entry, "status": "failed", "error": failed[0]}
    nodes = median_nodes([r["nodes"] for r in runs])
    if isa == EMULATED:
        return _emulated_entry(entry, case, runs, results.get((case.id, "native"), []))
    if isa != "native":
        native = results.get((case.id, "native"), [])
        if not native or "error" in native[0]:
            return {**entry, "status": "failed", "error": "no uncapped run to check the capped one against"}
        check = isa_cap.verdict(isa, case.precision, native[0]["logits"], runs[0]["logits"],
                                median_nodes([r["nodes"] for r in native]), nodes)
        entry["cap_check"] = check
        if check["status"] in ("broken", "not honored"):
            # Detected, never timed: a broken cap is fast and wrong, an ignored one is the native run again.
            return {**entry, "status": f"cap {check['status']}", "error": check["reason"]}
    wall = [w for r in runs for w in r["wall_ms"]]
    total = sum(n["ms"] for n in nodes)
    return {**entry, "wall_ms": {"median": round(statistics.median(wall), 4), "min": round(min(wall), 4),
                                 "samples": len(wall)},
            "node_ms": round(total, 4), "by_kind": by_kind(nodes), "by_kernel": by_kernel(nodes),
            "notes": runs[0].get("notes", []), "nodes": nodes}



def _emulated_entry(entry: dict, case, runs: list[dict], native: list[dict]) -> dict:
    """An emulated run: which kernels each node ran (counts, no times: they are the emulator's) and its output
    checked against the native run's (benchmarks/isa_cap.py: emulated_verdict)."""
    if not native or "error" in native[0]:
        return {**entry, "status": "failed", "error": "no native run to check the emulated one against"}
    check = isa_cap.emulated_verdict(case.precision, native[0]["logits"], runs[0]["logits"], runs[0]["nodes"])
    kernels = collections.Counter((n["type"], n["kernel"]) for n in runs[0]["nodes"])
    return {**entry, "status": "kernels only" if check["status"] == "ok" else f"emulation {check['status']}",
            "emulation_check": check, "error": check.get("reason"),
            "kernels": [{"type": t, "kernel": k, "nodes": n} for (t, k), n in sorted(kernels.items())],
            "nodes": [{k: v for k, v in node.items() if k != "ms"} for node in runs[0]["nodes"]]}
