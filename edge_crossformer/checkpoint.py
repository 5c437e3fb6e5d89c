"""Loading upstream CrossFormer checkpoints: every layout upstream and its users produce, strictly checked.

Accepted: `{"model": state_dict}` (upstream's save format), `{"state_dict": ...}`, bare state dicts, `module.`
prefixes (DataParallel), v1-branch persistent buffers (`*.attn.biases`, `*.attn.relative_position_index`, verified
against the values this model computes, then dropped), and `.safetensors`. Pickles load with `weights_only=True` only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

V1_BUFFERS = ("attn.biases", "attn.relative_position_index")
HEAD_KEYS = ("head.weight", "head.bias")
# What a classifier has and a backbone does not: the final norm and the head.
CLASSIFIER_KEYS = ("norm.weight", "norm.bias") + HEAD_KEYS
# mmdet / mmseg checkpoints (upstream's detection/ and segmentation/) keep the backbone under this prefix.
BACKBONE_PREFIX = "backbone."


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says what was wrong and how to fix it."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    dropped_v1_buffers: int = 0
    head_reset: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 3) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys (e.g. {_examples(self.missing, limit)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys (e.g. {_examples(self.unexpected, limit)})")
        if self.mismatched:
            ex = ", ".join(f"'{k}' checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} keys with other shapes (e.g. {ex})")
        return "; ".join(parts)


def _examples(keys: list[str], limit: int) -> str:
    return ", ".join(repr(k) for k in keys[:limit])


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat state dict (no model needed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; pass the path of a .pth/.pt/.safetensors file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory: {path}; pass the checkpoint file inside it")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors is a core dependency
            raise CheckpointError("reading .safetensors needs the 'safetensors' package: pip install safetensors") from e
        try:
            obj = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    else:
        with open(path, "rb") as f:
            magic = f.read(4)
        # torch.save writes a zip archive (PK..); very old checkpoints are a bare pickle (protocol byte 0x80).
        if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (expected a torch.save zip archive or a "
                                  "pickle, or a .safetensors file)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            text = str(e)
            if "Unsupported global" in text or "weights_only" in text and "GLOBAL" in text:
                raise CheckpointError(
                    f"{path} holds Python objects beyond tensors, which this tool refuses to unpickle "
                    "(torch.load(weights_only=True)). Re-save just the weights: "
                    "torch.save({'model': model.state_dict()}, 'clean.pth'), or convert to .safetensors"
                ) from e
            raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {text[:200]})") from e
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, source: str | Path = "checkpoint") -> dict[str, Tensor]:
    """Find the state dict inside the layouts upstream and common trainers write; strip `module.` prefixes."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source} does not contain a state dict (expected {{'model': state_dict}} or a dict of tensors, "
            f"got {type(obj).__name__})"
        )
    out = {}
    for k, v in obj.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    check_finite(out, source)
    return out


def check_finite(state: dict[str, Tensor], source: str | Path = "checkpoint") -> None:
    """Refuse NaN / Inf weights: they export fine and then compute nothing (a diverged run, a damaged file)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} has non-finite values (NaN or Inf) in {len(bad)} tensor(s), e.g. "
                              f"{', '.join(bad[:3])}: the training diverged or the file is damaged; export a "
                              "checkpoint from before the divergence")


@dataclass
class BackboneWeights:
    state: dict[str, Tensor]
    kind: str  # "detection / segmentation", "classification" or "backbone"
    ignored: list[str] = field(default_factory=list)


def backbone_weights(state: dict[str, Tensor]) -> BackboneWeights:
    """The backbone's weights in a detection / segmentation checkpoint (`backbone.*`; neck and head keys ignored
    and reported) or a classification one used as backbone initialisation (final norm and head ignored)."""
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        kept = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        return BackboneWeights(kept, "detection / segmentation", [k for k in state if not k.startswith(BACKBONE_PREFIX)])
    ignored = [k for k in state if k in CLASSIFIER_KEYS]
    kept = {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}
    return BackboneWeights(kept, "classification" if ignored else "backbone", ignored)


def check_classifier_state(state: dict[str, Tensor], source: str) -> None:
    """Refuse backbone-only weights for a classifier, with the way out (they have no head to give logits)."""
    n = sum(k.startswith(BACKBONE_PREFIX) for k in state)
    if n:
        raise CheckpointError(f"{source} is a detection / segmentation checkpoint ({n} keys under "
                              f"'{BACKBONE_PREFIX}', no classifier head); export its backbone with --task features "
                              "(create_model(..., features_only=True))")
    if any(k.startswith("layers.") for k in state) and not any(k in state for k in CLASSIFIER_KEYS):
        raise CheckpointError(f"{source} holds a backbone only (no final norm 'norm.*', no head 'head.*'); export "
                              "it with --task features (create_model(..., features_only=True))")


def drop_v1_buffers(state: dict[str, Tensor], model: nn.Module) -> int:
    """Check v1-branch persistent buffers against the model's own and drop them; a mismatch is an error."""
    own = dict(model.named_buffers())
    dropped = 0
    for key in [k for k in state if k.endswith(V1_BUFFERS)]:
        expected = own.get(key)
        value = state.pop(key)
        dropped += 1
        if expected is None:
            # The export-friendly model has no gather table; check against the reference geometry instead.
            expected = _reference_buffer(model, key)
        if expected is not None and (value.shape != expected.shape or not torch.equal(value.to(expected.dtype), expected)):
            raise CheckpointError(
                f"v1 buffer '{key}' has shape {list(value.shape)} but this model at "
                f"img_size={getattr(model, 'img_size', None)} "
                f"expects {list(expected.shape)} with other values: the checkpoint was built for another group "
                "size or input size. Pass the --img-size it was trained at"
            )
    return dropped


