"""`python -m benchmarks accuracy`: how much top-1 do INT8 and weight compression cost, per runtime, on real labelled
images?

Exports FP32, INT8 (post-training, for ExecuTorch also with dynamic activations; and QAT when `--qat-checkpoint`
is given) and compressed-weight (every --precision w8 / w4 / ... a target offers) artifacts with `export`, runs each on its own runtime over the labelled set, and reports top-1, top-5 and
agreement with that runtime's FP32 artifact as a table, `accuracy.json` and `accuracy.png`. Under
`torchrun --nproc_per_node N` the processes split the labelled images and their exact counts are summed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edge_crossformer import distributed
from edge_crossformer.cli import (MAX_IMAGES, MAX_IMG_SIZE, MAX_NUM_CLASSES, float_in, img_size, int_in, names,
                                  percentage_points)
from edge_crossformer.files import atomic_path
from edge_crossformer.outputs import OutputError, check_output
from edge_crossformer.util import progress_bar

from edge_crossformer import targets as registry
from edge_crossformer.compression import is_compressed

from .system import commit, machine, versions
from .verify import verified_export


def _runtime_name(target: str) -> str:
    if target == MIL_EVALUATED and sys.platform != "darwin":
        return "Core ML (MIL evaluator)"
    t = registry.get(target)
    return t.runtime_name + (f" {t.runtime_delegate.upper()}" if t.runtime_delegate else "")


# Scored per export target whose artifact runs here (edge_crossformer.targets), named by its runtime.
RUNTIMES = registry.names(lambda t: t.runtime is not None)
# Core ML off macOS: its saved programs run through the project's MIL evaluator (export/coreml_mil.py, FP16-emulated,
# with its own decoders of compressed weights), one image at a time, about 0.03-0.07 s each at 32 px: scored when
# named in --runtimes, not by default.
MIL_EVALUATED = "coreml"
SCORABLE = (*RUNTIMES, MIL_EVALUATED)


def _runner(target: str, path: Path):
    """The artifact on its runtime, or Core ML's program on the MIL evaluator where Core ML cannot run."""
    if target == MIL_EVALUATED and sys.platform != "darwin":
        from export import coreml_mil

        run, why = coreml_mil.runner(path)
        if run is None:
            raise UsageError(f"{path.name}: {why}")
        return run
    return registry.get(target).load_runner(path)


# ExecuTorch also scores its dynamic INT8 (`--int8-activations dynamic`: linears' inputs quantized per row at run time).
DYNAMIC = "INT8 PTQ dynamic"
# OpenVINO and ONNX Runtime also score full-range INT8 weights (`--full-range-int8-weights`), so the cost of the
# default 7-bit weights (saturation-safe on x86 CPUs without VNNI) is measured in the same run.
FULL_RANGE = "INT8 PTQ full-range"
# OpenVINO also scores its INT8 for x86 CPUs without VNNI (`--cpu avx2`: linears float), whose accuracy must hold
# like the default's (issue 31).
CPU_AVX2 = "INT8 PTQ --cpu avx2"
# `--max-accuracy-drop PP` adds accuracy-controlled INT8 (python -m export --max-accuracy-drop) on every runtime.
CONTROLLED = "INT8 PTQ accuracy-controlled"
# Every weight-compression precision (edge_crossformer.compression) on the runtimes whose target offers it.
WEIGHTS = {p: f"weights {p}" for p in registry.PRECISIONS if is_compressed(p)}
VARIANTS = ["FP32", "INT8 PTQ", FULL_RANGE, CPU_AVX2, CONTROLLED, DYNAMIC, "INT8 QAT", *WEIGHTS.values()]


def evaluate_artifact(run, images: np.ndarray, labels: np.ndarray, progress=None) -> np.ndarray:
    logits = []
    for i in range(len(images)):
        logits.append(np.asarray(run(images[i:i + 1]), dtype=np.float32).reshape(-1))
        if progress is not None:
            progress()
    return np.stack(logits)


