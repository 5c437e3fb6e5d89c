"""python -m quantize {qat,sensitivity}: quantization-aware fine-tuning through NNCF (quantize/qat.py) and per-layer
INT8 sensitivity (quantize/sensitivity.py).

The library below knows INT8 schemes only; this command line resolves `--target` to a scheme and a spelling through
the target registry (edge_crossformer.targets), the one place targets are described."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_crossformer.cli import (MAX_BATCH, MAX_IMAGES, MAX_IMG_SIZE, MAX_NUM_CLASSES, MAX_SEED, MAX_THREADS,
                                  float_in, img_size, int_in, regex, run_cli)

from edge_crossformer import distributed

from edge_crossformer import targets as registry

from .qat import QATConfig, QATError


def _served(scheme: str) -> tuple[str, ...]:
    """The targets whose INT8 a scheme simulates."""
    return registry.names(lambda t: t.int8_scheme == scheme)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m quantize qat",
        description="Fine-tune a CrossFormer with INT8 simulated the way a target quantizes it, on labelled images, "
                    "resumably; writes a float checkpoint that `python -m export --precision int8 --checkpoint OUT` "
                    "exports.")
    p.add_argument("--model", default="crossformer-fmnist", help="model name (python -m export --help lists them)")
    p.add_argument("--checkpoint", type=Path, help="trained weights to start from (default: the bundled ones)")
    p.add_argument("--target", default="openvino", choices=sorted(registry.TARGETS),
                   help="the target whose INT8 scheme is simulated: " + "; ".join(
                       f"{', '.join(_served(scheme))} share the {scheme} scheme" for scheme in registry.schemes())
                   + " (default: openvino)")
    p.add_argument("--ranges", choices=("calibrated", "learned"), default="calibrated",
                   help="XNNPACK scheme only: activation ranges fixed at post-training INT8's (export recalibrates, "
                        "default) or learned as moving averages during training (written beside the checkpoint; "
                        "the ExecuTorch export uses them)")
    p.add_argument("--num-classes", type=int_in(1, MAX_NUM_CLASSES),
                   help=f"classes of the checkpoint's head, 1 to {MAX_NUM_CLASSES:,} (default: the model's)")
    p.add_argument("--img-size", type=img_size,
                   help=f"input size, a multiple of 32 from 32 to {MAX_IMG_SIZE} (default: the model's)")
    p.add_argument("--data", type=Path,
                   help="labelled training images: an ImageFolder tree or a Fashion-MNIST IDX folder "
                        "(default: Fashion-MNIST train split from Debian's dataset-fashion-mnist)")
    p.add_argument("--val-data", type=Path,
                   help="labelled validation images (default: the Fashion-MNIST test split when --data is "
                        "Fashion-MNIST; otherwise every 10th training image is held out)")
    p.add_argument("--epochs", type=int_in(1), default=QATConfig.epochs,
                   help=f"passes over the training images, >= 1 (default {QATConfig.epochs})")
    p.add_argument("--lr", type=float_in(0, low_open=True), default=QATConfig.lr,
                   help=f"peak learning rate, > 0 (default {QATConfig.lr})")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=QATConfig.batch_size,
                   help=f"images per step, 1 to {MAX_BATCH:,} (default {QATConfig.batch_size})")
    p.add_argument("--distill", type=float_in(0, 1), default=QATConfig.distill,
                   help="weight of distillation from the float model vs. the labels, in [0, 1] (0: labels only; "
                        f"default {QATConfig.distill})")
    p.add_argument("--grad-accum", type=int_in(1, MAX_BATCH), default=QATConfig.grad_accum,
                   help="micro-batches per step on each process (torchrun); --batch-size stays the global batch and "
                        "must split into processes x GRAD_ACCUM (default 1)")
    p.add_argument("--calib-size", type=int_in(1, MAX_IMAGES), default=QATConfig.calib_size,
                   help=f"images that initialise the quantizer ranges, >= 1 (default {QATConfig.calib_size})")
    p.add_argument("--keep-float", action="append", default=[], metavar="REGEX", type=regex,
                   help="node-name pattern (a regular expression) kept in float (repeatable)")
    p.add_argument("--train-limit", type=int_in(1, MAX_IMAGES),
                   help="use only this many training images, >= 1 (quick runs)")
    p.add_argument("--val-limit", type=int_in(1, MAX_IMAGES), help="score only this many validation images, >= 1")
    p.add_argument("--threads", type=int_in(0, MAX_THREADS), default=0,
                   help=f"torch threads, 0 to {MAX_THREADS} (default 0: all cores)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=QATConfig.seed,
                   help=f"0 to 2^32-1 (default {QATConfig.seed})")
    p.add_argument("--workdir", type=Path, help="resume state (default: runs/qat/<model>)")
    p.add_argument("--output", type=Path, help="checkpoint to write (default: runs/qat/<model>-qat.safetensors)")
    p.add_argument("--no-resume", action="store_true", help="start over even if WORKDIR holds a run")
    return p


def qat_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from edge_crossformer.checkpoint import CheckpointError
    from edge_crossformer.data import DataError
    from edge_crossformer.registry import ModelConfigError
    from edge_crossformer.train import ResumeError

    # SIGTERM / SIGHUP stop the run like Ctrl-C: the resume state and the checkpoint are only ever replaced whole.
    # Under torchrun every process runs this; they form one group (edge_crossformer.distributed).
    from edge_crossformer.outputs import OutputError

    return run_cli(lambda: distributed.run(lambda: _qat(args, argv)),
                   user_errors=(ModelConfigError, CheckpointError, DataError, QATError, ResumeError, OutputError,
                                distributed.DistributedError))


def _qat(args: argparse.Namespace, argv: list[str]) -> int:
    from edge_crossformer.preprocessing import Normalized
    from edge_crossformer.registry import create_model, get_config

    from .ptq import QuantOptions
    from .qat import run_qat

    spec = get_config(args.model)
    cfg = QATConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, calib_size=args.calib_size,
                    seed=args.seed, threads=args.threads, distill=args.distill, grad_accum=args.grad_accum)
    distributed.check_batch(cfg.batch_size, cfg.grad_accum)  # before the model and data are loaded, not after
    target = registry.get(args.target)
    scheme = target.int8_scheme
    _check_scheme_options(args, scheme)
    if args.checkpoint is None and not spec.bundled_checkpoint:
        raise QATError(f"{args.model} has no bundled weights; pass --checkpoint with the trained model to "
                       "fine-tune (QAT starts from a trained model)")
    suffix = "" if scheme == "nncf" else f"-{scheme}"
    workdir = args.workdir or Path("runs/qat") / f"{args.model}{suffix}"
    output = args.output or Path("runs/qat") / f"{args.model}-qat{suffix}.safetensors"
    # Before the model and the data are loaded: a run must not train for an hour and then fail to write.
    check_qat_paths(args, workdir, output)
    if not args.no_resume:
        check_resume_state(workdir)
    # The target's QAT spelling (XNNPACK's scheme trains the graph ExecuTorch exports: LayerNorm decomposed).
    model = create_model(args.model, checkpoint=args.checkpoint, img_size=args.img_size,
                         num_classes=args.num_classes, spelling=target.qat_spelling)
    img_size = args.img_size or spec.default_img_size
    train, (train_x, train_y), val = _qat_data(args, spec.resize_for(img_size), model.head.out_features)
    settings = {"model": args.model, "checkpoint": str(args.checkpoint or "bundled"), "scheme": scheme,
                "ranges": args.ranges,
                "img_size": img_size,
                "data": train.source, "train_images": int(len(train_x)),
                # How the global batch is spread (processes, grad-accum) may change when a run resumes.
                **{k: v for k, v in vars(cfg).items() if k != "grad_accum"},
                "keep_float": args.keep_float}
    _claim_workdir(workdir, settings, resume=not args.no_resume)
    if distributed.is_main():  # what a run killed outright (SIGKILL) left beside its files
        from edge_crossformer.checkpoint import ranges_path
        from edge_crossformer.files import sweep_stale

        for path in (output, output.with_suffix(".json"), ranges_path(output), workdir / "last.pt"):
            sweep_stale(path)
    opts = QuantOptions(subset_size=cfg.calib_size, keep_float=tuple(args.keep_float))
    meta = {"model": args.model, "checkpoint": settings["checkpoint"], "img_size": img_size, "data": train.source,
            "val_data": val.source, "targets": list(_served(scheme)),
            "command": "python -m quantize qat " + " ".join(argv)}
    run_qat(Normalized(model), (train_x, train_y), (val.images, val.labels), cfg, workdir=workdir, output=output,
            opts=opts, resume=not args.no_resume, meta=meta, scheme=scheme, ranges=args.ranges)
    print(f"next: python -m export --target {','.join(_served(scheme))} --model {args.model} "
          f"--checkpoint {output} --precision int8")
    return 0


def check_qat_paths(args: argparse.Namespace, workdir: Path, output: Path) -> None:
    """The checkpoint, its record and ranges file, and the workdir can be written, and none of them is an input:
    `--no-resume` deletes WORKDIR/last.pt and the end of the run replaces OUTPUT and the files beside it."""
    from edge_crossformer.checkpoint import ranges_path
    from edge_crossformer.outputs import check_output

    if output.suffix.lower() == ".json":
        raise QATError(f"--output {output} ends in .json, the name of the record written beside the checkpoint; "
                       "name the checkpoint .safetensors")
    inputs = {"--checkpoint": args.checkpoint, "--data": args.data, "--val-data": args.val_data}
    check_output(output, "--output", directory=False, inputs=inputs,
                 owned=(output, output.with_suffix(".json"), ranges_path(output)))
    check_output(workdir, "--workdir", directory=True, inputs=inputs)


def check_resume_state(workdir: Path) -> None:
    """A resume state that cannot be resumed (truncated, another tool's or another model's files, a settings record
    that is not JSON) is named with the fix now, not after the model and data are loaded."""
    from edge_crossformer.train import FRESH_START, read_resume_state

    marker = workdir / "settings.json"
    if marker.exists():
        try:
            json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise QATError(f"{marker} is not a QAT settings record ({type(e).__name__}); it is damaged or not this "
                           f"tool's: {FRESH_START}") from None
    if (workdir / "last.pt").exists():
        read_resume_state(workdir / "last.pt")


def _check_scheme_options(args: argparse.Namespace, scheme: str) -> None:
    if args.ranges == "learned" and scheme != "xnnpack":
        raise QATError(f"--ranges learned applies to XNNPACK's scheme (--target {' or '.join(_served('xnnpack'))}) "
                       "only")
    if args.keep_float and scheme != "nncf":
        raise QATError(f"--keep-float applies to NNCF's scheme (--target {' or '.join(_served('nncf'))}) only")


def _qat_data(args: argparse.Namespace, resize: dict, num_classes: int):
    """(training set, (train images, labels), validation set): a separate validation split when there is one,
    else every 10th training image; both labelled, with the model's classes."""
    import torch

    from edge_crossformer.data import is_fashion_mnist_dir, load_dataset

    train = load_dataset(args.data, resize, split="train", limit=args.train_limit, labelled=True)
    if not train.labelled:
        raise QATError(f"{train.source} has no labels; QAT needs an ImageFolder tree (one sub-folder per class) "
                       "or Fashion-MNIST IDX files")
    if args.val_data is not None or args.data is None or is_fashion_mnist_dir(args.data):
        val = load_dataset(args.val_data if args.val_data is not None else args.data, resize, split="test",
                           limit=args.val_limit, labelled=True)
        train_x, train_y = train.images, train.labels
    else:
        held = torch.zeros(len(train), dtype=torch.bool)
        held[::10] = True
        val_x, val_y = train.images[held], train.labels[held]
        train_x, train_y = train.images[~held], train.labels[~held]
        val = type(train)(val_x[:args.val_limit], val_y[:args.val_limit], train.classes, source=train.source)
    if not len(train_x):
        raise QATError(f"no training images left: {train.source} gave {len(train)} and every 10th one is held out "
                       "for validation; give more images (--train-limit 2 or more) or a separate --val-data")
    if not len(val):
        raise QATError(f"no validation images in {val.source}; pass --val-data with labelled images")
    for name, ds in (("training", train), ("validation", val)):
        if ds.classes and len(ds.classes) != num_classes:
            raise QATError(f"the {name} set ({ds.source}) has {len(ds.classes)} classes but the model has "
                           f"{num_classes}; pass --num-classes {len(ds.classes)} (and the matching checkpoint) "
                           "or data with the model's classes")
    return train, (train_x, train_y), val


