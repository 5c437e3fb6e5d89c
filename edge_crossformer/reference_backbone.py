"""The faithful CrossFormer backbone for detection and segmentation: the oracle for `features_only` models.

Behaviour and parameter names follow upstream's `models/crossformer_backbone_det.py` (and `_seg.py`, the same code):
any H x W, the token grid of each block padded to a multiple of group (SDA) or group x interval (LDA) in each
direction separately, padded keys masked, the position bias MLP evaluated for the group in use, no final norm and no
head; the output is each stage's map before its merge, NCHW, at strides 4, 8, 16 and 32.

Where a stage's grid is not larger than its group in one direction (min(H, W) <= G), upstream switches that block to
one SDA group of max(H, W) x max(H, W) tokens (the grid padded to a square). Upstream stores that switch on the
block (`self.lsda_flag = 0`), so one small input turns LDA off for every later call of the same instance; this
oracle decides per call, which is what a fresh upstream instance computes for each size.
Do not optimise this file; its job is to be obviously the same computation as upstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import reference as ref
from .config import CrossFormerConfig

# Stage strides of the four output maps (patch embedding 4, then three 2x merges).
STRIDES = (4, 8, 16, 32)


def grid_geometry(h: int, w: int, group_size: int, interval: int, lsda_flag: int) -> tuple[int, int, int, int]:
    """(group, interval or 0 for SDA, padded H, padded W) of one block at an h x w token grid (upstream det rules)."""
    if min(h, w) <= group_size:
        group, interval = max(h, w), 0
    else:
        group, interval = group_size, (interval if lsda_flag else 0)
    div = group * max(interval, 1)
    return group, interval, h + ref.padding_for(h, div), w + ref.padding_for(w, div)


def grid_mask(h: int, w: int, group: int, interval: int) -> Tensor | None:
    """[nG, N, N] additive mask over padded keys in upstream's group order; None without padding."""
    div = group * max(interval, 1)
    hp, wp = h + ref.padding_for(h, div), w + ref.padding_for(w, div)
    if (hp, wp) == (h, w):
        return None
    flag = torch.zeros(1, hp, wp, 1)
    flag[:, h:, :, :] = -1
    flag[:, :, w:, :] = -1
    flag = ref.group_tokens(flag, group, interval).reshape(-1, 1, group * group)
    mask = torch.zeros(flag.shape[0], group * group, group * group)
    return mask.masked_fill(flag < 0, ref.NEG_INF)


class BackboneAttention(ref.Attention):
    """`reference.Attention` whose group (and so its position-bias table) is chosen per call, as upstream's det
    Attention builds its offset table and index from the group it is given."""

    def position_bias(self) -> Tensor:
        g, n = self.group_in_use, self.group_in_use ** 2
        device = self.qkv.weight.device
        table = self.pos(ref.relative_offsets(g).to(device))
        index = ref.relative_position_index(g).to(device)
        return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor, group: int, mask: Tensor | None = None) -> Tensor:
        self.group_in_use = group
        return super().forward(x, mask)


class BackboneBlock(nn.Module):
    """Upstream det `CrossFormerBlock.forward(x, H, W)`; same parameter names as `reference.CrossFormerBlock`."""

    def __init__(self, dim: int, num_heads: int, group_size: int, interval: int, lsda_flag: int, mlp_ratio: float,
                 use_extra_conv: bool):
        super().__init__()
        self.group_size, self.interval, self.lsda_flag = group_size, interval, lsda_flag
        self.norm1 = nn.LayerNorm(dim)
        self.attn = BackboneAttention(dim, group_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ref.Mlp(dim, int(dim * mlp_ratio))
        self.use_extra_conv = use_extra_conv
        if use_extra_conv:
            self.ex_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.ex_ln = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        group, interval, hp, wp = grid_geometry(h, w, self.group_size, self.interval, self.lsda_flag)
        shortcut = x
        x = F.pad(self.norm1(x).view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
        x = ref.group_tokens(x, group, interval)
        mask = grid_mask(h, w, group, interval)
        x = self.attn(x, group, None if mask is None else mask.to(x.device))
        x = ref.ungroup_tokens(x, b, hp, wp, group, interval)[:, :h, :w, :].contiguous()
        x = shortcut + x.view(b, h * w, c)
        x = x + self.mlp(self.norm2(x))
        if self.use_extra_conv:
            x = x.view(b, h, w, c).permute(0, 3, 1, 2)
            x = self.ex_conv(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
            x = self.ex_ln(x)
        return x


class BackboneMerging(ref.PatchMerging):
    """`reference.PatchMerging` at any h x w."""

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        x = self.norm(x).view(b, h, w, c).permute(0, 3, 1, 2)
        return torch.cat([red(x).flatten(2).transpose(1, 2) for red in self.reductions], dim=2)


class BackboneStage(nn.Module):
    def __init__(self, cfg: CrossFormerConfig, index: int):
        super().__init__()
        dim, depth = cfg.embed_dim * 2 ** index, cfg.depths[index]
        self.blocks = nn.ModuleList(
            BackboneBlock(dim, cfg.num_heads[index], cfg.group_size[index], cfg.interval[index], lsda_flag=i % 2,
                          mlp_ratio=cfg.mlp_ratio,
                          use_extra_conv=cfg.use_acl and (i + 1) % 3 == 0 and i < depth - 1)
            for i in range(depth)
        )
        last = index == len(cfg.depths) - 1
        self.downsample = None if last else BackboneMerging(0, dim, cfg.merge_size[index])

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        for blk in self.blocks:
            x = blk(x, h, w)
        feat = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        return feat, (x if self.downsample is None else self.downsample(x, h, w))


class CrossFormerBackbone(nn.Module):
    """Faithful detection / segmentation backbone: ImageNet-normalized NCHW in (H, W multiples of 32), a list of
    the stage maps in `out_indices` out. `cfg` is the variant's backbone configuration (`cfg.backbone()`)."""

    def __init__(self, cfg: CrossFormerConfig, out_indices: tuple[int, ...] = (0, 1, 2, 3)):
        super().__init__()
        self.cfg = cfg
        self.out_indices = tuple(out_indices)
        self.patch_embed = ref.PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.layers = nn.ModuleList(BackboneStage(cfg, i) for i in range(len(cfg.depths)))
        self.apply(ref._init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        ref.check_image(x, self.cfg.in_chans)
        h, w = x.shape[-2] // self.cfg.patch_size[0], x.shape[-1] // self.cfg.patch_size[0]
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            feat, x = layer(x, h, w)
            if i in self.out_indices:
                outs.append(feat)
            h, w = h // 2, w // 2
        return outs


class AnySizeClassifier(CrossFormerBackbone):
    """The classifier at any H x W: the faithful backbone's last map, then the classifier's final norm, average
    pool and head (upstream's `forward_features` / `forward_head`). Same state dict as `reference.CrossFormer`; at a
    square size the same logits (tests/test_backbone.py). The oracle of a classifier artifact that serves a range."""

    def __init__(self, cfg: CrossFormerConfig, num_classes: int):
        super().__init__(cfg, out_indices=(len(cfg.depths) - 1,))
        self.num_classes = num_classes
        self.num_features = cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        self.apply(ref._init_weights)

    def forward(self, x: Tensor) -> Tensor:
        (feat,) = super().forward(x)
        tokens = self.norm(feat.flatten(2).transpose(1, 2))
        return self.head(tokens.mean(dim=1))
