"""Training loop (used for the bundled Fashion-MNIST model and, through `quantize`, for QAT fine-tuning).

`python -m edge_crossformer.train` trains `crossformer-fmnist` from scratch on the Fashion-MNIST files of the Debian
package `dataset-fashion-mnist`, resumably, and with `--publish` writes the FP16 checkpoint, labels and training
record that ship in `edge_crossformer/assets/`.
"""

from __future__ import annotations

import argparse
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

from .cli import MAX_BATCH, MAX_SEED, MAX_THREADS, float_in, int_in, run_cli
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
    """top-1 / top-5 accuracy (%) of `model` (taking [0, 1] RGB input) on a labelled set."""
    model.eval()
    top1 = top5 = 0
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size].expand(-1, 3, -1, -1))
        y = labels[i:i + batch_size]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(dim=1).sum().item()
    n = len(images)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}


def fit(model: nn.Module, images: Tensor, labels: Tensor, cfg: TrainConfig, *, workdir: Path,
        eval_set: tuple[Tensor, Tensor] | None = None, resume: bool = True,
        on_epoch: Callable[[TrainState], None] | None = None,
        loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> TrainState:
    """Train `model` ([0, 1] RGB in, logits out) with AdamW + cosine; resumable from `workdir/last.pt`.

    The resume file is replaced atomically at the end of every epoch, so an interrupted run loses at most the epoch
    in progress and never leaves a half-written file. `loss_fn(logits, x, labels)` replaces the label-smoothed
    cross-entropy (QAT distils from the float model with it).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    state = TrainState()
    gen = torch.Generator().manual_seed(cfg.seed)
    last = workdir / "last.pt"
    if resume and last.exists():
        saved = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        state = TrainState(saved["epoch"], json.loads(saved["history"]), float(saved["seconds"]))
        print(f"resuming from {last} at epoch {state.epoch}/{cfg.epochs}")
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
                x = augment(images[idx], cfg, gen).expand(-1, 3, -1, -1)
                step = state.epoch * steps_per_epoch + s
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, warmup, cfg)
                logits = model(x)
                loss = (loss_fn(logits, x, labels[idx]) if loss_fn is not None
                        else F.cross_entropy(logits, labels[idx], label_smoothing=cfg.label_smoothing))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                loss_sum += loss.item()
                bar.update(task, advance=1, description=f"epoch {state.epoch + 1}/{cfg.epochs} loss {loss.item():.3f}")
            state.epoch += 1
            state.seconds += time.time() - started
            record = {"epoch": state.epoch, "loss": loss_sum / steps_per_epoch, "seconds": round(state.seconds, 1)}
            if eval_set is not None:
                record.update({f"test_{k}": v for k, v in evaluate(model, *eval_set).items() if k != "n"})
            state.history.append(record)
            bar.console.print(json.dumps(record))
            with atomic_path(last) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                            "epoch": state.epoch, "history": json.dumps(state.history),
                            "seconds": torch.tensor(state.seconds)}, tmp)
            if on_epoch is not None:
                on_epoch(state)
    return state


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
    parser.add_argument("--no-resume", action="store_true", help="start over even if WORKDIR/last.pt exists")
    parser.add_argument("--publish", action="store_true",
                        help="write the FP16 checkpoint, labels and training record into edge_crossformer/assets")
    args = parser.parse_args(argv)
    from .data import DataError

    # SIGTERM / SIGHUP stop training like Ctrl-C: WORKDIR/last.pt and the published files are only replaced whole.
    return run_cli(lambda: _train(args, argv), user_errors=(DataError,))


def _train(args: argparse.Namespace, argv: list[str] | None) -> int:
    from .data import FASHION_MNIST_LABELS, load_fashion_mnist, preprocess
    from .registry import ASSETS, build_model, get_config

    name = "crossformer-fmnist"
    spec = get_config(name)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads)
    train_x, train_y = load_fashion_mnist(args.data, "train")
    test_x, test_y = load_fashion_mnist(args.data, "test")
    # Kept single-channel in memory; expanded to RGB per batch (the model's contract is RGB).
    to_tensor = lambda a: preprocess(torch.from_numpy(a), spec.resize)[:, :1].contiguous()  # noqa: E731
    train_images, test_images = to_tensor(train_x), to_tensor(test_x)
    train_labels, test_labels = torch.from_numpy(train_y.astype("int64")), torch.from_numpy(test_y.astype("int64"))

    torch.manual_seed(cfg.seed)
    model = Normalized(build_model(name))
    workdir = Path(args.workdir)
    state = fit(model, train_images, train_labels, cfg, workdir=workdir, eval_set=(test_images, test_labels),
                resume=not args.no_resume)
    final = evaluate(model, test_images, test_labels)
    print(f"Fashion-MNIST test (10k): top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%")
    if args.publish:
        from safetensors.torch import save_file

        ASSETS.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().to(torch.float16).contiguous() for k, v in model.model.state_dict().items()}
        with atomic_path(ASSETS / spec.bundled_checkpoint) as tmp:
            save_file(weights, str(tmp), metadata={"model": name, "dtype": "float16"})
        # Score what ships: the FP16-rounded weights, loaded back as FP32.
        shipped = Normalized(build_model(name))
        shipped.model.load_state_dict({k: v.float() for k, v in weights.items()})
        shipped_acc = evaluate(shipped, test_images, test_labels)
        with atomic_path(ASSETS / spec.labels_file) as tmp:
            tmp.write_text("\n".join(FASHION_MNIST_LABELS) + "\n")
        record = {"model": name, "dataset": "Fashion-MNIST (60k train / 10k test, Debian dataset-fashion-mnist)",
                  "input": {"img_size": spec.default_img_size, "resize": spec.resize},
                  "train_config": asdict(cfg), "epochs_run": state.epoch, "train_seconds": round(state.seconds, 1),
                  "test_top1_fp32_weights": final["top1"], "test_top1": shipped_acc["top1"],
                  "test_top5": shipped_acc["top5"], "checkpoint_dtype": "float16", "history": state.history,
                  "machine": machine_description(),
                  "command": "python -m edge_crossformer.train " + " ".join(argv if argv is not None else sys.argv[1:])}
        with atomic_path(ASSETS / "crossformer_fmnist_training.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        print(f"published to {ASSETS} (shipped FP16 weights: top-1 {shipped_acc['top1']:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
