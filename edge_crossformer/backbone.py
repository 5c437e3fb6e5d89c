"""CrossFormer as a detection / segmentation backbone, export-friendly, at one size or at every size in a range.

The folded position bias of a block depends only on its group size, never on the image size; what changes with
the size is the padding of each token grid to a multiple of group (x interval) and the mask over the padded keys.
A fixed-size backbone folds both into one constant per block (like the classifier); a backbone that serves a range
of sizes (`dynamic=True`) keeps the bias constant and computes padding and mask from the input's shape in the
graph (`export_friendly.traced_padding_mask`): rank <= 4, no gather, same numbers.

One size rule limits the range: where a stage's grid is not larger than its group, upstream switches that block to
one group of the whole (padded) map, a group size whose bias is another constant. A range therefore starts where
every stage's grid is larger than its group (`min_dynamic_size`: 256 for G 7, the stage-4 grid being 8 there).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from torch import Tensor, nn

from .config import CrossFormerConfig
from .export_friendly import (ChannelConcatEmbed, ChannelConcatMerging, ExportLayerNorm, FriendlyBlock, Spelling,
                              export_norms)
from .reference import check_image
from .reference_backbone import STRIDES

STAGES = len(STRIDES)


class BackboneConfigError(ValueError):
    """An impossible backbone request (size, range or out_indices); the message says how to fix it."""


def as_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; each a positive multiple of 32."""
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 32 and v % 32 == 0 for v in hw):
        raise BackboneConfigError(f"img_size must be an int or (H, W), each a positive multiple of 32 (strides 4, 8, "
                                  f"16, 32); got {img_size!r}")
    return hw


def check_out_indices(out_indices: Sequence[int]) -> tuple[int, ...]:
    out = tuple(out_indices)
    if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in out):
        raise BackboneConfigError(f"out_indices must be integers (stage indices in 0..{STAGES - 1}); got {list(out)}")
    out = tuple(int(i) for i in out)
    if not out or len(set(out)) != len(out) or not all(0 <= i < STAGES for i in out):
        raise BackboneConfigError(f"out_indices must be distinct stage indices in 0..{STAGES - 1} (strides "
                                  f"{', '.join(map(str, STRIDES))}); got {list(out)}")
    return tuple(sorted(out))


