"""Training loop (used for the bundled Fashion-MNIST model and, through `quantize`, for QAT fine-tuning).

`python -m edge_crossformer.train` trains `crossformer-fmnist` from scratch on the Fashion-MNIST files of the Debian
package `dataset-fashion-mnist`, resumably, and with `--publish` writes the FP16 checkpoint, labels and training
record that ship in `edge_crossformer/assets/`. Behind `torchrun --nproc_per_node N` it trains data parallel
(edge_crossformer/distributed.py); `fit` and `evaluate` are the same loop for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .cli import MAX_BATCH, MAX_IMAGES, MAX_SEED, MAX_THREADS, float_in, int_in, run_cli
from .preprocessing import Normalized
from .files import atomic_path
from .util import progress_bar


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    # Random crop (pixels of zero padding) and horizontal flip; Fashion-MNIST items are left/right symmetric.
    crop_pad: int = 2
    hflip: bool = True
    clip_grad: float = 5.0
    seed: int = 0
    threads: int = 0
    # Micro-batches per optimizer step on each process: `batch_size` stays the global batch, so a run on fewer
    # devices with more accumulation computes the same steps as one on more devices.
    grad_accum: int = 1
    # bfloat16 autocast when training on a GPU (torchrun with NCCL); CPU training is FP32 whatever this says.
    amp: bool = True


@dataclass
class TrainState:
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def augment(x: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    if cfg.hflip:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.crop_pad:
        p = cfg.crop_pad
        padded = F.pad(x, (p, p, p, p))
        h, w = x.shape[-2:]
        dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=gen).tolist()
        # One offset per batch keeps this a cheap slice; batches differ, so over an epoch offsets vary.
        x = padded[..., dy:dy + h, dx:dx + w]
    return x


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> dict:
    """top-1 / top-5 accuracy (%) of `model` (taking [0, 1] RGB input) on a labelled set.

    Under torchrun each rank scores its own share and the counts are summed: every rank must call this.
    """
    model.eval()
    dev = distributed.device()
    model.to(dev)
    part = distributed.shard(len(images))
    images, labels = images[part], labels[part]
    top1 = top5 = 0
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size].expand(-1, 3, -1, -1).to(dev))
        y = labels[i:i + batch_size].to(dev)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(dim=1).sum().item()
    top1, top5, n = (int(v) for v in distributed.sum_over_ranks([top1, top5, len(images)]))
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}


# Settings that may change when a run resumes: they do not change what is computed (up to float rounding), only
# how the work is spread (grad-accum and the number of processes: the global batch is what counts) and threads.
RESUMABLE_CHANGES = ("grad_accum", "threads")


def _resume_settings(cfg: TrainConfig) -> str:
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}, sort_keys=True)


class ResumeError(ValueError):
    """A resume state that does not belong to this run (other settings, corrupt, another model's); the message says
    what to do."""


FRESH_START = "pass --no-resume to start over (or --workdir DIR for a separate run)"
RESUME_KEYS = ("model", "optimizer", "generator", "epoch", "history", "seconds")


def read_resume_state(last: Path) -> dict:
    """The resume state `_save` wrote, or ResumeError naming the file and the fix: a truncated or foreign file must
    stop the run in one line, not in a traceback from deep inside torch.load."""
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a damaged file; all mean the same
        raise ResumeError(f"{last} is not a readable resume state ({type(e).__name__}); it is damaged or not "
                          f"this tool's: {FRESH_START}") from None
    missing = [k for k in RESUME_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ResumeError(f"{last} is not a resume state of this tool (no {', '.join(missing)}): {FRESH_START}")
    return saved


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _resume(last: Path, seen: list[bool], cfg: TrainConfig, model: nn.Module, opt, gen: torch.Generator
            ) -> TrainState:
    """Load `last` into model, optimizer and generator, refusing one written with other settings; `seen`: whether
    each rank sees the file."""
    if not all(seen):
        raise distributed.DistributedError(
            f"{last} exists for ranks {[r for r, s in enumerate(seen) if s]} only: put --workdir on a filesystem "
            "every node shares (each rank reads the resume state)")
    saved = read_resume_state(last)
    if "settings" in saved and saved["settings"] != _resume_settings(cfg):
        old, new = json.loads(saved["settings"]), json.loads(_resume_settings(cfg))
        diff = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                         if old.get(k) != new.get(k))
        raise ResumeError(f"{last} was written by a run with other settings ({diff}); rerun with that run's settings "
                         "to resume it, or pass --no-resume to start over (or --workdir DIR for a separate run)")
    try:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        state = TrainState(int(saved["epoch"]), json.loads(saved["history"]), float(saved["seconds"]))
    except (RuntimeError, ValueError, TypeError, KeyError) as e:  # another model's or optimizer's state
        raise ResumeError(f"{last} does not fit this run ({_first_line(e)}); it is another model's resume state: "
                          f"{FRESH_START}") from None
    print(f"resuming from {last} at epoch {state.epoch}/{cfg.epochs}")
    return state


def _autocast(cfg: TrainConfig, dev: torch.device):
    """bfloat16 autocast for FP32 training on a GPU (no loss scaling needed); CPU runs and QAT stay in FP32."""
    if cfg.amp and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(model: nn.Module, images: Tensor, labels: Tensor, cfg: TrainConfig, *, workdir: Path,
        eval_set: tuple[Tensor, Tensor] | None = None, resume: bool = True,
        on_epoch: Callable[[TrainState], None] | None = None,
        loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
        sync_state: Callable[[], None] | None = None) -> TrainState:
    """Train `model` ([0, 1] RGB in, logits out) with AdamW + cosine; resumable from `workdir/last.pt`.

    The resume file is replaced atomically at the end of every epoch, so an interrupted run loses at most the epoch
    in progress and never leaves a half-written file. `loss_fn(logits, x, labels)` replaces the label-smoothed
    cross-entropy (QAT distils from the float model with it).

    Under torchrun every rank draws the same epoch order and augmentation (same generator) for the whole global
    batch of `cfg.batch_size` images and trains on its own slice of it; DDP averages the gradients, each rank's
    loss weighted by its share of the batch, so a step is the one-process step up to float rounding.
    `sync_state()` makes training state outside the gradients (learned quantizer ranges) the same on every rank
    before each epoch's evaluation and checkpoint. Only rank 0 writes the checkpoint, after checking that every
    rank holds the same weights.
    """
    distributed.check_batch(cfg.batch_size, cfg.grad_accum)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dev = distributed.device()
    model.to(dev)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    state = TrainState()
    gen = torch.Generator().manual_seed(cfg.seed)
    last = workdir / "last.pt"
    if resume:
        found = distributed.gather(last.exists())
        if any(found):
            state = _resume(last, found, cfg, model, opt, gen)
    ddp = distributed.wrap(model, images[:1].expand(-1, 3, -1, -1).to(dev))
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    with progress_bar() as bar:
        task = bar.add_task("training", total=total, completed=state.epoch * steps_per_epoch)
        while state.epoch < cfg.epochs:
            model.train()
            started = time.time()
            order = torch.randperm(len(images), generator=gen)
            loss_sum = 0.0
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                # The whole global batch is augmented on every rank: the generator advances as in one process.
                x, y = augment(images[idx], cfg, gen).expand(-1, 3, -1, -1), labels[idx]
                step = state.epoch * steps_per_epoch + s
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, warmup, cfg)
                part = _step(ddp, opt, x, y, cfg, loss_fn, dev)
                loss_sum += part
                # Rank 0's part scaled up: the batch's loss as rank 0 sees it (exact with one process).
                shown = part * distributed.world_size()
                bar.update(task, advance=1, description=f"epoch {state.epoch + 1}/{cfg.epochs} loss {shown:.3f}")
            state.epoch += 1
            state.seconds += time.time() - started
            loss_sum = distributed.sum_over_ranks([loss_sum])[0]
            if sync_state is not None:
                sync_state()
            record = {"epoch": state.epoch, "loss": loss_sum / steps_per_epoch, "seconds": round(state.seconds, 1)}
            if eval_set is not None:
                record.update({f"test_{k}": v for k, v in evaluate(model, *eval_set).items() if k != "n"})
            state.history.append(record)
            bar.console.print(json.dumps(record))
            _save(last, model, opt, gen, state, cfg)
            if on_epoch is not None:
                on_epoch(state)
    return state


def _step(model: nn.Module, opt, x: Tensor, y: Tensor, cfg: TrainConfig, loss_fn, dev: torch.device) -> float:
    """One optimizer step on this rank's micro-batches of the global batch (x, y); returns this rank's part of
    the global batch's mean loss (the parts of all ranks sum to it)."""
    pieces = distributed.micro_batches(len(x), cfg.grad_accum)
    if pieces is None:  # an epoch's last batch with fewer images than micro-batches: skipped on every rank
        return 0.0
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for j, piece in enumerate(pieces):
        xs, ys = x[piece].to(dev), y[piece].to(dev)
        # DDP averages gradients over the ranks; weighting by share x world makes the sum the global batch mean.
        share = len(xs) / len(x)
        weight = share * distributed.world_size()
        with distributed.no_sync(model, last=j == len(pieces) - 1):
            with _autocast(cfg, dev):
                logits = model(xs)
                loss = (loss_fn(logits, xs, ys) if loss_fn is not None
                        else F.cross_entropy(logits, ys, label_smoothing=cfg.label_smoothing))
            (loss if weight == 1 else loss * weight).backward()
        total += loss.item() if share == 1 else loss.item() * share
    if cfg.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    opt.step()
    return total


def _save(last: Path, model: nn.Module, opt, gen: torch.Generator, state: TrainState, cfg: TrainConfig) -> None:
    """Rank 0 replaces the resume state whole, once every rank is shown to hold the same weights."""
    if distributed.world_size() > 1:
        distributed.check_identical(distributed.digest(model.state_dict()), f"weights after epoch {state.epoch}",
                                    "the ranks drifted apart; rerun with --no-resume and report it")
    if distributed.is_main():
        with atomic_path(last) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                        "epoch": state.epoch, "history": json.dumps(state.history),
                        "seconds": torch.tensor(state.seconds), "settings": _resume_settings(cfg)}, tmp)
    distributed.barrier()  # nobody reads or replaces the resume state while rank 0 writes it


