"""The faithful CrossFormer / CrossFormer++ model: the oracle every rewrite and artifact is compared against.

Behaviour and parameter names follow upstream's `models/crossformer.py` on the main branch (github.com/cheerss/CrossFormer):
fixed LDA interval per stage with the token grid padded to a multiple of group x interval, a static attention mask
over padded keys, the dynamic position bias MLP evaluated on every call, and CrossFormer++'s activation cooling layers.
Do not optimise this file; its job is to be obviously the same computation as upstream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CrossFormerConfig

# Upstream's mask value for padded keys (added before softmax).
NEG_INF = -1000000.0


def check_image(x: Tensor, in_chans: int, size: tuple[int, int] | None = None, floor: int | None = None) -> None:
    """A clear error for an input a model cannot take, instead of a reshape error deep inside or, worse, other
    numbers. `size`: the one H x W a fixed-size model was built for; `floor`: the smallest side of a model that
    serves every multiple of 32 from there. Symbolic sizes (torch.export with dynamic H / W) are bounded by the
    export instead."""
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[1] != in_chans:
        raise ValueError(f"expected an image batch of shape [B, {in_chans}, H, W]; got {list(shape)}")
    hw = shape[2:]
    if not all(isinstance(v, int) for v in hw):
        return
    if size is not None and hw != tuple(size):
        raise ValueError(f"this model was built for {size[0]}x{size[1]} inputs; got {hw[0]}x{hw[1]}: resize the "
                         "image, or build the model for that size")
    if floor is not None and (min(hw) < floor or hw[0] % 32 or hw[1] % 32):
        raise ValueError(f"this model serves H and W that are multiples of 32 from {floor} up; got {hw[0]}x{hw[1]}")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, linear=nn.Linear):
        super().__init__()
        self.fc1 = linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DynamicPosBias(nn.Module):
    """MLP mapping a relative offset (dy, dx) to one bias per head (upstream `DynamicPosBias`, residual=False)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.pos_dim = dim // 4
        self.pos_proj = nn.Linear(2, self.pos_dim)
        self.pos1 = nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(), nn.Linear(self.pos_dim, self.pos_dim))
        self.pos2 = nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(), nn.Linear(self.pos_dim, self.pos_dim))
        self.pos3 = nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(), nn.Linear(self.pos_dim, num_heads))

    def forward(self, offsets: Tensor) -> Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


def relative_offsets(group: int) -> Tensor:
    """All (dy, dx) offsets in a G x G group, [(2G-1)^2, 2] float, dy-major (upstream's `biases` buffer)."""
    r = torch.arange(1 - group, group)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], dim=1).float()