def _claim_workdir(workdir: Path, settings: dict, resume: bool) -> None:
    """A resumable run continues only with the settings it started with (recorded in settings.json). Every rank
    checks (so every rank stops alike); rank 0 alone removes and writes, and the others wait for it."""
    from edge_crossformer.files import atomic_path, remove

    marker = workdir / "settings.json"
    if resume and (workdir / "last.pt").exists() and marker.exists() and json.loads(marker.read_text()) != settings:
        raise QATError(f"{workdir} holds a QAT run with different settings; pass --no-resume to start over or "
                       "--workdir DIR for a separate run")
    distributed.barrier()  # every rank has read the old marker before rank 0 replaces it
    if distributed.is_main():
        if not resume:
            remove(workdir / "last.pt")
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps(settings, indent=2) + "\n")
    distributed.barrier()


USAGE = """usage: python -m quantize {qat,sensitivity} [options]   (--help after a command for its options)

  qat          quantization-aware fine-tuning through NNCF, resumable
  sensitivity  per-layer INT8 sensitivity (XNNPACK scheme): table, JSON and PNG

Post-training INT8 runs inside python -m export --precision int8."""


def sensitivity_main(argv: list[str]) -> int:
    from .sensitivity_cli import sensitivity_main as run  # its imports (rich, numpy) only when it runs

    return run(argv)


# subcommand -> function(argv) -> exit code; tests/test_command_contract.py walks this table.
SUBCOMMANDS = {"qat": qat_main, "sensitivity": sensitivity_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE + (f"\nerror: unknown command {argv[0]!r}" if argv else ""), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
