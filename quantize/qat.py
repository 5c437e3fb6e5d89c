"""Quantization-aware fine-tuning (`python -m quantize qat`), simulating the INT8 scheme of the target it is for.

What is fine-tuned is what ships: the export-friendly model (position bias folded to constants) behind the in-graph
normalization, with fake-quantizers where the target's post-training INT8 puts them. Two schemes, because the
targets quantize different points of the graph:

- "nncf" (OpenVINO, ONNX Runtime): `nncf.quantize` with the transformer recipe of post-training INT8 (symmetric
  per-channel weights, per-tensor activations, LayerNorm / residual adds / softmax in float); NNCF's fake-quantizers
  start from calibration statistics and train together with the weights.
- "xnnpack" (ExecuTorch XNNPACK, Core ML W8A8): the PT2E graph of the ExecuTorch export (LayerNorm decomposed) with
  XNNPACK's quantizer in QAT mode over the same scope as post-training INT8 (linears, convs, residual adds: the
  residual stream is INT8 there, which the NNCF scheme does not simulate). Activation ranges either start at
  post-training INT8's and stay there ("calibrated", the default) or follow moving averages ("learned").
  Measured on crossformer-fmnist (ExecuTorch, 10k test images, drop vs FP32): "nncf" scheme 0.30 pp; "xnnpack"
  learned 0.28 pp; "xnnpack" calibrated 0.21 pp (seeds 1, 2: 0.16, 0.33; post-training INT8: 0.15 pp).

The result is a plain float checkpoint in upstream's layout (safetensors) whose weights have learned to sit well on
the target's INT8 grid, and a JSON record beside it that names the scheme and the targets it was trained for. The
target's INT8 export recalibrates on the fine-tuned weights (with calibrated ranges that reproduces the ranges
trained with, plus NNCF's bias correction), except after "learned" ranges: those are written beside the checkpoint
(`<name>.ranges.safetensors`) and the ExecuTorch export uses them, because the weights co-adapt with them (measured:
a 2-epoch run scored 91.77% with its own ranges, 91.17% in float, 91.11% on ExecuTorch after recalibration).
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

from edge_crossformer import distributed
from edge_crossformer.preprocessing import Normalized
from edge_crossformer.train import TrainConfig, TrainState, evaluate, fit, machine_description
from edge_crossformer.checkpoint import ranges_path
from edge_crossformer.files import atomic_files

from .ptq import QuantOptions, _advanced, _ignored, _nncf

NNCF_HOOK_PREFIX = "__nncf_hooks"
# The INT8 schemes QAT simulates (see the module docstring); which target uses which is edge_crossformer.targets' to say.
SCHEMES = ("nncf", "xnnpack")
FAKE_QUANT_PREFIX = "activation_post_process_"


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
    # Fake-quantization is simulated in FP32 (bfloat16 would round the very values INT8 is fitted to).
    amp: bool = False


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


class PT2EQAT(nn.Module):
    """A PT2E graph with XNNPACK fake-quantizers that trains like a module: `train()` lets the range observers
    follow the training batches (except the `frozen` ones), `eval()` freezes them all (evaluation must not move
    the ranges)."""

    def __init__(self, graph: nn.Module, frozen: tuple[str, ...] = ()):
        super().__init__()
        self.graph = graph
        self.frozen = frozen

    def forward(self, x: Tensor) -> Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> "PT2EQAT":
        from torchao.quantization.pt2e import disable_observer, enable_observer

        super().train(mode)
        self.graph.apply(enable_observer if mode else disable_observer)
        for name in self.frozen:
            getattr(self.graph, name).disable_observer()
        return self


def _calibrated_activation_ranges(model: nn.Module, calibration: Tensor) -> dict[str, tuple[float, int]]:
    """Post-training INT8's activation (scale, zero point) per producing node, from NNCF's quantize_pt2e with the
    same XNNPACK quantizer: QAT starts where post-training INT8 is, not from plain min / max."""
    from .ptq import QuantOptions, calibration_list, quantize_pt2e

    example = calibration[:1].expand(-1, 3, -1, -1).contiguous()
    graph = quantize_pt2e(model, example, calibration_list(calibration.expand(-1, 3, -1, -1)),
                          QuantOptions(subset_size=len(calibration)))
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    found = {}
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target == quantize and node.args[0].op == "call_function":
            found[node.args[0].name] = (float(node.args[1]), int(node.args[2]))
    return found


def _freeze_to(fake_quant: nn.Module, scale: float, zero_point: int) -> None:
    """Set a fake-quantizer (and its observer, which convert_pt2e reads) to exactly (scale, zero_point)."""
    observer = fake_quant.activation_post_process
    qmin, qmax = fake_quant.quant_min, fake_quant.quant_max
    observer.min_val.fill_((qmin - zero_point) * scale)
    observer.max_val.fill_((qmax - zero_point) * scale)
    fake_quant.scale.fill_(scale)
    fake_quant.zero_point.fill_(zero_point)
    fake_quant.disable_observer()


def prepare_qat_xnnpack(model: nn.Module, calibration: Tensor, batch: int = 32,
                        calibrated: bool = False) -> PT2EQAT:
    """`model` ([0, 1] RGB in; LayerNorm decomposed, as ExecuTorch exports it) -> trainable PT2E graph with
    XNNPACK's QAT fake-quantizers over post-training INT8's scope, ranges initialised on `calibration`:
    moving-average min / max, or (`calibrated`) post-training INT8's activation ranges, frozen."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .ptq import xnnpack_quantizer

    model.eval()
    # Traced at batch 2 with the batch dimension dynamic (batch 1 would specialise it): training runs batches.
    example = calibration[:1].expand(2, 3, -1, -1).contiguous()
    graph = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},))
    prepared = prepare_qat_pt2e(graph.module(), xnnpack_quantizer(qat=True))
    allow_exported_model_train_eval(prepared)
    qat = PT2EQAT(prepared).train()
    with torch.no_grad():
        for i in range(0, len(calibration), batch):
            qat(calibration[i:i + batch].expand(-1, 3, -1, -1))
    if calibrated:
        ranges = _calibrated_activation_ranges(model, calibration)
        frozen = []
        for node in prepared.graph.nodes:
            if node.op == "call_module" and node.target.startswith(FAKE_QUANT_PREFIX) and node.args[0].name in ranges:
                _freeze_to(getattr(prepared, node.target), *ranges[node.args[0].name])
                frozen.append(node.target)
        if len(frozen) < len(ranges):
            raise QATError(f"post-training ranges matched {len(frozen)} of {len(ranges)} activation quantizers")
        qat.frozen = tuple(frozen)
    return qat.eval()


