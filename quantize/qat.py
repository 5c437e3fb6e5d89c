"""Quantization-aware fine-tuning through NNCF (`python -m quantize qat`).

What is fine-tuned is what ships: the export-friendly model (position bias folded to constants) behind the in-graph
normalization, quantized by `nncf.quantize` with the same transformer recipe as post-training INT8 (symmetric
per-channel weights, per-tensor activations, LayerNorm / residual adds / softmax left in float, SmoothQuant off). Its
fake-quantizers start from calibration statistics and then train together with the weights on labelled images.

The result is a plain float checkpoint in upstream's layout (safetensors) whose weights have learned to sit well on
the INT8 grid. Every target's INT8 export takes it as `--checkpoint` and recalibrates its own ranges on it, so one QAT
run serves ONNX Runtime, OpenVINO, ExecuTorch and Core ML alike.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_crossformer.preprocessing import Normalized
from edge_crossformer.train import TrainConfig, TrainState, evaluate, fit, machine_description
from edge_crossformer.util import atomic_path

from .ptq import QuantOptions, _advanced, _ignored, _nncf

NNCF_HOOK_PREFIX = "__nncf_hooks"


class QATError(ValueError):
    """Bad QAT input (data, checkpoint, classes); the message says what to change."""


@dataclass
class QATConfig(TrainConfig):
    """The training loop's settings with QAT's defaults, plus distillation and quantizer initialisation."""
    epochs: int = 1
    batch_size: int = 128
    # Small and decaying: QAT starts from a trained model and must not forget it.
    lr: float = 2e-5
    min_lr: float = 1e-6
    weight_decay: float = 0.01
    warmup_epochs: float = 0.1
    # Weight of distillation from the float model (KL divergence of the softmaxes at this temperature) against the
    # labels' cross-entropy: QAT's job is to keep the INT8 model computing what the float model computes. Measured
    # on crossformer-fmnist (10k test images, drop vs FP32, ONNX / OpenVINO / ExecuTorch): labels only, 2 epochs at
    # 5e-5: 0.14 / 0.10 / 0.20 pp; half distillation, same schedule: 0.15 / 0.13 / 0.24 pp; distillation only, 1
    # epoch at 2e-5 (the default): 0.10 / 0.03 / 0.30 pp, with the highest agreement with FP32 on all three.
    distill: float = 1.0
    temperature: float = 2.0
    calib_size: int = 300


def _use_cpu_extension_safely() -> None:
    """NNCF compiles a small C++ extension for its CPU fake-quantizers on first use.

    Two things make that fragile on small machines: a 60 s default time limit (a 2-core machine under load can need
    more) and a lock file that a killed build leaves behind, which makes every later run wait for the limit and fail.
    Raise the limit and clear a stale lock; without a compiler NNCF falls back to plain torch ops by itself.
    """
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader

    lock = Path(QuantizedFunctionsCPULoader.get_build_dir()) / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > 900:
        lock.unlink(missing_ok=True)


def prepare_qat(model: nn.Module, calibration: Tensor, opts: QuantOptions) -> nn.Module:
    """Insert NNCF fake-quantizers into `model` ([0, 1] RGB in, logits out), initialised from `calibration`.

    Deterministic for the same model and calibration images, which is what lets an interrupted run resume: the
    resumed process rebuilds the same quantized structure and loads the saved quantizer and weight values into it.
    """
    nncf = _nncf()
    _use_cpu_extension_safely()
    model.eval()
    samples = [calibration[i:i + 1] for i in range(len(calibration))]
    return nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(samples), ignored_scope=_ignored(opts),
                         fast_bias_correction=opts.fast_bias_correction, advanced_parameters=_advanced(opts))


def distillation_loss(teacher: nn.Module, cfg: QATConfig):
    """(logits, x, labels) -> (1 - a) * CE(labels) + a * T^2 * KL(teacher || student) at temperature T."""
    t, a = cfg.temperature, cfg.distill

    def loss(logits: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            target = F.softmax(teacher(x) / t, dim=1)
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * t * t
        ce = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        return (1 - a) * ce + a * kl

    return loss


def float_weights(qat_model: nn.Module) -> dict[str, Tensor]:
    """The fine-tuned float weights in upstream's key layout (NNCF's quantizer state and the wrapper dropped)."""
    inner = qat_model.model if isinstance(qat_model, Normalized) else qat_model
    return {k: v.detach().float().contiguous().clone() for k, v in inner.state_dict().items()
            if not k.startswith(NNCF_HOOK_PREFIX) and NNCF_HOOK_PREFIX not in k}


def calibration_subset(images: Tensor, size: int) -> Tensor:
    """`size` images spread evenly over the set (the set is ordered by nothing in particular, classes included)."""
    if size <= 0:
        raise QATError(f"--calib-size must be positive, got {size}")
    step = max(1, len(images) // size)
    return images[::step][:size]


def run_qat(model: nn.Module, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], cfg: QATConfig, *,
            workdir: Path, output: Path, opts: QuantOptions | None = None, resume: bool = True,
            meta: dict | None = None) -> dict:
    """Fine-tune `model` (a [0, 1]-input module, e.g. `Normalized(export-friendly model)`) with INT8 simulated.

    Writes `output` (float safetensors) and `output` with suffix `.json` (the record) atomically, only at the end;
    `workdir/last.pt` carries the resumable state between epochs. Returns the record.
    """
    from safetensors.torch import save_file

    opts = opts or QuantOptions(subset_size=cfg.calib_size)
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    fp32 = evaluate(model, *val)
    teacher = copy.deepcopy(model).eval() if cfg.distill > 0 else None
    qmodel = prepare_qat(model, calibration_subset(train[0], cfg.calib_size), opts)
    int8_before = evaluate(qmodel, *val)
    print(f"before QAT on {fp32['n']} images: FP32 top-1 {fp32['top1']:.2f}%, simulated INT8 {int8_before['top1']:.2f}%")
    state: TrainState = fit(qmodel, train[0], train[1], cfg, workdir=workdir, eval_set=val,
                            resume=resume, loss_fn=distillation_loss(teacher, cfg) if teacher is not None else None)
    int8_after = evaluate(qmodel, *val)
    weights = float_weights(qmodel)
    record = {
        "method": "NNCF quantization-aware training (nncf.quantize, ModelType.TRANSFORMER, fake-quantizers trained)",
        **(meta or {}),
        "qat_config": asdict(cfg),
        "quant_options": asdict(opts),
        "train_images": int(len(train[0])), "val_images": int(fp32["n"]),
        "val_top1_fp32_start": fp32["top1"], "val_top1_int8_simulated_start": int8_before["top1"],
        "val_top1_int8_simulated_end": int8_after["top1"], "val_top5_int8_simulated_end": int8_after["top5"],
        "epochs_run": state.epoch, "train_seconds": round(state.seconds, 1),
        "wall_seconds": round(time.time() - started, 1), "history": state.history,
        "machine": machine_description(),
    }
    with atomic_path(output) as tmp:
        save_file(weights, str(tmp), metadata={"model": str((meta or {}).get("model", "")), "dtype": "float32",
                                               "qat": "nncf"})
    with atomic_path(output.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"after QAT: simulated INT8 top-1 {int8_after['top1']:.2f}% "
          f"(FP32 start {fp32['top1']:.2f}%); wrote {output}")
    return record