def min_dynamic_size(cfg: CrossFormerConfig) -> int:
    """Smallest side (a multiple of 32) at which every stage's token grid is larger than its group."""
    need = max((g + 1) * stride for g, stride in zip(cfg.group_size, STRIDES))
    return -(-need // 32) * 32


def check_range(cfg: CrossFormerConfig, low: int, high: int, name: str = "this model") -> None:
    for v in (low, high):
        if not isinstance(v, int) or v < 32 or v % 32:
            raise BackboneConfigError(f"dynamic size bounds must be positive multiples of 32; got {low} {high}")
    if low > high:
        raise BackboneConfigError(f"dynamic size range {low}-{high} is empty: give MIN <= MAX")
    floor = min_dynamic_size(cfg)
    if low < floor:
        raise BackboneConfigError(
            f"{name} serves one artifact only for sides >= {floor}: below that a stage's grid is not larger than "
            f"its group ({list(cfg.group_size)}) and the block switches to another group size. Use --dynamic-size "
            f"{floor} {max(high, floor)}, or export the smaller sizes as fixed-size artifacts (--img-size H W)")


class FriendlyStage(nn.Module):
    """One stage of the export-friendly backbone; returns (its map in NCHW, the merged tokens for the next)."""

    def __init__(self, cfg: CrossFormerConfig, index: int, grid: tuple[int, int] | None, spelling: Spelling):
        super().__init__()
        dim, depth = cfg.embed_dim * 2 ** index, cfg.depths[index]
        self.blocks = nn.ModuleList(
            FriendlyBlock(dim, grid, cfg.num_heads[index], cfg.group_size[index], cfg.interval[index],
                          lsda_flag=i % 2, mlp_ratio=cfg.mlp_ratio,
                          use_extra_conv=cfg.use_acl and (i + 1) % 3 == 0 and i < depth - 1, spelling=spelling)
            for i in range(depth)
        )
        last = index == STAGES - 1
        self.downsample = None if last else ChannelConcatMerging(0, dim, cfg.merge_size[index])

    def forward(self, x: Tensor, h, w) -> tuple[Tensor, Tensor]:
        for blk in self.blocks:
            x = blk(x, h, w)
        b, _, c = x.shape
        feat = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return feat, (x if self.downsample is None else self.downsample(x, h, w))


class FriendlyBackbone(nn.Module):
    """Drop-in for `reference_backbone.CrossFormerBackbone` (same state dict, same maps): a tuple of the stage maps
    in `out_indices`, NCHW. `img_size` (H, W) fixes the size; None serves every size (see the module docstring)."""

    def __init__(self, cfg: CrossFormerConfig, img_size: tuple[int, int] | None,
                 out_indices: tuple[int, ...] = (0, 1, 2, 3), spelling: Spelling = Spelling()):
        super().__init__()
        self.cfg, self.img_size, self.spelling = cfg, img_size, spelling
        self.out_indices = check_out_indices(out_indices)
        self.patch_embed = ChannelConcatEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        # Every stage is built (one state dict for every out_indices); maps nobody reads are dropped from the
        # exported graph as dead code.
        grids = [None if img_size is None else (img_size[0] // s, img_size[1] // s) for s in STRIDES]
        self.layers = nn.ModuleList(FriendlyStage(cfg, i, grids[i], spelling) for i in range(STAGES))
        export_norms(self, spelling)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        floor = None if self.img_size else min_dynamic_size(self.cfg)
        check_image(x, self.cfg.in_chans, self.img_size, floor)
        # A fixed size is a constant: read from the input's shape, it would be traced as ShapeOf -> Gather.
        size = self.img_size or x.shape[-2:]
        h, w = size[0] // STRIDES[0], size[1] // STRIDES[0]
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers[:max(self.out_indices) + 1]):
            feat, x = layer(x, h, w)
            if i in self.out_indices:
                outs.append(feat)
            h, w = h // 2, w // 2
        return tuple(outs)


class FriendlyAnySizeClassifier(FriendlyBackbone):
    """The export-friendly classifier for every size in a range: the any-size backbone's last map, then the final
    norm, a 4-D mean (XNNPACK's and the Neural Engine's pooling) and the head. Same state dict as the classifier."""

    def __init__(self, cfg: CrossFormerConfig, num_classes: int, spelling: Spelling = Spelling()):
        super().__init__(cfg, None, (STAGES - 1,), spelling)
        self.num_classes = num_classes
        self.num_features = cfg.embed_dim * 2 ** (STAGES - 1)
        self.norm = ExportLayerNorm(self.num_features, decompose=spelling.decompose_layernorm)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        (feat,) = super().forward(x)
        b, c = feat.shape[0], feat.shape[1]
        tokens = self.norm(feat.flatten(2).transpose(1, 2))
        pooled = tokens.transpose(1, 2).reshape(b, c, -1, 1).mean(dim=(2, 3), keepdim=True).reshape(b, c)
        return self.head(pooled)


def output_specs(cfg: CrossFormerConfig, out_indices: Sequence[int], hw: tuple[int, int] | None) -> list[dict]:
    """Name, stride, channels and shape ([1, C, H/s, W/s], or with "H/s" strings for a range) of each map."""
    specs = []
    for i in out_indices:
        s, c = STRIDES[i], cfg.embed_dim * 2 ** i
        shape = [1, c, hw[0] // s, hw[1] // s] if hw else [1, c, f"H/{s}", f"W/{s}"]
        specs.append({"name": f"stage{i + 1}", "index": i, "stride": s, "channels": c, "shape": shape})
    return specs
