"""Which layers low-bit weights hurt: weight compression (`--precision w4 / palette4 / palette6`,
edge_crossformer.compression) simulated in PyTorch, per unit, and the search `--max-accuracy-drop` runs to keep the
most sensitive units at 8 bits.

A unit is what a user would keep at 8 bits as one: a block (`layers.2.blocks.0`), a patch merging
(`layers.1.downsample`), the stem (`patch_embed`) or the head. Its weights are those of its convolutions and linears.
The simulation stores each weight as the scheme would (symmetric integers with one scale per output channel or per
group of input channels; palettes: a k-means table per tensor) and computes in float: what every runtime here does
with compressed weights, up to its own rounding and scale choices. So it ranks units and finds how many to keep; the
drop that counts is measured on the exported file itself (export.pipeline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from edge_crossformer.compression import WeightScheme

from .sensitivity import logits_of, metrics

# Unit of a module path, most specific first: a block, a patch merging, the stem, the head.
UNIT_PATTERNS = (r"^layers\.\d+\.blocks\.\d+", r"^layers\.\d+\.downsample", r"^patch_embed", r"^head$")
KMEANS_ITERATIONS = 25


def unit_of(path: str) -> str | None:
    for pattern in UNIT_PATTERNS:
        found = re.match(pattern, path)
        if found:
            return found.group(0)
    return None


def unit_pattern(unit: str) -> str:
    """The keep-8-bit regular expression of a unit (WeightPlan.keep_8bit: over module paths)."""
    return f"^{re.escape(unit)}(\\.|$)"


def linear_levels(weight: Tensor, bits: int, group: int | None) -> Tensor:
    """The weight as symmetric `bits`-bit integers times one scale per output channel, or per `group` input values
    of each output channel (a convolution's input channels x kernel, flattened, as the runtimes group them)."""
    rows = weight.reshape(weight.shape[0], -1)
    cols = rows.shape[1]
    shaped = rows.reshape(rows.shape[0], cols // group, group) if group and cols % group == 0 else rows[:, None]
    top = 2 ** (bits - 1) - 1
    scale = shaped.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny) / top
    return ((shaped / scale).round().clamp(-top - 1, top) * scale).reshape(weight.shape)


def palette(weight: Tensor, bits: int) -> Tensor:
    """Each weight replaced by the nearest of 2**bits values, the values found by k-means over the tensor: 1-D Lloyd
    iterations from evenly spaced values and from the quantiles, whichever ends with the smaller squared error
    (Lloyd only lowers it, so the table is never worse than even spacing)."""
    flat = weight.reshape(-1).double()
    k = min(2 ** bits, flat.numel())
    starts = (torch.linspace(flat.min().item(), flat.max().item(), k, dtype=torch.float64),
              torch.quantile(flat, torch.linspace(0, 1, k, dtype=torch.float64)))
    best = min((_lloyd(flat, centers) for centers in starts), key=lambda stored: (stored - flat).pow(2).sum())
    return best.reshape(weight.shape).to(weight.dtype)


def _nearest(flat: Tensor, centers: Tensor) -> Tensor:
    """Index of the nearest center of each value (1-D: the sorted centers' midpoints bound each one's values; no
    N x k distance matrix, which a large layer could not afford)."""
    order = torch.argsort(centers)
    ranked = centers[order]
    return order[torch.bucketize(flat, (ranked[1:] + ranked[:-1]) / 2)]


def _lloyd(flat: Tensor, centers: Tensor) -> Tensor:
    k = len(centers)
    for _ in range(KMEANS_ITERATIONS):
        nearest = _nearest(flat, centers)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, nearest, flat)
        count = torch.bincount(nearest, minlength=k)
        centers = torch.where(count > 0, sums / count.clamp_min(1), centers)
    return centers[_nearest(flat, centers)]


def compressed(weight: Tensor, scheme: WeightScheme, bits: int, group: int | None) -> Tensor:
    """The weight as `scheme` stores it at `bits` (the scheme's own, or 8 for a unit kept at 8 bits)."""
    if scheme.kind == "palette":
        return palette(weight, bits)
    return linear_levels(weight, bits, group if bits == scheme.bits else None)