def synchronise_ranges(qat: PT2EQAT) -> None:
    """Under torchrun, each rank's learned (moving-average) activation ranges follow its own batches: average the
    observed min / max over the ranks and recompute scale and zero point from them, so that every rank evaluates,
    checkpoints and saves one set of ranges. Frozen (calibrated) ranges and per-channel weight ranges (computed
    from weights that are the same everywhere) are left alone."""
    if distributed.world_size() == 1:
        return
    with torch.no_grad():
        for name, fq in qat.graph.named_children():
            observer = getattr(fq, "activation_post_process", None)
            if name in qat.frozen or observer is None or observer.min_val.numel() != 1:
                continue
            distributed.average_([observer.min_val, observer.max_val])
            scale, zero_point = fq.calculate_qparams()
            fq.scale.resize_(scale.shape).copy_(scale)
            fq.zero_point.resize_(zero_point.shape).copy_(zero_point)


def learned_ranges(qat: PT2EQAT) -> dict[str, Tensor]:
    """The fake-quantizers' state (observed ranges, scales, zero points) of a trained PT2E QAT graph."""
    return {k: v.detach().clone().contiguous() for k, v in qat.graph.state_dict().items()
            if k.startswith(FAKE_QUANT_PREFIX)}


def convert_with_ranges(model: nn.Module, ranges_file: Path, example: Tensor) -> torch.fx.GraphModule:
    """INT8 quantize / dequantize graph of `model` (the float model holding the QAT weights, LayerNorm decomposed)
    with the ranges learned in QAT instead of freshly calibrated ones: what ExecuTorch lowers to XNNPACK."""
    from safetensors.torch import load_file
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    ranges = load_file(str(ranges_file))
    qat = prepare_qat_xnnpack(model, example)
    expected = set(learned_ranges(qat))
    if set(ranges) != expected:
        raise QATError(f"the QAT ranges in {ranges_file} do not fit this model ({len(ranges)} tensors, the model's "
                       f"XNNPACK graph has {len(expected)}): export with the model, image size and checkpoint the "
                       "QAT run used, or delete the ranges file to recalibrate")
    qat.graph.load_state_dict(ranges, strict=False)
    return convert_pt2e(qat.graph)


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


