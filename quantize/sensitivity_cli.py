"""python -m quantize sensitivity: which layers INT8 (or, with --precision w4 / palette4 / ..., compressed weights)
hurts, as a table, `sensitivity.json` and `sensitivity.png`."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from edge_crossformer.compression import (GROUP_SIZES, WEIGHT_PRECISIONS, WEIGHT_SCHEMES, linear_in_features,
                                          role_patterns)
from edge_crossformer.cli import MAX_BATCH, MAX_IMAGES, MAX_IMG_SIZE, MAX_NUM_CLASSES, img_size, int_in, run_cli

DEFAULT_IMAGES = 1000
DEFAULT_CALIB_SIZE = 300


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m quantize sensitivity",
        description="Per-layer INT8 sensitivity of XNNPACK's scheme (ExecuTorch, Core ML W8A8): for every layer, the "
                    "error when only it is INT8 and when only it is kept float, on real images. Ranks the layers "
                    "`python -m export --max-accuracy-drop` keeps float first.")
    p.add_argument("--precision", choices=("int8",) + WEIGHT_PRECISIONS, default="int8",
                   help="int8 (default): XNNPACK's INT8 scheme, layer by layer. " + ", ".join(WEIGHT_PRECISIONS)
                        + ": compressed weights simulated in PyTorch, unit by unit (a block, a patch merging, the "
                          "stem, the head): what `python -m export --precision P --max-accuracy-drop` keeps at 8 bits "
                          "first")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES,
                   help="grouped weights (w4): input channels per scale (default: the scheme's)")
    p.add_argument("--model", default="crossformer-fmnist")
    p.add_argument("--checkpoint", type=Path, help="trained weights (default: the bundled ones)")
    p.add_argument("--num-classes", type=int_in(1, MAX_NUM_CLASSES),
                   help=f"classes of the checkpoint's head, 1 to {MAX_NUM_CLASSES:,} (default: the model's)")
    p.add_argument("--img-size", type=img_size,
                   help=f"input size, a multiple of 32 from 32 to {MAX_IMG_SIZE} (default: the model's)")
    p.add_argument("--calib-data", type=Path, help="calibration images (default for the bundled model: "
                                                  "Fashion-MNIST train split)")
    p.add_argument("--calib-size", type=int_in(1, MAX_IMAGES),
                   help=f"calibration images (int8), >= 1 (default {DEFAULT_CALIB_SIZE})")
    p.add_argument("--data", type=Path, help="images to score on: labelled (ImageFolder, IDX) gives top-1 drops, "
                                            "a flat folder agreement with FP32 (default: Fashion-MNIST test split)")
    p.add_argument("--limit", type=int_in(2, MAX_IMAGES), default=DEFAULT_IMAGES,
                   help=f"score this many images, >= 2 (default {DEFAULT_IMAGES})")
    p.add_argument("--batch", type=int_in(2, MAX_BATCH), default=100,
                   help=f"evaluation batch, 2 to {MAX_BATCH:,} (default 100)")
    p.add_argument("--output", type=Path, help="folder for sensitivity.json / .png (default: runs/sensitivity/MODEL)")
    return p


class SensitivityError(Exception):
    """Bad input: one message, exit code 2, nothing written."""


def _check_flags(args) -> None:
    """Flags that would do nothing for the chosen precision: refused, naming where they apply."""
    scheme = WEIGHT_SCHEMES.get(args.precision)
    if scheme is not None and (args.calib_data is not None or args.calib_size is not None):
        raise SensitivityError(f"--calib-data / --calib-size calibrate INT8 activations; --precision {args.precision} "
                               "compresses weights only and needs no calibration: drop them")
    if args.group_size is not None and (scheme is None or not scheme.grouped):
        grouped = ", ".join(name for name, s in WEIGHT_SCHEMES.items() if s.grouped)
        raise SensitivityError(f"--group-size applies to grouped weights ({grouped}), not --precision "
                               f"{args.precision}")
    if args.group_size is not None:
        _check_group_size(args)
    if args.calib_size is None:
        args.calib_size = DEFAULT_CALIB_SIZE


def _check_group_size(args) -> None:
    """A group size that divides the input channels of every linear the report compresses (all stages)."""
    from edge_crossformer import get_config
    from edge_crossformer.registry import ModelConfigError

    try:
        channels = linear_in_features(get_config(args.model), ())
    except ModelConfigError:
        return  # the model's own error comes from loading it, with its message
    bad = {where: c for where, c in channels.items() if c % args.group_size}
    if bad:
        fits = [g for g in GROUP_SIZES if all(c % g == 0 for c in channels.values())]
        where, c = next(iter(bad.items()))
        raise SensitivityError(f"--group-size {args.group_size} does not divide the input channels of {args.model}'s "
                               f"{where} ({c}); use --group-size {' / '.join(map(str, fits)) or '16'}")


def _load(args):
    """(model in [0, 1] -> logits, calibration images or None (weights), evaluation images, labels or None,
    sources)"""
    from edge_crossformer import create_model, deployable, get_config, targets
    from edge_crossformer.data import find_fashion_mnist, load_dataset

    spec = get_config(args.model)
    bundled = spec.bundled_checkpoint is not None and spec.labels_file is not None
    int8 = args.precision == "int8"
    if args.checkpoint is None and not spec.bundled_checkpoint:
        raise SensitivityError(f"{args.model} has no bundled weights; pass --checkpoint PATH")
    if int8 and args.calib_data is None and not (bundled and find_fashion_mnist() is not None):
        hint = " (or install Debian's dataset-fashion-mnist)" if bundled else ""
        raise SensitivityError(f"no calibration images for {args.model}: pass --calib-data PATH (a folder of images, "
                               f"an ImageFolder tree or Fashion-MNIST IDX files){hint}")
    if args.data is None and (args.calib_data is not None or not int8) and not bundled:
        raise SensitivityError("pass --data PATH: the images to score the layers on")
    img_size = args.img_size or spec.default_img_size
    resize = spec.resize_for(img_size)
    model = create_model(args.model, checkpoint=args.checkpoint, img_size=img_size, num_classes=args.num_classes,
                         spelling=targets.spelling_for_scheme("xnnpack"))
    calib = load_dataset(args.calib_data, resize, split="train", limit=args.calib_size) if int8 else None
    data = load_dataset(args.data, resize, split="test", limit=args.limit)
    labels = data.labels.numpy() if data.labelled and (data.labels >= 0).all() else None
    classes = model.head.out_features
    if labels is not None and (labels.max() >= classes):
        raise SensitivityError(f"{data.source} has labels up to {labels.max()} but {args.model} has {classes} classes")
    return (deployable(model), None if calib is None else calib.images, data.images, labels,
            (None if calib is None else calib.source, data.source))


def sensitivity_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from edge_crossformer.checkpoint import CheckpointError
    from edge_crossformer.data import DataError
    from edge_crossformer.outputs import OutputError
    from edge_crossformer.registry import ModelConfigError

    return run_cli(lambda: _sensitivity(args, argv),
                   user_errors=(SensitivityError, ModelConfigError, CheckpointError, DataError, OutputError))


def _sensitivity(args: argparse.Namespace, argv: list[str]) -> int:
    from rich.console import Console

    from edge_crossformer.outputs import check_output
    from edge_crossformer.util import progress_bar

    _check_flags(args)
    out = args.output or Path("runs/sensitivity") / args.model
    # Before any work: the two files this command replaces in the folder can be written and are not inputs.
    check_output(out, "--output", directory=True, owned=(out / "sensitivity.json", out / "sensitivity.png"),
                 inputs={"--checkpoint": args.checkpoint, "--calib-data": args.calib_data, "--data": args.data})
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    try:
        model, calib, images, labels, sources = _load(args)
    except ValueError as e:  # any other bad model or data input from building or loading: one line, exit 2
        raise SensitivityError(str(e)) from e
    started = time.time()
    with progress_bar(console=console) as bar:
        task = bar.add_task("calibrating (NNCF, XNNPACK scheme)" if calib is not None else
                            f"{args.precision}: scoring every unit compressed", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, description="layer by layer", completed=done, total=total)

        measured = (_int8(args, model, calib, images, labels, advance) if calib is not None
                    else _weights(args, model, images, labels, advance))
    criterion = "top-1 drop (labels)" if labels is not None else "agreement with FP32 (no labels)"
    report = {"model": args.model, "checkpoint": str(args.checkpoint or "bundled"), **measured,
              "calibration": sources[0], "data": sources[1], "images": int(len(images)), "criterion": criterion,
              "seconds": round(time.time() - started, 1),
              "command": "python -m quantize sensitivity " + " ".join(argv)}
    _write(report, out)
    _table(console, report)
    console.print(f"wrote {out / 'sensitivity.json'} and {out / 'sensitivity.png'}")
    return 0


def _int8(args, model, calib, images, labels, advance) -> dict:
    from .ptq import QuantOptions
    from .sensitivity import analyse

    result = analyse(model, calib, images, labels, QuantOptions(subset_size=len(calib)), batch=args.batch,
                     progress=advance)
    return {"precision": "int8", "scheme": "XNNPACK (PT2E, NNCF)", "all_int8": result.all_int8,
            "ranking": result.ranking(), "layers": result.rows}


def _weights(args, model, images, labels, advance) -> dict:
    """Every unit at the scheme's bits, the scheme's defaults at 8 bits, and per unit what it costs alone and what
    keeping only it at 8 bits gives back (quantize.weights)."""
    from .weights import WeightSensitivity, unit_of

    scheme = WEIGHT_SCHEMES[args.precision]
    group = (args.group_size or scheme.group_size) if scheme.grouped else None
    sens = WeightSensitivity(model, scheme, group, images, labels, batch=args.batch)
    units = sens.units
    stages = max(int(u.split(".")[1]) for u in units if u.startswith("layers.")) + 1
    default = sorted({unit_of(name) for name in sens.weights
                      if any(re.search(p, name) for p in role_patterns(scheme.keep_8bit, stages))})
    every = sens.evaluate(set(units))
    defaults = sens.evaluate(set(units) - set(default), set(default))
    sens.rank(units, progress=advance)
    return {"precision": args.precision, "group_size": group,
            "scheme": f"{scheme.name}: {scheme.bits}-bit weights, {scheme.granularity} (simulated in PyTorch)",
            "every_unit_compressed": every, "scheme_default": defaults, "kept_8bit_by_default": default,
            "ranking": sens.ranking(), "layers": sens.rows}


# How each report's figures are read by the table and the plot: (baseline, "only it" key, "all but it" key, words).
VIEWS = {
    "int8": ("all_int8", "only_int8", "kept_float", "INT8", "kept float", "everything INT8"),
    "weights": ("every_unit_compressed", "only_compressed", "kept_8bit", "{p}", "kept at 8 bits",
                "every unit {p}"),
}


def _view(report: dict) -> tuple[str, ...]:
    key = "int8" if report.get("precision", "int8") == "int8" else "weights"
    return tuple(word.format(p=report.get("precision")) for word in VIEWS[key])


def _write(report: dict, out: Path) -> None:
    """sensitivity.json and sensitivity.png replaced together: another run's plot must not stay beside the new
    numbers (without matplotlib there is no plot, and an old one is removed)."""
    from edge_crossformer.files import atomic_files
    from edge_crossformer.util import pyplot

    plt = pyplot()
    files = (out / "sensitivity.json",) + ((out / "sensitivity.png",) if plt else ())
    with atomic_files(*files, stale=() if plt else (out / "sensitivity.png",)) as temps:
        temps[0].write_text(json.dumps(report, indent=2) + "\n")
        if plt:
            _plot(plt, report, temps[1])


def _table(console, report: dict, top: int = 15) -> None:
    from rich.table import Table

    base_key, only, kept, what, kept_words, every = _view(report)
    base = report[base_key]
    table = Table(title=f"{report['model']}: {what} sensitivity on {report['images']} images ({report['criterion']}); "
                        f"{every}: drop {base['drop_pp']:.2f} pp, KL {base['kl']:.2e}; "
                        f"{min(top, len(report['layers']))} most sensitive of {len(report['layers'])}")
    for col in ("layer", "kind", f"only {what}: drop pp", f"only {what}: KL", f"{kept_words}: drop pp",
                f"{kept_words}: KL"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    rows = {r["unit"]: r for r in report["layers"]}
    for unit in report["ranking"][:top]:
        r = rows[unit]
        table.add_row(unit, r["kind"], f"{r[only]['drop_pp']:+.2f}", f"{r[only]['kl']:.2e}",
                      f"{r[kept]['drop_pp']:+.2f}", f"{r[kept]['kl']:.2e}")
    console.print(table)
    if "scheme_default" in report:
        d = report["scheme_default"]
        console.print(f"{what} with its default 8-bit units ({', '.join(report['kept_8bit_by_default']) or 'none'}): "
                      f"drop {d['drop_pp']:.2f} pp, agreement {d['agreement']:.2f} %, KL {d['kl']:.2e}")


def _plot(plt, report: dict, path: Path) -> None:
    base_key, only, kept, what, kept_words, every = _view(report)
    rows = {r["unit"]: r for r in report["layers"]}
    order = report["ranking"]
    y = np.arange(len(order))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.16 * len(order) + 1.2)), sharey=True)
    left.barh(y, [max(rows[u][only]["kl"], 1e-9) for u in order], color="tab:red")
    left.set_xscale("log")
    left.set_xlabel(f"KL(FP32 || model) with only this layer {what}")
    base = report[base_key]["kl"]
    right.barh(y, [base - rows[u][kept]["kl"] for u in order], color="tab:green")
    right.set_xlabel(f"KL removed when only this layer is {kept_words}")
    left.set_yticks(y, order, fontsize=6)
    left.invert_yaxis()
    fig.suptitle(f"{report['model']}: {what} sensitivity per layer, {report['images']} images "
                 f"({every}: drop {report[base_key]['drop_pp']:.2f} pp)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