def counts(logits: np.ndarray, labels: np.ndarray, fp32: np.ndarray | None) -> dict[str, int]:
    """Images right at top-1 and top-5, and (given the FP32 artifact's logits) agreeing with FP32 at top-1."""
    top5 = np.argsort(-logits, axis=1)[:, :5]
    out = {"top1": int((top5[:, 0] == labels).sum()), "top5": int((top5 == labels[:, None]).any(1).sum())}
    if fp32 is not None:
        out["agreement_with_fp32"] = int((logits.argmax(1) == fp32.argmax(1)).sum())
    return out


def merged_scores(local: dict[str, int], images: int) -> dict:
    """Percentages from the counts summed over every process's share (torchrun; one process: its own counts):
    exact counts are merged, never percentages."""
    keys = list(local)  # every process builds its counts in the same order
    summed = distributed.sum_over_ranks([local[k] for k in keys] + [images])
    total = int(summed[-1])
    return {k: float(int(v) / total * 100) for k, v in zip(keys, summed)}


def scores(logits: np.ndarray, labels: np.ndarray, fp32: np.ndarray | None) -> dict:
    return merged_scores(counts(logits, labels, fp32), len(labels))


def qat_assignment(checkpoints: list[Path], runtimes: tuple[str, ...]) -> dict[Path, tuple[str, ...]]:
    """Which QAT checkpoint each runtime scores: the one whose record names the runtime's target (QAT simulates one
    target's INT8 scheme); a checkpoint without a record covers the runtimes no record claims."""
    claimed: dict[str, Path] = {}
    unrecorded = []
    for ckpt in checkpoints:
        if not ckpt.is_file():
            raise ValueError(f"QAT checkpoint not found: {ckpt} (python -m quantize qat writes one)")
        record = ckpt.with_suffix(".json")
        if not record.is_file():
            unrecorded.append(ckpt)
            continue
        data = json.loads(record.read_text())  # not JSON: a ValueError, refused like the others
        if not isinstance(data, dict):
            raise ValueError(f"{record} is not a QAT record (python -m quantize qat writes one beside the checkpoint)")
        for target in data.get("targets", runtimes):
            if target in runtimes:
                if target in claimed:
                    raise ValueError(f"two QAT checkpoints are for {target}: {claimed[target]} and {ckpt}")
                claimed[target] = ckpt
    if len(unrecorded) > 1:
        raise ValueError(f"QAT checkpoints without a record (.json beside them): {unrecorded}; give at most one")
    for rt in runtimes:
        if rt not in claimed and unrecorded:
            claimed[rt] = unrecorded[0]
    groups: dict[Path, tuple[str, ...]] = {}
    for rt in runtimes:
        if rt in claimed:
            groups[claimed[rt]] = groups.get(claimed[rt], ()) + (rt,)
    return groups