def float_weights(qat_model: nn.Module, start: dict[str, Tensor]) -> dict[str, Tensor]:
    """The fine-tuned float weights in upstream's key layout (quantizer state and wrappers dropped); `start` (the
    float model's state dict) supplies what the quantized graph does not hold (e.g. the folded position MLP)."""
    if isinstance(qat_model, PT2EQAT):
        trained = {k.removeprefix("graph.model."): v for k, v in qat_model.named_parameters()
                   if k.startswith("graph.model.")}
    else:
        inner = qat_model.model if isinstance(qat_model, Normalized) else qat_model
        trained = {k: v for k, v in inner.state_dict().items()
                   if not k.startswith(NNCF_HOOK_PREFIX) and NNCF_HOOK_PREFIX not in k}
    unknown = sorted(set(trained) - set(start))
    if unknown:
        raise QATError(f"fine-tuned weights not in the model's state dict: {unknown[:5]}")
    return {k: trained.get(k, v).detach().float().contiguous().clone() for k, v in start.items()}


def calibration_subset(images: Tensor, size: int) -> Tensor:
    """`size` images spread evenly over the set (the set is ordered by nothing in particular, classes included)."""
    if size <= 0:
        raise QATError(f"--calib-size must be positive, got {size}")
    step = max(1, len(images) // size)
    return images[::step][:size]


def _method(scheme: str, ranges: str) -> str:
    if scheme == "nncf":
        return "NNCF quantization-aware training (nncf.quantize, ModelType.TRANSFORMER, fake-quantizers trained)"
    return ("PT2E quantization-aware training (prepare_qat_pt2e, XNNPACKQuantizer is_qat over linears, convs and "
            "residual adds; " + ("activation ranges fixed at post-training INT8's)" if ranges == "calibrated" else
                                 "moving-average activation ranges, exported)"))


def run_qat(model: nn.Module, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], cfg: QATConfig, *,
            workdir: Path, output: Path, opts: QuantOptions | None = None, resume: bool = True,
            meta: dict | None = None, scheme: str = "nncf", ranges: str = "calibrated") -> dict:
    """Fine-tune `model` (a [0, 1]-input module, e.g. `Normalized(export-friendly model)`) with INT8 simulated the
    way `scheme` ("nncf" or "xnnpack", see SCHEMES) quantizes; `meta` goes into the record (the command line
    puts the model, the data and the targets the scheme serves there).

    Writes `output` (float safetensors) and `output` with suffix `.json` (the record) atomically, only at the end;
    `workdir/last.pt` carries the resumable state between epochs. Returns the record.
    """
    opts = opts or QuantOptions(subset_size=cfg.calib_size)
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if scheme not in SCHEMES:
        raise QATError(f"unknown QAT scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    fp32 = evaluate(model, *val)
    teacher = copy.deepcopy(model).eval() if cfg.distill > 0 else None
    inner = model.model if isinstance(model, Normalized) else model
    start = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
    calibration = calibration_subset(train[0], cfg.calib_size)
    if scheme == "xnnpack":
        qmodel = prepare_qat_xnnpack(model, calibration, calibrated=ranges == "calibrated")
    else:
        qmodel = prepare_qat(model, calibration, opts)
    # Every rank built its quantizers the same way; rank 0's are broadcast and checked identical all the same
    # (on the rank's device: NCCL moves GPU tensors only).
    qmodel.to(distributed.device())
    shared = distributed.share_start(qmodel, "model weights and quantizers", extra=repr(getattr(qmodel, "frozen", ())))
    int8_before = evaluate(qmodel, *val)
    print(f"before QAT on {fp32['n']} images: FP32 top-1 {fp32['top1']:.2f}%, simulated INT8 {int8_before['top1']:.2f}%")
    state: TrainState = fit(qmodel, train[0], train[1], cfg, workdir=workdir, eval_set=val,
                            resume=resume, loss_fn=distillation_loss(teacher, cfg) if teacher is not None else None,
                            sync_state=(lambda: synchronise_ranges(qmodel)) if isinstance(qmodel, PT2EQAT) else None)
    int8_after = evaluate(qmodel, *val)
    weights = float_weights(qmodel.cpu(), start)
    saved = learned_ranges(qmodel) if isinstance(qmodel, PT2EQAT) and ranges == "learned" else None
    if distributed.world_size() > 1:  # one set of weights and ranges, whichever rank would write them
        shared["weights_sha256"] = distributed.check_identical(
            distributed.digest({**weights, **(saved or {})}), "fine-tuned weights and ranges",
            "the ranks drifted apart; rerun with --no-resume and report it")
    record = {
        "method": _method(scheme, ranges), "scheme": scheme,
        **({"ranges": ranges} if scheme == "xnnpack" else {}),
        **(meta or {}),
        "qat_config": asdict(cfg),
        "quant_options": asdict(opts),
        "train_images": int(len(train[0])), "val_images": int(fp32["n"]),
        "val_top1_fp32_start": fp32["top1"], "val_top1_int8_simulated_start": int8_before["top1"],
        "val_top1_int8_simulated_end": int8_after["top1"], "val_top5_int8_simulated_end": int8_after["top5"],
        "epochs_run": state.epoch, "train_seconds": round(state.seconds, 1),
        "wall_seconds": round(time.time() - started, 1), "history": state.history,
        "machine": machine_description(),
        **({"distributed": {**distributed.describe(), **shared}} if distributed.world_size() > 1 else {}),
    }
    if not distributed.is_main():
        return record
    _publish(output, weights, record, saved, scheme, str((meta or {}).get("model", "")))
    print(f"after QAT: simulated INT8 top-1 {int8_after['top1']:.2f}% "
          f"(FP32 start {fp32['top1']:.2f}%); wrote {output}")
    return record


def _publish(output: Path, weights: dict, record: dict, ranges: dict | None, scheme: str, model: str) -> None:
    """The checkpoint, its record and its ranges (XNNPACK learned ranges) replaced together: a signal in between
    must not leave new weights beside an old record, or old ranges beside new weights."""
    from safetensors.torch import save_file

    files = [output, output.with_suffix(".json")] + ([ranges_path(output)] if ranges is not None else [])
    # A ranges file from an earlier XNNPACK run would not fit the new weights: it goes with the renames.
    with atomic_files(*files, stale=() if ranges is not None else (ranges_path(output),)) as temps:
        save_file(weights, str(temps[0]), metadata={"model": model, "dtype": "float32", "qat": scheme})
        temps[1].write_text(json.dumps(record, indent=2) + "\n")
        if ranges is not None:
            save_file(ranges, str(temps[2]), metadata={"scheme": scheme, "checkpoint": output.name})