def machine_description() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "processor": _cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_crossformer.train",
                                     description="Train the bundled crossformer-fmnist model on Fashion-MNIST.")
    parser.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument("--workdir", default="runs/crossformer-fmnist", help="resume checkpoints go here")
    parser.add_argument("--epochs", type=int_in(1), default=TrainConfig.epochs,
                        help=f"passes over the training set, >= 1 (default {TrainConfig.epochs})")
    parser.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=TrainConfig.batch_size,
                        help=f"images per step, 1 to {MAX_BATCH:,} (default {TrainConfig.batch_size})")
    parser.add_argument("--lr", type=float_in(0, low_open=True), default=TrainConfig.lr,
                        help=f"peak learning rate, > 0 (default {TrainConfig.lr})")
    parser.add_argument("--seed", type=int_in(0, MAX_SEED), default=TrainConfig.seed,
                        help=f"0 to 2^32-1 (default {TrainConfig.seed})")
    parser.add_argument("--threads", type=int_in(0, MAX_THREADS), default=0,
                        help=f"torch threads, 0 to {MAX_THREADS} (default 0: all cores)")
    parser.add_argument("--grad-accum", type=int_in(1, MAX_BATCH), default=TrainConfig.grad_accum,
                        help="micro-batches per step on each process; --batch-size stays the global batch and must "
                             "split into processes x GRAD_ACCUM (default 1)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=TrainConfig.amp,
                        help="bfloat16 autocast when training on GPUs (default on; CPU runs are FP32 either way)")
    parser.add_argument("--train-limit", type=int_in(1, MAX_IMAGES),
                        help="use only the first N training images, >= 1 (quick runs)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if WORKDIR/last.pt exists")
    parser.add_argument("--publish", action="store_true",
                        help="write the FP16 checkpoint, labels and training record into edge_crossformer/assets")
    args = parser.parse_args(argv)
    from .data import DataError
    from .outputs import OutputError

    # SIGTERM / SIGHUP stop training like Ctrl-C: WORKDIR/last.pt and the published files are only replaced whole.
    return run_cli(lambda: distributed.run(lambda: _train(args, argv)),
                   user_errors=(DataError, ResumeError, OutputError, distributed.DistributedError))