def run(argv: list[str] | None = None) -> int:
    """Under torchrun the processes split the labelled images (contiguous shares); each exports the artifacts itself
    (checked identical across processes) and scores its share on each runtime; the counts are summed and rank 0
    writes the report."""
    return distributed.run(lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks accuracy", description=__doc__)
    p.add_argument("--model", default="crossformer-fmnist")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--qat-checkpoint", type=Path, action="append", default=[],
                   help="QAT fine-tuned weights (python -m quantize qat) to add; repeatable: each runtime takes the "
                        "checkpoint whose record (the .json beside it) names its target, e.g. one trained with "
                        "--target openvino and one with --target executorch")
    p.add_argument("--num-classes", type=int_in(1, MAX_NUM_CLASSES),
                   help=f"classes of the checkpoint's head, 1 to {MAX_NUM_CLASSES:,} (default: the model's)")
    p.add_argument("--img-size", type=img_size,
                   help=f"input size, a multiple of 32 from 32 to {MAX_IMG_SIZE} (default: the model's)")
    p.add_argument("--data", type=Path, help="labelled images (ImageFolder or Fashion-MNIST IDX folder; "
                                             "default: Fashion-MNIST test split)")
    p.add_argument("--calib-data", type=Path, help="calibration images (default: Fashion-MNIST train split)")
    p.add_argument("--calib-size", type=int_in(1, MAX_IMAGES), default=300,
                   help="calibration images, >= 1 (default 300)")
    p.add_argument("--limit", type=int_in(1, MAX_IMAGES),
                   help="score only this many labelled images, >= 1 (default: all)")
    p.add_argument("--runtimes", type=names(SCORABLE, "runtime"), default=",".join(RUNTIMES),
                   help="comma list of " + ", ".join(SCORABLE) + f" (default: {', '.join(RUNTIMES)}; "
                        f"{MIL_EVALUATED}: off macOS through the MIL evaluator, slow, so only when named)")
    p.add_argument("--smooth-quant-alpha", type=float_in(0, 1, negative_disables=True), default=-1.0,
                   help="SmoothQuant alpha in [0, 1] for the INT8 exports; negative disables (default -1: off)")
    p.add_argument("--max-accuracy-drop", type=percentage_points, metavar="PP",
                   help="also score INT8 exported with --max-accuracy-drop PP (0 <= PP < 100) on every runtime")
    p.add_argument("--no-weight-compression", action="store_true",
                   help=f"skip the compressed-weight variants ({', '.join(WEIGHTS)}, on the runtimes whose target "
                        "offers them: scored by default)")
    p.add_argument("--output", type=Path, default=Path("benchmark_results/accuracy"))
    args = p.parse_args(argv)
    console = Console(stderr=True, quiet=distributed.secondary())  # rank 0 speaks for every process
    started = time.time()
    try:
        _check_output(args)
        variants = _variants(args)
        with tempfile.TemporaryDirectory(prefix="accuracy-") as tmp:
            data = _labelled_data(args, Path(tmp))
            images = (np.round(data.images.numpy() * 255.0) / 255.0).astype(np.float32)
            labels = data.labels.numpy()
            share = distributed.shard(len(labels))
            results: dict = {}
            for n, variant in enumerate(variants):
                _score_variant(args, variant, Path(tmp) / f"{n}_{variant[2].replace(' ', '_')}", images[share],
                               labels[share], results, console)
    except UsageError as e:
        if not distributed.secondary():
            print(f"error: {e}", file=sys.stderr)
        return 2
    report = _report(args, data.source, labels, results, time.time() - started)
    if not distributed.is_main():
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output / "accuracy.json") as tmp_json:
        tmp_json.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.output / "accuracy.png")
    _table(console, report)
    console.print(f"wrote {args.output / 'accuracy.json'} and {args.output / 'accuracy.png'}")
    return 0


class UsageError(Exception):
    """Bad input to the accuracy tool: printed as one line, exit code 2."""


def _check_output(args) -> None:
    """Before any export: accuracy.json and accuracy.png can be written and neither is an input (a QAT record
    beside its checkpoint included)."""
    qat = [*args.qat_checkpoint, *(c.with_suffix(".json") for c in args.qat_checkpoint)]
    try:
        check_output(args.output, "--output", directory=True, owned=[args.output / n for n in OWNED],
                     inputs={"--checkpoint": args.checkpoint, "--qat-checkpoint": qat, "--data": args.data,
                             "--calib-data": args.calib_data})
    except OutputError as e:
        raise UsageError(str(e)) from None


# What the command replaces in --output (the folder may be shared, e.g. with the latency benchmark's cache).
OWNED = ("accuracy.json", "accuracy.png")