def relative_position_index(group: int) -> Tensor:
    """Index into `relative_offsets` for every (query, key) pair of a group, [G*G, G*G] long."""
    ys, xs = torch.meshgrid(torch.arange(group), torch.arange(group), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + group - 1
    dx = xs[:, None] - xs[None, :] + group - 1
    return dy * (2 * group - 1) + dx


class Attention(nn.Module):
    """Multi-head self-attention inside a group, with the dynamic position bias."""

    def __init__(self, dim: int, group_size: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.group_size = group_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.pos = DynamicPosBias(dim // 4, num_heads)
        # main registers these as non-persistent buffers; the v1 branch saved them (the loader checks and drops them).
        self.register_buffer("biases", relative_offsets(group_size), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(group_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> Tensor:
        """[heads, N, N] bias, recomputed from the MLP (upstream does this on every forward)."""
        n = self.group_size * self.group_size
        table = self.pos(self.biases)
        return table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.position_bias().unsqueeze(0)
        if mask is not None:
            ng = mask.shape[0]
            attn = attn.view(b_ // ng, ng, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj(x)


def padding_for(size: int, multiple: int) -> int:
    return (multiple - size % multiple) % multiple


def group_tokens(x: Tensor, group: int, interval: int) -> Tensor:
    """[B, Hp, Wp, C] -> [B * nG, G*G, C] exactly as upstream (rank 6 for SDA, rank 8 for LDA)."""
    b, hp, wp, c = x.shape
    if interval == 0:  # SDA
        x = x.reshape(b, hp // group, group, wp // group, group, c).permute(0, 1, 3, 2, 4, 5)
    else:
        i = interval
        rh, rw = hp // (group * i), wp // (group * i)
        x = x.reshape(b, rh, group, i, rw, group, i, c).permute(0, 1, 4, 3, 6, 2, 5, 7)
    return x.reshape(-1, group * group, c)


def ungroup_tokens(x: Tensor, b: int, hp: int, wp: int, group: int, interval: int) -> Tensor:
    """Inverse of `group_tokens`."""
    c = x.shape[-1]
    if interval == 0:
        x = x.reshape(b, hp // group, wp // group, group, group, c).permute(0, 1, 3, 2, 4, 5)
    else:
        i = interval
        rh, rw = hp // (group * i), wp // (group * i)
        x = x.reshape(b, rh, rw, i, i, group, group, c).permute(0, 1, 5, 3, 2, 6, 4, 7)
    return x.reshape(b, hp, wp, c)


def block_geometry(resolution: int, group_size: int, interval: int, lsda_flag: int) -> tuple[int, int, int]:
    """(group, interval or 0 for SDA, padded size) of one block, following upstream main's rules."""
    if resolution <= group_size:
        # Group covers the whole map: a single SDA group, no partition.
        return resolution, 0, resolution
    if lsda_flag == 0:
        return group_size, 0, resolution + padding_for(resolution, group_size)
    return group_size, interval, resolution + padding_for(resolution, group_size * interval)


def build_attn_mask(resolution: int, group: int, interval: int) -> Tensor | None:
    """[nG, N, N] additive mask hiding padded keys; None when the grid needs no padding."""
    pad = padding_for(resolution, group * max(interval, 1))
    if pad == 0:
        return None
    hp = resolution + pad
    flag = torch.zeros(1, hp, hp, 1)
    flag[:, -pad:, :, :] = -1
    flag[:, :, -pad:, :] = -1
    flag = group_tokens(flag, group, interval).reshape(-1, 1, group * group)  # nG, 1, N
    mask = torch.zeros(flag.shape[0], group * group, group * group)
    return mask.masked_fill(flag < 0, NEG_INF)


class CrossFormerBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, num_heads: int, group_size: int, interval: int, lsda_flag: int,
                 mlp_ratio: float, use_extra_conv: bool):
        super().__init__()
        self.dim = dim
        self.resolution = resolution
        self.group, self.interval, self.padded = block_geometry(resolution, group_size, interval, lsda_flag)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, self.group, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.use_extra_conv = use_extra_conv
        if use_extra_conv:
            self.ex_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.ex_ln = nn.LayerNorm(dim)
        self.register_buffer("attn_mask", build_attn_mask(resolution, self.group, self.interval), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = w = self.resolution
        b, length, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad = self.padded - h
        x = F.pad(x, (0, 0, 0, pad, 0, pad))
        x = group_tokens(x, self.group, self.interval)
        x = self.attn(x, mask=self.attn_mask)
        x = ungroup_tokens(x, b, self.padded, self.padded, self.group, self.interval)
        if pad > 0:
            x = x[:, :h, :w, :].contiguous()
        x = shortcut + x.view(b, h * w, c)
        x = x + self.mlp(self.norm2(x))
        if self.use_extra_conv:
            x = x.view(b, h, w, c).permute(0, 3, 1, 2)
            x = self.ex_conv(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
            x = self.ex_ln(x)
        return x


def split_dims(total: int, n: int) -> list[int]:
    """Channel split of a cross-scale layer: halves for all but the last kernel, which takes the remainder."""
    return [total // 2 ** (i + 1) if i < n - 1 else total // 2 ** i for i in range(n)]


class PatchEmbed(nn.Module):
    """Cross-scale embedding: one conv per kernel size, all with stride patch_size[0], concatenated on channels."""

    def __init__(self, patch_size: tuple[int, ...], in_chans: int, embed_dim: int):
        super().__init__()
        stride = patch_size[0]
        self.projs = nn.ModuleList(
            nn.Conv2d(in_chans, d, kernel_size=ps, stride=stride, padding=(ps - stride) // 2)
            for ps, d in zip(patch_size, split_dims(embed_dim, len(patch_size)))
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([proj(x).flatten(2).transpose(1, 2) for proj in self.projs], dim=2)
        return self.norm(x)


class PatchMerging(nn.Module):
    """Cross-scale merge: LayerNorm, then stride-2 convs of several kernel sizes, doubling the channels."""

    def __init__(self, resolution: int, dim: int, patch_size: tuple[int, ...]):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(dim)
        self.reductions = nn.ModuleList(
            nn.Conv2d(dim, d, kernel_size=ps, stride=2, padding=(ps - 2) // 2)
            for ps, d in zip(patch_size, split_dims(2 * dim, len(patch_size)))
        )

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        x = self.norm(x).view(b, self.resolution, self.resolution, c).permute(0, 3, 1, 2)
        return torch.cat([red(x).flatten(2).transpose(1, 2) for red in self.reductions], dim=2)


class Stage(nn.Module):
    def __init__(self, cfg: CrossFormerConfig, index: int, resolution: int, block_cls=CrossFormerBlock,
                 merge_cls=None, **block_kw):
        super().__init__()
        dim = cfg.embed_dim * 2 ** index
        depth = cfg.depths[index]
        self.blocks = nn.ModuleList(
            block_cls(dim, resolution, cfg.num_heads[index], cfg.group_size[index], cfg.interval[index],
                      lsda_flag=i % 2, mlp_ratio=cfg.mlp_ratio,
                      # CrossFormer++: a cooling layer after every third block, never after the stage's last.
                      use_extra_conv=cfg.use_acl and (i + 1) % 3 == 0 and i < depth - 1, **block_kw)
            for i in range(depth)
        )
        last = index == len(cfg.depths) - 1
        self.downsample = None if last else (merge_cls or PatchMerging)(resolution, dim, cfg.merge_size[index])

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class CrossFormer(nn.Module):
    """Faithful CrossFormer / CrossFormer++ classifier (ImageNet-normalized NCHW in, logits out)."""

    # Subclasses spell the stem differently (same parameters).
    embed_cls = PatchEmbed

    def __init__(self, cfg: CrossFormerConfig, img_size: int = 224, num_classes: int = 1000):
        super().__init__()
        self.cfg = cfg
        self.img_size = img_size
        self.num_classes = num_classes
        self.patch_embed = self.embed_cls(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        base = img_size // cfg.patch_size[0]
        self.layers = nn.ModuleList(self._stage(cfg, i, base // 2 ** i) for i in range(len(cfg.depths)))
        self.num_features = cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(self.num_features, num_classes)
        self.apply(_init_weights)

    def _stage(self, cfg: CrossFormerConfig, index: int, resolution: int) -> nn.Module:
        return Stage(cfg, index, resolution)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return torch.flatten(self.avgpool(x.transpose(1, 2)), 1)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, self.cfg.in_chans, (self.img_size, self.img_size))
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def model_macs(model: CrossFormer) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convs, linears and attention matmuls)."""
    macs = 0
    hooks = []

    def conv_hook(mod, inp, out):
        nonlocal macs
        macs += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    def linear_hook(mod, inp, out):
        nonlocal macs
        macs += out.numel() * mod.in_features

    def attn_hook(mod, inp, out):
        nonlocal macs
        groups, n, c = inp[0].shape
        macs += 2 * groups * n * n * c  # q @ k^T and attn @ v

    # The position-bias MLP runs on a (2G-1)^2 table, not on tokens; deployed models fold it to a constant.
    pos_bias_linears = {id(sub) for m in model.modules() if isinstance(m, DynamicPosBias) for sub in m.modules()}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear) and id(m) not in pos_bias_linears:
            hooks.append(m.register_forward_hook(linear_hook))
        elif m.__class__.__name__.endswith("Attention"):
            hooks.append(m.register_forward_hook(attn_hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.cfg.in_chans, model.img_size, model.img_size))
    finally:
        for h in hooks:
            h.remove()
    return macs