def _train(args: argparse.Namespace, argv: list[str] | None) -> int:
    from .data import load_fashion_mnist, preprocess
    from .outputs import check_output
    from .registry import build_model, get_config

    name = "crossformer-fmnist"
    spec = get_config(name)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads,
                      grad_accum=args.grad_accum, amp=args.amp)
    distributed.check_batch(cfg.batch_size, cfg.grad_accum)  # before minutes of loading, not after
    workdir = Path(args.workdir)
    check_output(workdir, "--workdir", directory=True, inputs={"--data": args.data})
    if not args.no_resume and (workdir / "last.pt").exists():
        read_resume_state(workdir / "last.pt")  # a damaged one is named now, not after the data is loaded
    train_x, train_y = load_fashion_mnist(args.data, "train")
    train_x, train_y = train_x[:args.train_limit], train_y[:args.train_limit]
    test_x, test_y = load_fashion_mnist(args.data, "test")
    # Kept single-channel in memory; expanded to RGB per batch (the model's contract is RGB).
    to_tensor = lambda a: preprocess(torch.from_numpy(a), spec.resize)[:, :1].contiguous()  # noqa: E731
    train_images, test_images = to_tensor(train_x), to_tensor(test_x)
    train_labels, test_labels = torch.from_numpy(train_y.astype("int64")), torch.from_numpy(test_y.astype("int64"))

    torch.manual_seed(cfg.seed)
    model = Normalized(build_model(name))
    state = fit(model, train_images, train_labels, cfg, workdir=workdir, eval_set=(test_images, test_labels),
                resume=not args.no_resume)
    final = evaluate(model, test_images, test_labels)
    print(f"Fashion-MNIST test (10k): top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%")
    if args.publish:
        _publish(model, test_images, test_labels, final, state, cfg, argv)
    return 0


