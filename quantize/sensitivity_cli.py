"""python -m quantize sensitivity: which layers INT8 hurts, as a table, `sensitivity.json` and `sensitivity.png`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edge_crossformer.cli import MAX_BATCH, MAX_IMAGES, MAX_IMG_SIZE, MAX_NUM_CLASSES, img_size, int_in, run_cli

DEFAULT_IMAGES = 1000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m quantize sensitivity",
        description="Per-layer INT8 sensitivity of XNNPACK's scheme (ExecuTorch, Core ML W8A8): for every layer, the "
                    "error when only it is INT8 and when only it is kept float, on real images. Ranks the layers "
                    "`python -m export --max-accuracy-drop` keeps float first.")
    p.add_argument("--model", default="crossformer-fmnist")
    p.add_argument("--checkpoint", type=Path, help="trained weights (default: the bundled ones)")
    p.add_argument("--num-classes", type=int_in(1, MAX_NUM_CLASSES),
                   help=f"classes of the checkpoint's head, 1 to {MAX_NUM_CLASSES:,} (default: the model's)")
    p.add_argument("--img-size", type=img_size,
                   help=f"input size, a multiple of 32 from 32 to {MAX_IMG_SIZE} (default: the model's)")
    p.add_argument("--calib-data", type=Path, help="calibration images (default for the bundled model: "
                                                  "Fashion-MNIST train split)")
    p.add_argument("--calib-size", type=int_in(1, MAX_IMAGES), default=300,
                   help="calibration images, >= 1 (default 300)")
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


def _load(args):
    """(model in [0, 1] -> logits, calibration images, evaluation images, labels or None, sources)"""
    from edge_crossformer import create_model, deployable, get_config, targets
    from edge_crossformer.data import find_fashion_mnist, load_dataset

    spec = get_config(args.model)
    bundled = spec.bundled_checkpoint is not None and spec.labels_file is not None
    if args.checkpoint is None and not spec.bundled_checkpoint:
        raise SensitivityError(f"{args.model} has no bundled weights; pass --checkpoint PATH")
    if args.calib_data is None and not (bundled and find_fashion_mnist() is not None):
        hint = " (or install Debian's dataset-fashion-mnist)" if bundled else ""
        raise SensitivityError(f"no calibration images for {args.model}: pass --calib-data PATH (a folder of images, "
                               f"an ImageFolder tree or Fashion-MNIST IDX files){hint}")
    if args.data is None and args.calib_data is not None and not bundled:
        raise SensitivityError("pass --data PATH: the images to score the layers on")
    img_size = args.img_size or spec.default_img_size
    resize = spec.resize_for(img_size)
    model = create_model(args.model, checkpoint=args.checkpoint, img_size=img_size, num_classes=args.num_classes,
                         spelling=targets.spelling_for_scheme("xnnpack"))
    calib = load_dataset(args.calib_data, resize, split="train", limit=args.calib_size)
    data = load_dataset(args.data, resize, split="test", limit=args.limit)
    labels = data.labels.numpy() if data.labelled and (data.labels >= 0).all() else None
    classes = model.head.out_features
    if labels is not None and (labels.max() >= classes):
        raise SensitivityError(f"{data.source} has labels up to {labels.max()} but {args.model} has {classes} classes")
    return deployable(model), calib.images, data.images, labels, (calib.source, data.source)


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

    from edge_crossformer.util import progress_bar

    from .ptq import QuantOptions
    from .sensitivity import analyse

    from edge_crossformer.outputs import check_output

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
        task = bar.add_task("calibrating (NNCF, XNNPACK scheme)", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, description="layer by layer", completed=done, total=total)

        result = analyse(model, calib, images, labels, QuantOptions(subset_size=len(calib)), batch=args.batch,
                         progress=advance)
    report = {
        "model": args.model, "checkpoint": str(args.checkpoint or "bundled"), "scheme": "XNNPACK (PT2E, NNCF)",
        "calibration": sources[0], "data": sources[1], "images": int(len(images)),
        "criterion": "top-1 drop (labels)" if labels is not None else "agreement with FP32 (no labels)",
        "all_int8": result.all_int8, "ranking": result.ranking(), "layers": result.rows,
        "seconds": round(time.time() - started, 1), "command": "python -m quantize sensitivity " + " ".join(argv),
    }
    _write(report, out)
    _table(console, report)
    console.print(f"wrote {out / 'sensitivity.json'} and {out / 'sensitivity.png'}")
    return 0


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

    base = report["all_int8"]
    table = Table(title=f"{report['model']}: INT8 sensitivity on {report['images']} images ({report['criterion']}); "
                        f"everything INT8: drop {base['drop_pp']:.2f} pp, KL {base['kl']:.2e}; "
                        f"{top} most sensitive of {len(report['layers'])}")
    for col in ("layer", "kind", "only INT8: drop pp", "only INT8: KL", "kept float: drop pp", "kept float: KL"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    rows = {r["unit"]: r for r in report["layers"]}
    for unit in report["ranking"][:top]:
        r = rows[unit]
        table.add_row(unit, r["kind"], f"{r['only_int8']['drop_pp']:+.2f}", f"{r['only_int8']['kl']:.2e}",
                      f"{r['kept_float']['drop_pp']:+.2f}", f"{r['kept_float']['kl']:.2e}")
    console.print(table)


def _plot(plt, report: dict, path: Path) -> None:
    rows = {r["unit"]: r for r in report["layers"]}
    order = report["ranking"]
    y = np.arange(len(order))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.16 * len(order) + 1.2)), sharey=True)
    left.barh(y, [max(rows[u]["only_int8"]["kl"], 1e-9) for u in order], color="tab:red")
    left.set_xscale("log")
    left.set_xlabel("KL(FP32 || model) with only this layer INT8")
    base = report["all_int8"]["kl"]
    right.barh(y, [base - rows[u]["kept_float"]["kl"] for u in order], color="tab:green")
    right.set_xlabel("KL removed by keeping only this layer float")
    left.set_yticks(y, order, fontsize=6)
    left.invert_yaxis()
    fig.suptitle(f"{report['model']}: INT8 sensitivity per layer, {report['images']} images "
                 f"(all INT8: drop {report['all_int8']['drop_pp']:.2f} pp)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)

