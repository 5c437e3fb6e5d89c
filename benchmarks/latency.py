"""`python -m benchmarks`: latency, load time, peak memory and size per runtime and precision, against upstream's
architecture exported the straightforward way, in the same run, on this host.

1. Export (cached in OUTPUT/artifacts): this project's artifacts (export-friendly model; FP32 and INT8 with the
   project's recipe) and the baseline (the faithful reference model exported as is; INT8 with NNCF's default
   transformer recipe, SmoothQuant included) for ONNX Runtime, OpenVINO and ExecuTorch XNNPACK; a target that
   cannot take the baseline is reported with its error.
2. Measure this host's dense GEMM peak per precision (benchmarks/peaks.py).
3. Load every case pinned to the same thread count, warm it up, then time it in rounds that interleave all cases
   in a shuffled order, so machine noise lands on all of them alike.
4. Peak memory: each case once more in a fresh subprocess (RSS growth over the imported runtime).
5. Write results.json (docs/results_schema.md), results.md and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edge_crossformer.cli import MAX_IMG_SIZE, MAX_RUNS, MAX_THREADS, img_size, int_in, names
from edge_crossformer.outputs import OutputError, check_output
from edge_crossformer.util import progress_bar
from edge_crossformer import targets as registry
from edge_crossformer.compression import is_compressed

from . import isa_cap
from . import peaks as peaks_mod
from . import system
from .export_cache import CPU_AVX2, DYNAMIC, FULL_RANGE, TARGET_OF, base as _base, export_sets, weights
from .recommend import UNJUDGED, gate_status, recommend
from .runners import Case, load
from .stats import latency_stats

RUNTIMES = ("pytorch", *TARGET_OF)
TRIM = 0.1
# (numerator, denominator, goal) on CrossFormer-T 224, batch 1 (issue #5); evaluated whenever both cases ran.
GOALS = [
    ("openvino/int8/project", "openvino/fp32/baseline", 0.5),
    ("openvino/int8/project", "openvino/int8/baseline", 0.8),
    ("executorch/int8/project", "executorch/fp32/project", 0.67),
    ("executorch/int8-dynamic/project", "executorch/fp32/project", None),
    ("executorch/int8-dynamic/project", "executorch/int8/project", None),
    ("onnxruntime/int8/project", "onnxruntime/fp32/baseline", 0.6),
    ("openvino/fp32/project", "openvino/fp32/baseline", None),
    ("onnxruntime/fp32/project", "onnxruntime/fp32/baseline", None),
    ("onnxruntime/int8/project", "onnxruntime/int8/baseline", None),
    ("pytorch/fp32/project", "pytorch/fp32/baseline", None),
    ("openvino/int8/project", "openvino/int8-full-range/project", None),
    ("onnxruntime/int8/project", "onnxruntime/int8-full-range/project", None),
    # INT8 made for CPUs without VNNI (--cpu avx2), against FP32 and the default INT8 on this host.
    ("openvino/int8-avx2/project", "openvino/fp32/project", None),
    ("openvino/int8-avx2/project", "openvino/int8/project", None),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="other commands: python -m benchmarks "
                                       "{accuracy,merge,golden,android,ddp,profile} --help")
    p.add_argument("--model", default="crossformer-t")
    p.add_argument("--checkpoint", type=Path, help="weights (latency does not depend on them; default: random "
                                                   "init, or the bundled ones)")
    p.add_argument("--img-size", type=img_size, help=f"a multiple of 32 from 32 to {MAX_IMG_SIZE} (default: the "
                                                     "model's, 224 for upstream variants; --quick: 64)")
    p.add_argument("--quick", action="store_true",
                   help="small input, few runs, 48 calibration images, no INT8 scheme variants (a smoke test)")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None,
                   help=f"threads per runtime, 1 to {MAX_THREADS} (default: all cores)")
    p.add_argument("--warmup", type=int_in(0, MAX_RUNS), help="untimed runs per case, >= 0 (default 10; --quick 2)")
    p.add_argument("--runs", type=int_in(1, MAX_RUNS), help="timed runs per case, >= 1 (default 60; --quick 6)")
    p.add_argument("--rounds", type=int_in(1, MAX_RUNS),
                   help="interleaving rounds, >= 1, at most --runs (default 6; --quick 2)")
    p.add_argument("--runtimes", type=names(RUNTIMES, "runtime"), default=",".join(RUNTIMES),
                   help="comma list of " + ", ".join(RUNTIMES) + " (default: all)")
    p.add_argument("--no-baseline", action="store_true", help="skip upstream-as-exported")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    p.add_argument("--calib-data", type=Path, help="INT8 calibration images (default: the bundled set, else 64 "
                                                   "Fashion-MNIST test images, else seeded synthetic images)")
    p.add_argument("--accuracy", type=Path, help="accuracy.json from python -m benchmarks accuracy, for the "
                                                 "accuracy-vs-latency plot (default: looked up in OUTPUT and docs/)")
    p.add_argument("--output", type=Path, help="default: benchmark_results/<model>_<size>")
    p.add_argument("--reexport", action="store_true", help="export again even if OUTPUT/artifacts has the set")
    p.add_argument("--export-only", action="store_true",
                   help="only export into OUTPUT/artifacts (e.g. while the machine is busy); measure later")
    return p


def _cases(manifests: dict, runtimes: tuple[str, ...], root: Path, bf16: bool, baseline: bool) -> tuple[
        list[Case], list[dict]]:
    """Cases to time, and entries for those that cannot run (status failed / unsupported, with why)."""
    cases, missing = [], []
    if "pytorch" in runtimes:
        cases.append(Case("pytorch", "fp32", "project", "eager", label="PyTorch eager (export-friendly)"))
        if baseline:
            cases.append(Case("pytorch", "fp32", "baseline", "eager", label="PyTorch eager (reference)"))
    for (variant, precision), manifest in manifests.items():
        folder = root / f"{variant}-{precision}"
        for runtime in runtimes:
            if runtime not in TARGET_OF or (variant, precision, runtime) == ("baseline", "int8", "executorch"):
                continue
            target = registry.get(TARGET_OF[runtime])
            if (precision == DYNAMIC and "dynamic" not in target.int8_activations) or (
                    precision == FULL_RANGE and not target.x86_pair_sums) or (
                    is_compressed(precision) and not target.supports(precision)) or (
                    precision == CPU_AVX2 and not target.cpu_keep_float):
                continue
            arts = [a for a in manifest["artifacts"] if a["target"] == target.name
                    and a["precision"] == _base(precision) and a["delegate"] == target.runtime_delegate]
            if not arts:
                fail = [f for f in manifest.get("failures", []) if f["target"] == target.name]
                why = fail[0]["error"] if fail else "no artifact in the export"
                missing.append({"id": f"{runtime}/{precision}/{variant}", "runtime": runtime,
                                "precision": precision, "variant": variant, "status": "failed", "error": why})
                continue
            art = arts[0]
            backend = target.runtime_delegate or "CPU"
            cases.append(Case(runtime, precision, variant, backend, folder / art["file"],
                              hint="f32" if target.bf16_hint else None))
            if target.bf16_hint and precision == "fp32" and bf16:
                cases.append(Case(runtime, "bf16", variant, backend, folder / art["file"], hint="bf16"))
    if baseline and "executorch" in runtimes and not any(m["id"] == "executorch/int8/baseline" for m in missing):
        if any(m["id"] == "executorch/fp32/baseline" for m in missing):
            missing.append({"id": "executorch/int8/baseline", "runtime": "executorch", "precision": "int8",
                            "variant": "baseline", "status": "unsupported",
                            "error": "not attempted: upstream's FP32 graph already fails to lower (see fp32)"})
    return cases, missing


# ----------------------------------------------------------------------------------------------------- measuring

def _time_cases(loaded: list[tuple[Case, object]], x: np.ndarray, warmup: int, runs: int, rounds: int,
                console: Console) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {c.id: [] for c, _ in loaded}
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    order = random.Random(0)
    with progress_bar(console=console) as bar:
        task = bar.add_task("warm-up", total=len(loaded) * (warmup + runs))
        for _, run in loaded:
            for _ in range(warmup):
                run(x)
                bar.advance(task)
        for r, n in enumerate(per_round):
            bar.update(task, description=f"timing round {r + 1}/{rounds}")
            shuffled = list(loaded)
            order.shuffle(shuffled)
            for case, run in shuffled:
                key = case.id
                for _ in range(n):
                    t = time.perf_counter()
                    run(x)
                    samples[key].append((time.perf_counter() - t) * 1e3)
                    bar.advance(task)
    return samples


def _memory_probe(case: Case, threads: int, model: str, img_size: int, checkpoint: Path | None) -> dict:
    """Peak RSS growth of loading and running `case`, in a fresh process (so cases do not share the high-water
    mark)."""
    spec = json.dumps({"case": {**case.__dict__, "artifact": str(case.artifact) if case.artifact else None},
                       "threads": threads, "model": model, "img_size": img_size,
                       "checkpoint": str(checkpoint) if checkpoint else None})
    try:
        out = subprocess.run([sys.executable, "-m", "benchmarks.memprobe", spec], capture_output=True, text=True,
                             timeout=600, cwd=Path(__file__).resolve().parents[1])
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        return json.loads(line[-1]) if line else {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    except subprocess.TimeoutExpired:
        return {"error": "memory probe timed out"}


# ----------------------------------------------------------------------------------------------------- main

def model_and_size(args):
    """(the model's config, the input size a benchmark runs at): --img-size, else the model's own (at most 64 with
    --quick); ModelConfigError for an unknown model or a size it cannot take."""
    from edge_crossformer.registry import check_img_size, get_config

    cfg = get_config(args.model)
    size = args.img_size or (min(64, cfg.default_img_size) if args.quick else cfg.default_img_size)
    check_img_size(size)
    return cfg, size


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from edge_crossformer.registry import ModelConfigError, build_model
    from edge_crossformer.reference import model_macs
    from export import ExportError

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    try:
        cfg, img_size = model_and_size(args)
    except ModelConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = args.threads or system.machine()["cores"]
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    runs = args.runs or (6 if args.quick else 60)
    rounds = max(1, min(args.rounds or (2 if args.quick else 6), runs))
    output = args.output or Path("benchmark_results") / f"{args.model}_{img_size}"
    try:
        _check_paths(args, output)
    except (OutputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = (output / "artifacts").resolve()  # absolute: the memory probes run from the repository root
    root.mkdir(parents=True, exist_ok=True)
    started, load_before = time.time(), os.getloadavg()

    random_weights = args.checkpoint is None and not cfg.bundled_checkpoint
    args.checkpoint = weights(args, cfg, img_size, root, console)
    try:
        manifests = export_sets(args, args.model, img_size, args.runtimes, root, console)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.export_only:
        console.print(f"exported into {root}; run the same command without --export-only to measure")
        return 0
    bf16 = peaks_mod.host_has_bf16()
    console.print(f"measuring this host's GEMM peaks ({threads} threads)")
    peaks = peaks_mod.measure_all(threads, quick=args.quick)
    cases, missing = _cases(manifests, args.runtimes, root, bf16, not args.no_baseline)

    x = np.random.default_rng(0).random((1, 3, img_size, img_size), dtype=np.float32)
    loaded, entries = _load_cases(cases, threads, args, img_size, x)
    samples = _time_cases(loaded, x, warmup, runs, rounds, console)
    del loaded

    counted = build_model(args.model, img_size=img_size)
    macs, params = model_macs(counted), sum(p.numel() for p in counted.parameters())
    _add_stats(entries, samples, macs, peaks)
    if not args.no_memory:
        _add_memory(entries, cases, threads, args, img_size, console)
    gates = _gates(manifests, root)
    for case in cases:
        if case.artifact is not None:
            # Seeded random weights have near-tied logits: INT8's agreement gate says nothing about a trained model.
            entries[case.id]["gates"] = UNJUDGED if random_weights else gates.get(str(case.artifact), "unknown")
    results = list(entries.values()) + missing
    machine = system.machine()
    report = {
        "schema": "edge-crossformer/results", "schema_version": 1,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "source": "host",
        "machine": machine, "versions": system.versions(), "commit": system.commit(),
        "settings": {"model": args.model, "img_size": img_size, "batch": 1, "threads": threads, "warmup": warmup,
                     "runs": runs, "rounds": rounds, "trim": TRIM, "quick": args.quick,
                     "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                     "openvino_bf16": bf16, "seconds": round(time.time() - started, 1),
                     # a shared machine's load (1 / 5 / 15 min): how far the times may be from a quiet machine's
                     "load_average": {"before": [round(v, 2) for v in load_before],
                                      "after": [round(v, 2) for v in os.getloadavg()]}},
        "model": {"name": args.model, "img_size": img_size, "macs": int(macs), "params": int(params)},
        "peaks": peaks, "results": results, "ratios": _ratios(results), "delegation": _delegation(manifests),
        "accuracy": _accuracy(args, output),
        "recommendation": recommend(results, isa_cap.label(None, machine["isa"])),
    }
    from .report import write_report

    write_report(report, output)
    _print_table(console, report)
    console.print(f"wrote {output / 'results.json'}, results.md and plots ({report['settings']['seconds']:.0f} s)")
    return 0


# What the latency benchmark replaces in OUTPUT: its export cache and its report. Not the whole folder: it also
# reads OUTPUT/accuracy.json, which `python -m benchmarks accuracy --output OUTPUT` writes there.
OWNED = ("artifacts", "results.json", "results.md", "latency.png", "accuracy_latency.png")


def _check_paths(args, output: Path) -> None:
    """Before any export or measurement: the output can be written without overwriting an input, and an
    --accuracy file is one (a broken one would otherwise surface after the whole run)."""
    check_output(output, "--output", directory=True, owned=[output / name for name in OWNED],
                 inputs={"--checkpoint": args.checkpoint, "--calib-data": args.calib_data, "--accuracy": args.accuracy})
    if args.accuracy is not None and _read_accuracy(args.accuracy) is None:
        raise ValueError(f"--accuracy {args.accuracy} is not an accuracy.json (missing or not JSON); pass the file "
                         "python -m benchmarks accuracy writes, or leave --accuracy out")


def _read_accuracy(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _load_cases(cases: list[Case], threads: int, args, img_size: int, x: np.ndarray) -> tuple[list, dict]:
    """Load every case and run it once: (loaded (case, run) pairs, result entry per case id). A runtime refusing an
    artifact is a result (status failed, with why), not a crash."""
    loaded, entries = [], {}
    for case in cases:
        entry = {"id": case.id, "runtime": case.runtime, "backend": case.backend, "precision": case.precision,
                 "variant": case.variant, "artifact": case.artifact.name if case.artifact else None,
                 "artifact_bytes": _artifact_bytes(case), "status": "ok", "error": None}
        try:
            run_fn, load_ms = load(case, threads, args.model, img_size,
                                   str(args.checkpoint) if args.checkpoint else None)
            t = time.perf_counter()
            y = np.asarray(run_fn(x))
            entry["first_inference_ms"] = round((time.perf_counter() - t) * 1e3, 3)
            if not np.isfinite(y).all():
                raise RuntimeError("non-finite logits")
            entry["load_ms"] = round(load_ms, 2)
            loaded.append((case, run_fn))
        except Exception as e:  # noqa: BLE001 - see the docstring
            entry.update(status="failed", error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                         if str(e).strip() else type(e).__name__)
        entries[case.id] = entry
    return loaded, entries


def _add_stats(entries: dict, samples: dict, macs: int, peaks: dict) -> None:
    """Latency statistics, the samples, and the fraction of this host's GEMM peak (roofline) per timed case."""
    for key, s in samples.items():
        stats = latency_stats(s, TRIM)
        entry = entries[key]
        entry["latency_ms"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}
        entry["samples_ms"] = [round(v, 4) for v in s]
        peak = peaks.get(_base(entry["precision"]))
        if peak:
            entry["roofline_fraction"] = round(macs / (stats["median"] / 1e3) / (peak["gmacs_per_s"] * 1e9), 4)


def _add_memory(entries: dict, cases: list[Case], threads: int, args, img_size: int, console: Console) -> None:
    """Peak memory of each case that loaded, measured in a process of its own."""
    with progress_bar(console=console) as bar:
        task = bar.add_task("peak memory (one process per case)", total=len(cases))
        for case in cases:
            if entries[case.id]["status"] == "ok":
                probe = _memory_probe(case, threads, args.model, img_size, args.checkpoint)
                if "peak_rss_mib" in probe:
                    entries[case.id]["peak_rss_mib"] = probe["peak_rss_mib"]
                else:
                    entries[case.id].setdefault("notes", []).append(f"memory probe: {probe.get('error')}")
            bar.advance(task)


def _artifact_bytes(case: Case) -> int | None:
    if case.artifact is None:
        return None
    p = Path(case.artifact)
    extra = p.with_suffix(".bin") if p.suffix == ".xml" else None
    return p.stat().st_size + (extra.stat().st_size if extra and extra.exists() else 0)


def _ratios(results: list[dict]) -> list[dict]:
    by_id = {r["id"]: r for r in results if r.get("status") == "ok"}
    out = []
    for num, den, goal in GOALS:
        a, b = by_id.get(num), by_id.get(den)
        entry = {"name": f"{num} / {den}", "numerator": num, "denominator": den, "goal": goal}
        if a is None or b is None:
            entry.update(value=None, met=None, note="not measured: " + ", ".join(
                i for i, r in ((num, a), (den, b)) if r is None))
        else:
            value = a["latency_ms"]["median"] / b["latency_ms"]["median"]
            entry.update(value=round(value, 4), met=None if goal is None else bool(value <= goal))
        out.append(entry)
    return out


def _gates(manifests: dict, root: Path) -> dict[str, str]:
    """Artifact path -> the export's accuracy-gate verdict on it (what the recommendation may ship)."""
    return {str(root / f"{variant}-{precision}" / art["file"]): gate_status(manifest, art["file"])
            for (variant, precision), manifest in manifests.items() for art in manifest["artifacts"]}


def _delegation(manifests: dict) -> dict:
    out = {}
    for (_, precision), manifest in manifests.items():
        for art in manifest["artifacts"]:
            info = art.get("info") or {}
            if art["target"] == "executorch":
                # Static and dynamic INT8 .pte files share a name (in different folders).
                key = art["file"] + (f" ({precision})" if precision == DYNAMIC else "")
                out[key] = {"delegates": info.get("delegates"), "ops_outside_delegate": info.get("ops_outside_delegate"),
                            "by_op": info.get("ops_outside_delegate_by_op", {})}
            elif art["target"] == "coreml":
                out[art["file"]] = {"op_histogram": info.get("op_histogram"), "max_rank": info.get("max_rank"),
                                    "gather_ops": info.get("gather_ops"), "compute_plan": _compute_plan(art)}
    return out


def _compute_plan(art: dict) -> dict | str:
    if sys.platform != "darwin":
        return "needs macOS (Core ML's MLComputePlan); Linux records the op histogram only"
    return "not measured: reading Core ML's MLComputePlan is not wired into the benchmark yet"


def _accuracy(args, output: Path) -> dict | None:
    root = Path(__file__).resolve().parents[1]
    for path in ([args.accuracy] if args.accuracy else []) + [output / "accuracy.json",
                                                             root / "docs" / f"accuracy_{args.model}.json"]:
        data = _read_accuracy(path) if path else None  # a damaged default one is passed over, not a crash
        if data is not None and data.get("model") == args.model:
            return {"file": str(path), **data}
    return None


def _print_table(console: Console, report: dict) -> None:
    s = report["settings"]
    table = Table(title=f"{s['model']} @ {s['img_size']} px, batch 1, {s['threads']} threads, "
                        f"{report['machine']['cpu']}")
    for col in ("case", "median ms", "p90 ms", "trimmed ms", "load ms", "peak MiB", "MB", "roofline"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in report["results"]:
        lat = r.get("latency_ms") or {}
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        if r.get("status") != "ok":
            table.add_row(r["id"], f"[red]{r['status']}[/]", (r.get("error") or "")[:60], "", "", "", "", "")
            continue
        table.add_row(r["id"], fmt(lat.get("median"), ".2f"), fmt(lat.get("p90"), ".2f"),
                      fmt(lat.get("trimmed_mean"), ".2f"), fmt(r.get("load_ms"), ".0f"),
                      fmt(r.get("peak_rss_mib"), ".0f"),
                      fmt(r["artifact_bytes"] / 1e6 if r.get("artifact_bytes") else None, ".1f"),
                      fmt(r.get("roofline_fraction") and 100 * r["roofline_fraction"], ".1f") + "%")
    console.print(table)
    goals = Table(title="ratios (median latency)")
    for col in ("ratio", "value", "goal", "met"):
        goals.add_column(col)
    for g in report["ratios"]:
        goals.add_row(g["name"], "-" if g["value"] is None else f"{g['value']:.3f}",
                      "-" if g["goal"] is None else f"<= {g['goal']}",
                      {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[g["met"]])
    console.print(goals)
    for rec in report.get("recommendation") or []:
        console.print(rec["line"])
