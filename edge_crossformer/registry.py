"""`list_models()` and `create_model()`: the public way to get a CrossFormer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .backbone import FriendlyAnySizeClassifier, FriendlyBackbone, as_hw, check_out_indices, check_range
from .checkpoint import (HEAD_KEYS, V1_BUFFERS, CheckpointError, backbone_weights, check_classifier_state, load_into,
                         read_state_dict)
from .config import VARIANTS, CrossFormerConfig
from .export_friendly import ExportFriendlyCrossFormer, Spelling, fold_norm_affine, fold_position_bias, strip_position_mlp
from .preprocessing import Normalized
from .reference import CrossFormer
from .reference_backbone import AnySizeClassifier, CrossFormerBackbone

ASSETS = Path(__file__).parent / "assets"


class ModelConfigError(ValueError):
    """An impossible model request (unknown name, bad size or class count); the message says how to fix it."""


def list_models() -> list[str]:
    return list(VARIANTS)


def get_config(name: str) -> CrossFormerConfig:
    if name not in VARIANTS:
        known = ", ".join(VARIANTS)
        close = [k for k in VARIANTS if name.lower().replace("_", "-") in k]
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ModelConfigError(f"unknown model '{name}'; known models: {known}{hint}")
    return VARIANTS[name]


def check_img_size(img_size: int) -> None:
    if not isinstance(img_size, int) or img_size < 32 or img_size % 32:
        low = max(32, (int(img_size) // 32) * 32) if isinstance(img_size, int) else 224
        high = low + 32 if low < img_size else low
        neighbours = f"{low} or {high}" if low != high else f"{low}"
        raise ModelConfigError(
            f"img_size must be a positive multiple of 32 (4x patch embedding, then three 2x merges); "
            f"got {img_size}. Nearest valid sizes: {neighbours}"
        )


def check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")


def build_model(name: str, *, img_size: int | None = None, num_classes: int | None = None,
                export_friendly: bool = False, spelling: Spelling | None = None) -> nn.Module:
    """An untrained (randomly initialised) model; `create_model` is the user-facing entry point."""
    cfg = get_config(name)
    img_size = cfg.default_img_size if img_size is None else img_size
    num_classes = cfg.default_num_classes if num_classes is None else num_classes
    check_img_size(img_size)
    check_num_classes(num_classes)
    if export_friendly or spelling is not None:
        model = ExportFriendlyCrossFormer(cfg, img_size, num_classes, spelling or Spelling())
    else:
        model = CrossFormer(cfg, img_size, num_classes)
    model.model_name = name
    return model


def default_checkpoint(name: str) -> Path | None:
    cfg = get_config(name)
    return ASSETS / cfg.bundled_checkpoint if cfg.bundled_checkpoint else None


def create_model(name: str, *, checkpoint: str | Path | None = None, img_size: int | tuple[int, int] | None = None,
                 num_classes: int | None = None, export_friendly: bool = False, reset_head: bool = False,
                 spelling: Spelling | None = None, fold: bool = True, features_only: bool = False,
                 out_indices: tuple[int, ...] = (0, 1, 2, 3), dynamic_size: tuple[int, int] | None = None) -> nn.Module:
    """A CrossFormer in eval mode: ImageNet-normalized NCHW float in, logits out.

    img_size / num_classes default to 224 / 1000 for upstream variants and to the bundled model's own values for
    `crossformer-fmnist`, whose trained weights load when no checkpoint is given. `export_friendly=True` returns the
    rewrite (same state dict, same logits) with the position bias folded to constants (`fold=False` keeps the
    MLP live, for training). `spelling` (implies the rewrite) picks how it writes its ops for one runtime
    (`export_friendly.Spelling`; each export target declares its own).

    `dynamic_size=(MIN, MAX)` without features_only: the classifier for every H x W (multiples of 32) in the
    range, as one graph (the rewrite) or its oracle (export_friendly=False).

    `features_only=True` returns the detection / segmentation backbone instead (timm's words): the stage maps in
    `out_indices` (NCHW, strides 4, 8, 16, 32), at any H x W that is a multiple of 32 for the reference, at
    `img_size` (int or (H, W)) for the rewrite, or at every size in `dynamic_size` (MIN, MAX) for a rewrite that
    serves a range. Checkpoints: mmdet / mmseg (`backbone.` prefix) or classification ones (norm and head ignored).
    """
    if spelling is not None and spelling.fold_norms and not fold:
        raise ValueError("Spelling(fold_norms=True) changes the weights for inference; it needs fold=True")
    if features_only:
        model = _backbone(name, img_size, out_indices, export_friendly or spelling is not None, spelling,
                          dynamic_size)
    elif dynamic_size is not None:
        model = _any_size_classifier(name, num_classes, export_friendly or spelling is not None, spelling,
                                     dynamic_size)
    else:
        model = build_model(name, img_size=img_size, num_classes=num_classes, export_friendly=export_friendly,
                            spelling=spelling)
    if checkpoint is None:
        checkpoint = default_checkpoint(name)
        if checkpoint is not None and not checkpoint.exists():
            raise CheckpointError(f"bundled checkpoint for {name} is missing ({checkpoint}); reinstall the package")
    # Whether --reset-head replaced the checkpoint's head (the manifest says so: its logits mean nothing yet).
    model.head_reset = False
    if checkpoint is not None:
        _load(model, read_state_dict(checkpoint), name, str(checkpoint), features_only, reset_head)
    model.eval()
    if isinstance(model, (ExportFriendlyCrossFormer, FriendlyBackbone)) and fold:
        model = fold_position_bias(model)
        if model.spelling.fold_norms:
            fold_norm_affine(model)
    return model


def deployable(model: nn.Module) -> nn.Module:
    """What an export ships of a model from `create_model`: the position MLP stripped (its folded bias is what
    runs), ImageNet normalization inside (input float in [0, 1]), eval mode. The one place it is assembled."""
    return Normalized(strip_position_mlp(model)).eval()


def _backbone(name: str, img_size, out_indices, friendly: bool, spelling: Spelling | None,
              dynamic_size: tuple[int, int] | None) -> nn.Module:
    cfg = get_config(name).backbone()
    out_indices = check_out_indices(out_indices)
    if not friendly:
        model = CrossFormerBackbone(cfg, out_indices)
    elif dynamic_size is not None:
        check_range(cfg, *dynamic_size, name=name)
        model = FriendlyBackbone(cfg, None, out_indices, spelling or Spelling())
    else:
        hw = as_hw(cfg.default_img_size if img_size is None else img_size)
        model = FriendlyBackbone(cfg, hw, out_indices, spelling or Spelling())
    model.model_name = name
    model.dynamic_size = dynamic_size
    return model


def _any_size_classifier(name: str, num_classes: int | None, friendly: bool, spelling: Spelling | None,
                         dynamic_size: tuple[int, int]) -> nn.Module:
    """The classifier for every size in dynamic_size (MIN, MAX): the rewrite, or (friendly=False) its oracle."""
    cfg = get_config(name)
    num_classes = cfg.default_num_classes if num_classes is None else num_classes
    check_num_classes(num_classes)
    check_range(cfg, *dynamic_size, name=name)
    if friendly:
        model = FriendlyAnySizeClassifier(cfg, num_classes, spelling or Spelling())
    else:
        model = AnySizeClassifier(cfg, num_classes)
    model.model_name, model.dynamic_size = name, dynamic_size
    return model


def guess_variant(state: dict[str, Tensor], exclude: str = "") -> str | None:
    """Name of the registered variant whose parameter shapes best match `state` (None if nothing is close)."""
    best, best_score = None, 0.0
    keys = {k: tuple(v.shape) for k, v in state.items() if not k.endswith(V1_BUFFERS) and k not in HEAD_KEYS}
    for name in list_models():
        with torch.device("meta"):
            candidate = build_model(name, img_size=224, num_classes=2)
        shapes = {k: tuple(v.shape) for k, v in candidate.state_dict().items() if k not in HEAD_KEYS}
        hits = sum(1 for k, s in shapes.items() if keys.get(k) == s)
        score = hits / max(len(shapes), len(keys))
        if score > best_score:
            best, best_score = name, score
    if best == exclude or best_score < 0.5:
        return None
    return best


def _load(model: nn.Module, state: dict, name: str, source: str, features_only: bool, reset_head: bool) -> None:
    if not features_only:
        check_classifier_state(state, source)
        model.head_reset = load_into(model, state, reset_head=reset_head, model_name=name, source=source,
                                     guess=lambda s: guess_variant(s, exclude=name)).head_reset
        return
    weights = backbone_weights(state)
    load_into(model, weights.state, model_name=name, source=source, guess=lambda s: guess_variant(s, exclude=name))
    # What the manifest reports: which kind of checkpoint initialised the backbone, and what of it was left out.
    model.checkpoint_kind, model.ignored_keys = weights.kind, weights.ignored