def _weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Module path (without the deployable's wrapper prefix) -> the weight of each convolution and linear that
    belongs to a unit."""
    found = {}
    for path, module in model.named_modules():
        weight = getattr(module, "weight", None)
        name = path.removeprefix("model.")
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and unit_of(name):
            found[name] = weight
    return found


@dataclass
class WeightSensitivity:
    """A model whose weights can be switched between float, the scheme's bits and 8 bits per unit, and the
    evaluation images. `evaluate(low)` stores the units in `low` at the scheme's bits and `eight` at 8 bits."""
    model: nn.Module
    scheme: WeightScheme
    group: int | None
    images: Tensor
    labels: np.ndarray | None
    batch: int
    fp32: np.ndarray = field(init=False)
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.weights = _weights(self.model)
        self.float = {name: w.detach().clone() for name, w in self.weights.items()}
        self._stored: dict[tuple[str, int], Tensor] = {}
        self.fp32 = logits_of(self.model, self.images, self.batch)

    @property
    def units(self) -> list[str]:
        """Units in the model's order."""
        return list(dict.fromkeys(unit_of(name) for name in self.weights))

    def _stored_as(self, name: str, bits: int) -> Tensor:
        if (name, bits) not in self._stored:
            self._stored[(name, bits)] = compressed(self.float[name], self.scheme, bits, self.group)
        return self._stored[(name, bits)]

    @torch.no_grad()
    def evaluate(self, low: set[str], eight: set[str] = frozenset(), limit: int | None = None) -> dict:
        """Metrics with the units in `low` at the scheme's bits, `eight` at 8 bits, the rest float."""
        try:
            for name, weight in self.weights.items():
                unit = unit_of(name)
                bits = self.scheme.bits if unit in low else 8 if unit in eight else None
                weight.copy_(self.float[name] if bits is None else self._stored_as(name, bits))
            n = len(self.images) if limit is None else min(limit, len(self.images))
            labels = None if self.labels is None else self.labels[:n]
            return metrics(logits_of(self.model, self.images[:n], self.batch), self.fp32[:n], labels)
        finally:
            for name, weight in self.weights.items():
                weight.copy_(self.float[name])

    def rank(self, candidates: list[str], limit: int | None = None, progress=None) -> list[dict]:
        """Per unit: the metrics with only it at the scheme's bits (the rest float), and with every candidate at the
        scheme's bits but it at 8 bits. Sorted most harmful first (KL divergence of only it compressed: smoother than
        top-1 on few images)."""
        self.rows = []
        for done, unit in enumerate(candidates, 1):
            self.rows.append({"unit": unit, "kind": unit_kind(unit),
                              "only_compressed": self.evaluate({unit}, limit=limit),
                              "kept_8bit": self.evaluate(set(candidates) - {unit}, {unit}, limit=limit)})
            if progress is not None:
                progress(done, len(candidates))
        self.rows.sort(key=lambda r: -r["only_compressed"]["kl"])
        return self.rows

    def ranking(self) -> list[str]:
        return [r["unit"] for r in self.rows]


def unit_kind(unit: str) -> str:
    return ("block" if ".blocks." in unit else "patch merging" if unit.endswith("downsample")
            else "stem" if unit == "patch_embed" else "head")


@dataclass
class KeepSearch:
    met: bool
    # Units kept at 8 bits beyond the scheme's defaults, most harmful first.
    kept_8bit: list[str]
    drop_pp: float
    default_drop_pp: float
    tried: list[dict]


# The search ranks on this many of its images (a KL ranking is smooth; the drops it checks use all).
RANK_IMAGES = 1000


def search_keep_8bit(sens: WeightSensitivity, default_kept: set[str], max_drop_pp: float) -> KeepSearch:
    """Keep the fewest units at 8 bits, in ranking order, beyond `default_kept`, for the simulated drop on the
    evaluation images to be at most `max_drop_pp` (bisection over how many). Not met when every unit at 8 bits
    still loses more."""
    candidates = [u for u in sens.units if u not in default_kept]
    drops: dict[int, float] = {}
    tried: list[dict] = []
    ranked: list[str] = []

    def drop(k: int) -> float:
        if k not in drops:
            low = set(candidates) - set(ranked[:k])
            drops[k] = round(sens.evaluate(low, set(default_kept) | set(ranked[:k]))["drop_pp"], 4)
            tried.append({"kept_8bit": k, "drop_pp": drops[k]})
        return drops[k]

    first = drop(0)
    if first <= max_drop_pp or not candidates:
        return KeepSearch(first <= max_drop_pp, [], first, first, tried)
    sens.rank(candidates, limit=RANK_IMAGES)
    ranked[:] = sens.ranking()
    lo, hi = 0, len(ranked)
    if drop(hi) > max_drop_pp:
        return KeepSearch(False, ranked, drops[hi], first, tried)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if drop(mid) <= max_drop_pp else (mid, hi)
    return KeepSearch(True, ranked[:hi], drops[hi], first, tried)