def _reference_buffer(model: nn.Module, key: str) -> Tensor | None:
    from .reference import relative_offsets, relative_position_index

    attn = model.get_submodule(key.rsplit(".", 1)[0])
    group = getattr(attn, "group", None) or getattr(attn, "group_size", None)
    if group is None:
        return None
    return relative_offsets(group) if key.endswith("biases") else relative_position_index(group)


def compare(state: dict[str, Tensor], model: nn.Module) -> LoadReport:
    expected = model.state_dict()
    report = LoadReport()
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    report.mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                         if k in state and state[k].shape != v.shape]
    return report


def load_into(model: nn.Module, state: dict[str, Tensor], *, reset_head: bool = False,
              model_name: str = "", source: str = "checkpoint",
              guess: Callable[[dict[str, Tensor]], str | None] | None = None) -> LoadReport:
    """Strictly load `state` into `model`; raise CheckpointError with a readable report and, where `guess` names
    the variant the state fits better (edge_crossformer.registry.guess_variant), a hint."""
    state = dict(state)
    dropped = drop_v1_buffers(state, model)
    report = compare(state, model)
    report.dropped_v1_buffers = dropped
    head_mismatch = [m for m in report.mismatched if m[0] in HEAD_KEYS]
    if head_mismatch and len(head_mismatch) == len(report.mismatched) and not (report.missing or report.unexpected):
        ckpt_classes, model_classes = head_mismatch[0][1][0], head_mismatch[0][2][0]
        if not reset_head:
            raise CheckpointError(
                f"{source} has a {ckpt_classes}-class head but the model was asked for {model_classes} classes; "
                f"pass num_classes={ckpt_classes} (--num-classes {ckpt_classes}), or reset_head=True "
                "(--reset-head) to start a fresh head for fine-tuning"
            )
        warnings.warn(f"{source}: {ckpt_classes}-class head dropped; the new {model_classes}-class head is "
                      f"initialised from seed {HEAD_SEED} and must be trained before its logits mean anything",
                      stacklevel=3)
        for key in HEAD_KEYS:
            state.pop(key, None)
        report = compare(state, model)
        report.missing = [k for k in report.missing if k not in HEAD_KEYS]
        report.dropped_v1_buffers = dropped
        report.head_reset = True
    if not report.ok:
        hint = guess(state) if guess else None
        msg = f"{source} does not fit {model_name or 'this model'}: {report.describe()}"
        if hint:
            msg += f"; is this a {hint} checkpoint? try --model {hint}"
        raise CheckpointError(msg)
    model.load_state_dict(state, strict=not report.head_reset)
    if report.head_reset:
        seed_head(model)
    return report


# A reset head is drawn from this seed, not from the global RNG: every model built from one checkpoint with
# --reset-head (the parity reference, each exported spelling, a re-export) gets the same head.
HEAD_SEED = 0


def seed_head(model: nn.Module) -> None:
    """Upstream's head initialisation (truncated normal, std 0.02; zero bias), from HEAD_SEED."""
    generator = torch.Generator().manual_seed(HEAD_SEED)
    with torch.no_grad():
        weight = torch.randn(model.head.weight.shape, generator=generator).clamp_(-2.0, 2.0) * 0.02
        model.head.weight.copy_(weight)
        model.head.bias.zero_()


# The ranges an XNNPACK-scheme QAT run (quantize.qat) learned are kept beside its checkpoint, under this suffix.
RANGES_SUFFIX = ".ranges.safetensors"


def ranges_path(checkpoint: Path) -> Path:
    """Where the XNNPACK-scheme QAT keeps the ranges it learned, beside the checkpoint."""
    return Path(checkpoint).with_suffix(RANGES_SUFFIX)


def learned_ranges_file(checkpoint: Path | None) -> Path | None:
    """The ranges file an XNNPACK-scheme QAT run left beside `checkpoint`, or None."""
    path = ranges_path(checkpoint) if checkpoint is not None else None
    return path if path is not None and path.is_file() else None