def _publish(model: nn.Module, test_images: Tensor, test_labels: Tensor, final: dict, state: TrainState,
             cfg: TrainConfig, argv: list[str] | None) -> None:
    """Rank 0 writes the FP16 checkpoint, labels and training record into the package's assets; every rank scores
    the shipped weights (evaluation is shared)."""
    from safetensors.torch import save_file

    from .data import FASHION_MNIST_LABELS
    from .registry import ASSETS, build_model, get_config

    name = "crossformer-fmnist"
    spec = get_config(name)
    weights = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in model.model.state_dict().items()}
    # Score what ships: the FP16-rounded weights, loaded back as FP32.
    shipped = Normalized(build_model(name))
    shipped.model.load_state_dict({k: v.float() for k, v in weights.items()})
    shipped_acc = evaluate(shipped, test_images, test_labels)
    if not distributed.is_main():
        return
    ASSETS.mkdir(parents=True, exist_ok=True)
    with atomic_path(ASSETS / spec.bundled_checkpoint) as tmp:
        save_file(weights, str(tmp), metadata={"model": name, "dtype": "float16"})
    with atomic_path(ASSETS / spec.labels_file) as tmp:
        tmp.write_text("\n".join(FASHION_MNIST_LABELS) + "\n")
    record = {"model": name, "dataset": "Fashion-MNIST (60k train / 10k test, Debian dataset-fashion-mnist)",
              "input": {"img_size": spec.default_img_size, "resize": spec.resize},
              "train_config": asdict(cfg), "epochs_run": state.epoch, "train_seconds": round(state.seconds, 1),
              "test_top1_fp32_weights": final["top1"], "test_top1": shipped_acc["top1"],
              "test_top5": shipped_acc["top5"], "checkpoint_dtype": "float16", "history": state.history,
              "machine": machine_description(), **({"distributed": distributed.describe()}
                                                    if distributed.describe() else {}),
              "command": "python -m edge_crossformer.train " + " ".join(argv if argv is not None else sys.argv[1:])}
    with atomic_path(ASSETS / "crossformer_fmnist_training.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"published to {ASSETS} (shipped FP16 weights: top-1 {shipped_acc['top1']:.2f}%)")


if __name__ == "__main__":
    sys.exit(main())