def _variants(args) -> list[tuple]:
    """(precision, checkpoint, variant name, targets, INT8 activations) for every export to score."""
    targets = args.runtimes
    variants = [("fp32", args.checkpoint, "FP32", targets, "static"),
                ("int8", args.checkpoint, "INT8 PTQ", targets, "static")]
    full_range = tuple(t for t in targets if registry.get(t).x86_pair_sums)
    if full_range:
        variants.append(("int8", args.checkpoint, FULL_RANGE, full_range, "static"))
    per_cpu = tuple(t for t in targets if registry.get(t).cpu_keep_float)
    if per_cpu:
        variants.append(("int8", args.checkpoint, CPU_AVX2, per_cpu, "static"))
    if args.max_accuracy_drop is not None:
        variants.append(("int8", args.checkpoint, CONTROLLED, targets, "static"))
    dynamic = tuple(t for t in targets if "dynamic" in registry.get(t).int8_activations)
    if dynamic:
        variants.append(("int8", args.checkpoint, DYNAMIC, dynamic, "dynamic"))
    for precision, name in {} if args.no_weight_compression else WEIGHTS.items():
        able = tuple(t for t in targets if registry.get(t).supports(precision))
        if able:
            variants.append((precision, args.checkpoint, name, able, "static"))
    try:
        for ckpt, runtimes in qat_assignment(args.qat_checkpoint, targets).items():
            variants.append(("int8", ckpt, "INT8 QAT", runtimes, "static"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return variants


def _labelled_data(args, tmp: Path):
    """The labelled test set, resized as the model's manifest says, with the model's number of classes."""
    from edge_crossformer.data import DataError, load_dataset
    from export import ExportError, ExportRequest, validate
    from export.sizes import resize_spec

    try:
        base = validate(ExportRequest(targets=args.runtimes, model=args.model, checkpoint=args.checkpoint,
                                      img_size=args.img_size, num_classes=args.num_classes, output=tmp / "probe"))
        data = load_dataset(args.data, resize_spec(base), split="test", limit=args.limit, labelled=True)
    except (ExportError, DataError) as e:
        raise UsageError(str(e)) from None
    if len(data.classes) and len(data.classes) != base.num_classes:
        raise UsageError(f"{data.source} has {len(data.classes)} classes but {args.model} has {base.num_classes}; "
                         "give a labelled set with the model's classes")
    return data


def _score_variant(args, variant: tuple, out: Path, images: np.ndarray, labels: np.ndarray, results: dict,
                   console: Console) -> None:
    """Export one variant and score each of its artifacts on its runtime; entries land in results[target][name]."""
    from export import ExportError, ExportRequest, run_export, validate, with_options

    precision, ckpt, name, runtimes, activations = variant
    req = ExportRequest(targets=runtimes, model=args.model, checkpoint=ckpt, img_size=args.img_size,
                        num_classes=args.num_classes, precision=precision, output=out,
                        int8_activations=activations if precision == "int8" else None,
                        full_range_int8_weights=name == FULL_RANGE, cpu="avx2" if name == CPU_AVX2 else None,
                        max_accuracy_drop=args.max_accuracy_drop if name == CONTROLLED else None)
    # One set of knobs for every variant, each set only where the variant's export uses it (validate refuses a
    # knob an export would ignore: calibration for FP32, the size of a calibration QAT ranges replace, ...).
    with_options(req, calib_data=args.calib_data, calib_size=args.calib_size,
                 smooth_quant_alpha=args.smooth_quant_alpha, parity_samples=4)
    try:
        _, manifest = run_export(validate(req), console)
    except ExportError as e:
        raise UsageError(str(e)) from None
    # Scored only as the manifest vouches for it (the same check as a cached export's before it is timed).
    verified_export(out, "the export changed while it was being scored; rerun the command", manifest)
    for art in manifest["artifacts"]:
        key = art["target"]
        if art["delegate"] != registry.get(key).runtime_delegate:
            continue
        distributed.check_identical(art["sha256"], f"{name} {key} artifacts", "the export is not deterministic "
                                    "here; score without torchrun (the shares would be scored by different models)")
        with progress_bar(console=console) as bar:
            task = bar.add_task(f"{name} on {_runtime_name(key)}", total=len(images))
            logits = evaluate_artifact(_runner(key, out / art["file"]), images, labels,
                                       lambda: bar.advance(task))
        entry = scores(logits, labels, results.get(key, {}).get("FP32", {}).get("_logits"))
        if "saturation_safe" in art:
            entry["saturation_safe"] = art["saturation_safe"]
        control = art["info"].get("accuracy_control")
        if control:
            entry["accuracy_control"] = {k: control.get(k) for k in (
                "max_drop_pp", "met", "measured_drop_pp", "images", "kept_float")}
        if "compression" in art:
            entry["compression"] = {k: art["compression"][k] for k in (
                "bits", "group_size", "kept_8bit_roles", "layers_compressed", "layers_kept_8bit", "ratio_vs_fp32")}
        entry.update({"file": art["file"], "bytes": art["bytes"], "parity_status": art["parity"]["status"],
                      "_logits": logits, **({"checkpoint": str(ckpt)} if name == "INT8 QAT" else {})})
        results.setdefault(key, {})[name] = entry


def _report(args, source: str, labels: np.ndarray, results: dict, seconds: float) -> dict:
    report = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else "bundled",
              "data": source, "images": int(len(labels)), "calibration": str(args.calib_data or "default"),
              "calib_size": args.calib_size, "seconds": round(seconds, 1),
              # INT8 results depend on the CPU (VNNI or not): every figure names the machine it came from.
              "machine": machine(), "versions": versions(), "commit": commit(),
              **({"distributed": distributed.describe()} if distributed.world_size() > 1 else {}),
              "runtimes": {rt: _runtime_name(rt) for rt in results},
              "results": {rt: {v: {k: x for k, x in e.items() if not k.startswith("_")} for v, e in per.items()}
                          for rt, per in results.items()}}
    for per in report["results"].values():
        for v, e in per.items():
            if v != "FP32":
                e["drop_pp"] = per["FP32"]["top1"] - e["top1"]
    return report


def _table(console: Console, report: dict) -> None:
    m = report.get("machine", {})
    table = Table(title=f"{report['model']}: top-1 on {report['images']} labelled images ({report['data']}); "
                        f"{m.get('cpu', '?')}, {m.get('int8_dot_product', '?')}")
    for col in ("runtime", "variant", "top-1 %", "top-5 %", "drop pp", "agree w/ FP32 %", "parity"):
        table.add_column(col, justify="left" if col in ("runtime", "variant") else "right")
    for rt, per in report["results"].items():
        for v, e in per.items():
            table.add_row(_runtime_name(rt), v, f"{e['top1']:.2f}", f"{e['top5']:.2f}",
                          "-" if "drop_pp" not in e else f"{e['drop_pp']:+.2f}",
                          "-" if "agreement_with_fp32" not in e else f"{e['agreement_with_fp32']:.2f}",
                          e["parity_status"])
    console.print(table)


def _plot(report: dict, path: Path) -> None:
    from edge_crossformer.util import pyplot

    plt = pyplot()
    if plt is None:
        return
    runtimes = list(report["results"])
    variants = sorted({v for per in report["results"].values() for v in per}, key=VARIANTS.index)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        vals = [report["results"][rt].get(v, {}).get("top1", np.nan) for rt in runtimes]
        bars = ax.bar(np.arange(len(runtimes)) + i * width, vals, width, label=v)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(runtimes)) + width * (len(variants) - 1) / 2, [_runtime_name(r) for r in runtimes])
    low = min(e["top1"] for per in report["results"].values() for e in per.values())
    ax.set_ylim(max(0, low - 3), 100)
    ax.set_ylabel("top-1 %")
    cpu = report.get("machine", {}).get("int8_dot_product", "")
    ax.set_title(f"{report['model']}: FP32 vs INT8, {report['images']} images\n{cpu}", fontsize=9)
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
