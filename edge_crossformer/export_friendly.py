"""CrossFormer rewritten for edge runtimes: same parameter names and logits as `reference`, different ops.

What changes, and why (each rewrite names the reference computation it replaces):
- Grouping for SDA and LDA uses rank-4 views and permutes only (reference: rank 6 / rank 8). Core ML rejects
  rank > 5 at load time, XNNPACK stops at 6 dims, the Neural Engine wants rank <= 4.
- The dynamic position bias MLP and its gather are evaluated once for the fixed input size and stored, together
  with the padding mask, as one additive constant per block (`fold_position_bias`). No gather or index at run time.
- Padding masks use -1e4 instead of -1e6: representable in FP16, still exp() == 0 after softmax in FP32.
- Attention matmuls are 3-D `bmm` (a 4-D `@` lowers to expand_copy + bmm in ExecuTorch, and the expand stays
  outside the XNNPACK delegate); q, k and v come from a split of the last dim, not a rank-5 permute and select.
- Each runtime's spelling is one frozen `Spelling` value, chosen by the target and passed to `create_model`:
- Optionally (`flat_linears`, for ONNX Runtime) token linears run on 2-D [tokens, channels]: exported as Gemm
  with its bias, which ONNX Runtime's QDQ fusion turns into one INT8 QGemm with the bias inside.
- Optionally (`decompose_layernorm`, for ExecuTorch XNNPACK, which has no LayerNorm) LayerNorm and the final
  average pool are spelled as 4-D means over dims (2, 3), the only mean XNNPACK takes.
- The cross-scale embedding and merges concatenate their convs' outputs on the NCHW channel axis, then move channels
  last once (`ChannelConcatEmbed`, `ChannelConcatMerging`).
- Optionally (`matmul_4d`, for OpenVINO) attention is 4-D with q / k / v as three linears and the output projection
  after the merge; `fold_norms` (`fold_norm_affine`, also OpenVINO's) moves each block's LayerNorm scale and shift into the linears
  that read the norm.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import reference as ref
from .config import CrossFormerConfig
from .reference_backbone import grid_geometry

# Finite in FP16 (max 65504) and far below any attention logit; see module docstring.
MASK_VALUE = -1.0e4


@dataclass(frozen=True)
class Spelling:
    """How the rewrite writes its ops for one runtime. Every spelling computes the same function from the same
    state dict (tests/test_rewrites.py); each export target declares the one its runtime runs best (edge_crossformer.targets).

    decompose_layernorm: LayerNorm and the final pool as 4-D means (ExecuTorch's XNNPACK has no LayerNorm).
    matmul_4d: attention as 4-D q @ k^T + bias -> softmax -> @ v, projected after the merge (OpenVINO fuses it into
        one kernel); otherwise 3-D bmm, which XNNPACK delegates whole.
    flat_linears: token linears as 2-D GEMMs with the bias inside (ONNX Gemm -> ONNX Runtime's INT8 QGemm).
    fold_norms: each block's LayerNorm scale and shift moved into the linears that read the norm (inference only:
        the state dict no longer matches upstream's).
    """

    decompose_layernorm: bool = False
    matmul_4d: bool = False
    flat_linears: bool = False
    fold_norms: bool = False

    @property
    def linear(self) -> type[nn.Linear]:
        return FlatLinear if self.flat_linears else nn.Linear


def lsda_partition(x: Tensor, group: int, interval: int) -> Tensor:
    """Groups from [B, Hp, Wp, C] -> [B * nG, G*G, C] using only rank-4 views.

    interval 0 or 1 is SDA (adjacent G x G tokens); interval I > 1 is LDA (every I-th token).
    Same groups, same token order inside each group, as `reference.group_tokens` (a rank-8 permute there);
    only the order of groups differs, and `lsda_merge` plus the mask built with this function account for that.
    Why: Core ML rejects rank > 5 at load time and XNNPACK stops at 6 dims.
    """
    b, hp, wp, c = x.shape
    g, i = group, max(interval, 1)
    rh, rw = hp // (g * i), wp // (g * i)
    if i > 1:
        # (B Rh Gh Ih Rw, Gw, Iw, C) -> (.., Iw, Gw, C): columns of one group become adjacent.
        x = x.reshape(b * hp * rw, g, i, c).permute(0, 2, 1, 3)
    # (B Rh, Gh, Ih Rw Iw, Gw C) -> (B Rh, Ih Rw Iw, Gh, Gw C): rows of one group become adjacent.
    x = x.reshape(b * rh, g, i * rw * i, g * c).permute(0, 2, 1, 3)
    return x.reshape(-1, g * g, c)


def lsda_merge(x: Tensor, b: int, hp: int, wp: int, group: int, interval: int) -> Tensor:
    """Inverse of `lsda_partition`: [B * nG, G*G, C] -> [B, Hp, Wp, C], rank-4 views only."""
    c = x.shape[-1]
    g, i = group, max(interval, 1)
    rh, rw = hp // (g * i), wp // (g * i)
    x = x.reshape(b * rh, i * rw * i, g, g * c).permute(0, 2, 1, 3)
    if i > 1:
        x = x.reshape(b * hp * rw, i, g, c).permute(0, 2, 1, 3)
    return x.reshape(b, hp, wp, c)


def padding_mask(resolution: int, group: int, interval: int) -> Tensor | None:
    """[nG, 1, 1, N] additive mask over padded keys in `lsda_partition`'s group order; None without padding.

    Same masking as `reference.build_attn_mask` (which is [nG, N, N] with upstream's group order).
    """
    return grid_padding_mask(resolution, resolution, group, interval)


def grid_padding_mask(h: int, w: int, group: int, interval: int) -> Tensor | None:
    """`padding_mask` of an h x w grid, each side padded to a multiple of group x interval on its own."""
    div = group * max(interval, 1)
    hp, wp = h + ref.padding_for(h, div), w + ref.padding_for(w, div)
    if (hp, wp) == (h, w):
        return None
    flag = torch.zeros(1, hp, wp, 1)
    flag[:, h:, :, :] = 1
    flag[:, :, w:, :] = 1
    flag = lsda_partition(flag, group, interval)  # nG, N, 1
    return (flag.reshape(flag.shape[0], 1, 1, -1) * MASK_VALUE)


def traced_padding_mask(x: Tensor, h, w, group: int, interval: int) -> Tensor:
    """[1, nG, 1, N] mask over the padded keys of x ([B, Hp, Wp, C], the padded h x w grid), built from the
    shapes in the graph: one artifact serves every size. zeros -> pad with ones -> regroup; no gather, rank 4."""
    hp, wp = x.shape[1], x.shape[2]
    flag = F.pad(x.new_zeros(1, h, w, 1), (0, 0, 0, wp - w, 0, hp - h), value=1.0)
    flag = lsda_partition(flag, group, interval)  # nG, N, 1
    return flag.reshape(1, -1, 1, group * group) * MASK_VALUE


def relative_position_onehot(group: int) -> Tensor:
    """[N*N, (2G-1)^2] one-hot matrix: `onehot @ table` is `table[relative_position_index]` without a gather."""
    index = ref.relative_position_index(group).view(-1)
    return F.one_hot(index, (2 * group - 1) ** 2).float()


class ExportLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) that can spell itself in ops XNNPACK delegates.

    Why: ExecuTorch's XNNPACK partitioner has no LayerNorm and takes `mean.dim` only on 4-D tensors over
    dims (2, 3) with keepdim, so the channel dim is moved to dim 2 of a [M, 1, C, 1] view.
    """

    def __init__(self, dim: int, eps: float = 1e-5, decompose: bool = False, affine: bool = True):
        super().__init__(dim, eps=eps, elementwise_affine=affine)
        self.decompose = decompose

    def forward(self, x: Tensor) -> Tensor:
        if not self.decompose:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        shape = x.shape
        x4 = x.reshape(-1, 1, shape[-1], 1)
        centered = x4 - x4.mean(dim=(2, 3), keepdim=True)
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        y = (centered * torch.rsqrt(var + self.eps)).reshape(shape)
        return y if self.weight is None else y * self.weight + self.bias


class FlatLinear(nn.Linear):
    """nn.Linear on [..., in] computed as one 2-D GEMM over all tokens (same parameters, same numbers)."""

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


@torch.no_grad()
def fold_norm_affine(model: nn.Module) -> nn.Module:
    """In place: each block's norm1 / norm2 scale and shift move into the linears that read them (attn.qkv,
    mlp.fc1), and the norms lose their affine step: W diag(g) and b + W beta, computed in float64.

    Same function (rounding aside), one elementwise multiply-add fewer per norm; and per-channel INT8 weight
    scales absorb the LayerNorm scale, so a per-tensor activation quantizer no longer sees its channel outliers.
    Inference only: the folded model's state dict no longer matches upstream's.
    """
    for block in model.modules():
        if not isinstance(block, FriendlyBlock):
            continue
        for norm_name, linear in (("norm1", block.attn.qkv), ("norm2", block.mlp.fc1)):
            norm = getattr(block, norm_name)
            if norm.weight is None:
                continue
            w, gamma, beta = linear.weight.double(), norm.weight.double(), norm.bias.double()
            linear.bias.copy_((linear.bias.double() + w @ beta).float())
            linear.weight.copy_((w * gamma).float())
            setattr(block, norm_name, ExportLayerNorm(norm.normalized_shape[0], norm.eps, norm.decompose,
                                                      affine=False))
    return model


class FriendlyAttention(nn.Module):
    """Group attention with the position bias (and padding mask) as one additive constant.

    Parameter names match `reference.Attention` (`qkv`, `proj`, `pos.*`) so the same state dict loads.
    """

    def __init__(self, dim: int, group: int, num_heads: int, mask: Tensor | None, spelling: Spelling = Spelling()):
        super().__init__()
        self.dim = dim
        self.group = group
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.pos = ref.DynamicPosBias(dim // 4, num_heads)
        self.qkv = spelling.linear(dim, dim * 3)
        self.proj = spelling.linear(dim, dim)
        self.register_buffer("offsets", ref.relative_offsets(group), persistent=False)
        self.register_buffer("onehot", relative_position_onehot(group), persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        # Set by `fold_position_bias`: [1 or nG, heads, N, N] = position bias (+ padding mask).
        self.register_buffer("attn_bias", None, persistent=False)
        # Spelling of the attention core: 3-D bmm (ExecuTorch: XNNPACK leaves a 4-D matmul's expand_copy outside)
        # or 4-D q @ k^T + bias -> softmax -> @ v, the pattern OpenVINO's CPU plugin fuses into one attention kernel.
        self.matmul_4d = spelling.matmul_4d

    def live_bias(self) -> Tensor:
        """Position bias (+ mask) from the MLP, gather-free, differentiable: used before folding (e.g. QAT)."""
        n = self.group * self.group
        bias = (self.onehot @ self.pos(self.offsets)).t().reshape(1, self.num_heads, n, n)
        return bias if self.mask is None else bias + self.mask

    def forward(self, x: Tensor, project: bool = True, mask: Tensor | None = None) -> Tensor:
        """[B * nG, N, C] groups -> attention output, through `proj` unless `project` is False (the caller then
        applies `proj`; it acts on channels only, so it commutes with regrouping the tokens). `mask` ([1, nG, 1, N],
        `traced_padding_mask`) is for a model that serves any size; a fixed-size one has its mask in `attn_bias`."""
        if self.matmul_4d:
            return self._forward_4d(x, project, mask)
        bg, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(x)
        # Static slices, not split(): XNNPACK takes slice_copy but leaves split_with_sizes_copy outside.
        q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
        # Scaled before the head split (same values as upstream's q * scale after it): OpenVINO's
        # DeReshapeMatMul pass fails when an elementwise op sits between the reshapes and the matmul.
        q = (q * self.scale).reshape(bg, n, h, d).permute(0, 2, 1, 3).reshape(bg * h, n, d)
        k = k.reshape(bg, n, h, d).permute(0, 2, 1, 3).reshape(bg * h, n, d)
        v = v.reshape(bg, n, h, d).permute(0, 2, 1, 3).reshape(bg * h, n, d)
        # k transposed as its own rank-3 op (OpenVINO's DeReshapeMatMul pass breaks on a transposing reshape).
        attn = torch.bmm(q, k.transpose(1, 2))
        bias = self.attn_bias if self.attn_bias is not None else self.live_bias()
        planes = bias.shape[0] * bias.shape[1]
        attn = attn.reshape(-1, planes, n, n) + bias.reshape(1, planes, n, n)
        if mask is not None:  # [B, nG * heads, N, N] viewed as [B, nG, heads * N, N]: rank 4
            attn = attn.reshape(-1, mask.shape[1], h * n, n) + mask
        attn = attn.softmax(dim=-1)
        x = torch.bmm(attn.reshape(bg * h, n, n), v)
        x = x.reshape(bg, h, n, d).permute(0, 2, 1, 3).reshape(bg, n, c)
        return self.proj(x) if project else x

    def _forward_4d(self, x: Tensor, project: bool, mask: Tensor | None) -> Tensor:
        bg, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        # q, k and v as three linears on slices of the qkv weight (constants once exported): each lands directly in
        # the head layout its matmul reads, instead of one 3C-wide output that a transpose and a split regroup
        # (in INT8 OpenVINO ran that transpose on FP32 data, before the per-tensor quantizers of q, k and v).
        # The attention scale is folded into q's weight and bias.
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x, w[:c] * self.scale, b[:c] * self.scale).reshape(bg, n, h, d).permute(0, 2, 1, 3)
        k = F.linear(x, w[c:2 * c], b[c:2 * c]).reshape(bg, n, h, d).permute(0, 2, 3, 1)
        v = F.linear(x, w[2 * c:], b[2 * c:]).reshape(bg, n, h, d).permute(0, 2, 1, 3)
        attn = q @ k
        bias = self.attn_bias if self.attn_bias is not None else self.live_bias()
        if bias.shape[0] in (1, bg):
            attn = attn + bias
        else:  # batch > 1 with a per-group bias: broadcast over the batch through a rank-4 view
            attn = (attn.reshape(-1, bias.shape[0] * h, n, n) + bias.reshape(1, -1, n, n)).reshape(bg, h, n, n)
        if mask is not None:
            attn = (attn.reshape(-1, mask.shape[1], h * n, n) + mask).reshape(bg, h, n, n)
        x = (attn.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(bg, n, c)
        return self.proj(x) if project else x


class FriendlyBlock(nn.Module):
    """`reference.CrossFormerBlock` with rank-4 grouping and a constant bias; same parameter names.

    `resolution` is the token grid (an int for a square one, or (h, w)) the bias and mask are folded for, or None
    for a block that serves every grid: padding and mask are then computed from the shapes in the graph, and the
    group is always the configured one (callers keep every grid larger than the group: `backbone.size_range`).
    """

    def __init__(self, dim: int, resolution: int | tuple[int, int] | None, num_heads: int, group_size: int,
                 interval: int, lsda_flag: int, mlp_ratio: float, use_extra_conv: bool, spelling: Spelling = Spelling()):
        super().__init__()
        self.hw = (resolution, resolution) if isinstance(resolution, int) else resolution
        if self.hw is None:
            self.group, self.interval, mask = group_size, interval if lsda_flag else 0, None
        else:
            self.group, self.interval, *self.padded_hw = grid_geometry(*self.hw, group_size, interval, lsda_flag)
            mask = grid_padding_mask(*self.hw, self.group, self.interval)
        norm = lambda: ExportLayerNorm(dim, decompose=spelling.decompose_layernorm)  # noqa: E731
        self.norm1 = norm()
        self.attn = FriendlyAttention(dim, self.group, num_heads, mask, spelling)
        self.norm2 = norm()
        self.mlp = ref.Mlp(dim, int(dim * mlp_ratio), spelling.linear)
        self.use_extra_conv = use_extra_conv
        if use_extra_conv:
            self.ex_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.ex_ln = norm()

    def forward(self, x: Tensor, h=None, w=None) -> Tensor:
        """[B, h*w, C] tokens; h and w are given only to a block that serves every grid (they may be symbolic)."""
        if self.hw is not None:
            (h, w), (hp, wp) = self.hw, self.padded_hw
        else:
            div = self.group * max(self.interval, 1)
            hp, wp = h + ref.padding_for(h, div), w + ref.padding_for(w, div)
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).reshape(b, h, w, c)
        cropped = self.hw is None or (hp, wp) != (h, w)
        if cropped:
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        mask = None if self.hw is not None else traced_padding_mask(x, h, w, self.group, self.interval)
        x = lsda_partition(x, self.group, self.interval)
        # OpenVINO's spelling projects after the merge: the merge transposes then move the INT8 input of `proj`
        # rather than its FP32 output (and padded tokens are cropped before the projection, not after).
        late_proj = self.attn.matmul_4d
        x = self.attn(x, project=not late_proj, mask=mask)
        x = lsda_merge(x, b, hp, wp, self.group, self.interval)
        if cropped:
            x = x[:, :h, :w, :]
        x = x.reshape(b, h * w, c)
        x = shortcut + (self.attn.proj(x) if late_proj else x)
        x = x + self.mlp(self.norm2(x))
        if self.use_extra_conv:
            x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
            x = self.ex_conv(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
            x = self.ex_ln(x)
        return x


class ChannelConcatEmbed(ref.PatchEmbed):
    """`reference.PatchEmbed` (same parameters) concatenating its convs' outputs on the channel axis of NCHW, then
    moving channels last once (reference: channels last per conv, then a concat on the innermost axis, which
    OpenVINO's CPU plugin runs as a reference-kernel Concat of 8- to 32-channel slivers). Same values."""

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([proj(x) for proj in self.projs], dim=1)
        return self.norm(x.flatten(2).transpose(1, 2))


class ChannelConcatMerging(ref.PatchMerging):
    """`reference.PatchMerging` with the same change as `ChannelConcatEmbed`."""

    def forward(self, x: Tensor, h=None, w=None) -> Tensor:
        """[B, h*w, C] tokens; h and w are given only when the merge serves every grid (they may be symbolic)."""
        b, _, c = x.shape
        h, w = (self.resolution, self.resolution) if h is None else (h, w)
        x = self.norm(x).view(b, h, w, c).permute(0, 3, 1, 2)
        return torch.cat([red(x) for red in self.reductions], dim=1).flatten(2).transpose(1, 2)


def export_norms(model: nn.Module, spelling: Spelling) -> None:
    """In place: the stem, merge and final norms (plain nn.LayerNorm in the reference) become ExportLayerNorm with
    the same parameters, spelled for the runtime."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                setattr(parent, name, ExportLayerNorm(child.normalized_shape[0], child.eps,
                                                      spelling.decompose_layernorm))


class ExportFriendlyCrossFormer(ref.CrossFormer):
    """Drop-in for `reference.CrossFormer`: same state dict, same logits, export-friendly graph, in one `Spelling`
    fixed at construction (`fold_norms` applies after loading weights: `fold_norm_affine`)."""

    embed_cls = ChannelConcatEmbed

    def __init__(self, cfg: CrossFormerConfig, img_size: int = 224, num_classes: int = 1000,
                 spelling: Spelling = Spelling()):
        self.spelling = spelling
        super().__init__(cfg, img_size, num_classes)
        export_norms(self, spelling)

    def _stage(self, cfg: CrossFormerConfig, index: int, resolution: int) -> nn.Module:
        return ref.Stage(cfg, index, resolution, block_cls=FriendlyBlock, merge_cls=ChannelConcatMerging,
                         spelling=self.spelling)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        # Average over tokens as a 4-D mean over dims (2, 3): the pooling XNNPACK and the Neural Engine take.
        b, length, c = x.shape
        return x.transpose(1, 2).reshape(b, c, length, 1).mean(dim=(2, 3), keepdim=True).reshape(b, c)


def _folded_bias(attn: FriendlyAttention) -> Tensor:
    """The reference computation (MLP on the offset table, then the gather), plus the mask, as a constant."""
    n = attn.group * attn.group
    index = ref.relative_position_index(attn.group).to(attn.offsets.device)
    table = attn.pos(attn.offsets)
    bias = table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
    if attn.mask is not None:
        bias = bias + attn.mask
    return bias.contiguous()


@torch.no_grad()
def fold_position_bias(model: ExportFriendlyCrossFormer) -> ExportFriendlyCrossFormer:
    """Inference-only transform: a copy whose every block adds a constant bias instead of running the MLP.

    The copy keeps the `pos.*` parameters (so `state_dict()` still matches upstream's keys) and re-folds the
    constants whenever a state dict is loaded into it, so they never go stale.
    """
    folded = copy.deepcopy(model)
    for module in folded.modules():
        if isinstance(module, FriendlyAttention):
            module.attn_bias = _folded_bias(module)
            module.register_load_state_dict_post_hook(_refold_after_load)
    return folded


@torch.no_grad()
def _refold_after_load(module: FriendlyAttention, incompatible_keys) -> None:
    module.attn_bias = _folded_bias(module)


def strip_position_mlp(model: ExportFriendlyCrossFormer) -> ExportFriendlyCrossFormer:
    """A copy of a folded model without the (now unused) position MLP and its tables: what gets exported."""
    stripped = copy.deepcopy(model)
    for module in stripped.modules():
        if isinstance(module, FriendlyAttention):
            if module.attn_bias is None:
                raise ValueError("strip_position_mlp needs a folded model; call fold_position_bias first")
            del module.pos
            module.offsets = None
            module.onehot = None
            module.mask = None
    return stripped
