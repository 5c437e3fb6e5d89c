"""Which layers INT8 hurts: per-layer sensitivity of XNNPACK's PT2E scheme, and the keep-float search that
`--max-accuracy-drop` runs for ExecuTorch and Core ML (OpenVINO and ONNX use NNCF's own accuracy control).

A layer ("unit") is every op that reads INT8 values under one module path: a linear or a conv (its input and
weight), a block's residual adds, a LayerNorm's statistics, an attention's reshapes. Each unit can be switched back
to float in the calibrated graph itself (its inputs taken from before their quantizers, linears and convs with their
float weight and bias), so the whole table comes from one calibration. Keeping unit U float in an export is
`keep_float=("^U$",)`: the XNNPACK quantizer then leaves exactly those ops unannotated.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .ptq import QuantOptions, _module_of, _module_path, float_outputs, quantize_pt2e

WEIGHTED = (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default)


def _is_dequantize(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and "dequantize" in str(node.target)


def _is_quantize(node) -> bool:
    return (isinstance(node, torch.fx.Node) and node.op == "call_function" and "quantize_per" in str(node.target)
            and "dequantize" not in str(node.target))


def _inputs(node) -> list:
    """Direct node arguments, one level into lists (cat takes a list of tensors)."""
    flat = []
    for arg in node.args:
        flat.extend(arg if isinstance(arg, (list, tuple)) else [arg])
    return flat


def _unit_of(node) -> str:
    return _module_path(node) or "(root)"


def _reads_int8(node) -> bool:
    return node.op == "call_function" and not _is_quantize(node) and not _is_dequantize(node) and any(
        map(_is_dequantize, _inputs(node)))


def units(graph: torch.fx.GraphModule) -> dict[str, str]:
    """Units of a converted PT2E graph that read INT8 values, in graph order: module path -> kind (the module's
    class: Linear, Conv2d, a Block's residual adds, a LayerNorm's statistics, an attention's reshapes...)."""
    found: dict[str, str] = {}
    for node in graph.graph.nodes:
        if _reads_int8(node):
            owner = _module_of(node)
            kind = getattr(owner[1], "__name__", str(owner[1])).split(".")[-1] if owner else "graph"
            found.setdefault(_unit_of(node), {"Linear": "linear", "FlatLinear": "linear", "Conv2d": "conv"}.get(
                kind, "residual add" if kind.endswith("Block") else kind))
    return found


def keep_float_pattern(unit: str) -> str:
    """The --keep-float regular expression that keeps exactly this unit float (module paths match whole)."""
    return f"^{re.escape(unit)}$"


def _float_arg(gm, model: nn.Module, node, arg, index: int, float_units: set[str]):
    """What `node` reads in float instead of the dequantized `arg`: the activation before its quantizer, or the
    quantized module's own float weight / bias. An activation stays quantized when its producer is INT8 itself:
    XNNPACK's annotations quantize their own output, so the quantizer is the producer's, not this node's."""
    if _is_dequantize(arg) and _is_quantize(arg.args[0]):
        producer = arg.args[0].args[0]
        owned = (isinstance(producer, torch.fx.Node) and _reads_int8(producer)
                 and _unit_of(producer) not in float_units)
        return arg if owned else producer
    if node.target in WEIGHTED and index in (1, 2):
        tensor = getattr(model.get_submodule(_module_path(node)), ("weight", "bias")[index - 1], None)
        if tensor is not None:
            attr = f"_float_{_module_path(node).replace('.', '_')}_{index}"
            gm.register_buffer(attr, tensor.detach().clone())
            with gm.graph.inserting_before(node):
                return gm.graph.get_attr(attr)
    return arg


def with_float_units(graph: torch.fx.GraphModule, model: nn.Module, float_units: set[str]) -> torch.fx.GraphModule:
    """A copy of the calibrated graph as an export with these units in --keep-float computes it: their nodes read
    float (inputs from before the quantizers they own; linears and convs the float weight and bias of `model`, the
    module that was quantized), while an INT8 neighbour still quantizes its own input or output."""
    # The graph's outputs are nobody's input: a float unit's output quantizer before them goes with the unit.
    gm = float_outputs(copy.deepcopy(graph), lambda producer: _unit_of(producer) in float_units)
    for node in list(gm.graph.nodes):
        if not _reads_int8(node) or _unit_of(node) not in float_units:
            continue
        args = []
        for index, arg in enumerate(node.args):
            if isinstance(arg, (list, tuple)):
                args.append(type(arg)(_float_arg(gm, model, node, a, -1, float_units) if _is_dequantize(a) else a
                                      for a in arg))
            elif _is_dequantize(arg) or (node.target in WEIGHTED and index == 2 and isinstance(arg, torch.fx.Node)):
                # The bias too: NNCF's bias correction moved it to compensate for the INT8 weight.
                args.append(_float_arg(gm, model, node, arg, index, float_units))
            else:
                args.append(arg)
        node.args = tuple(args)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


@torch.no_grad()
def logits_of(module: nn.Module, images: Tensor, batch: int) -> np.ndarray:
    """Logits in batches of `batch` (a short last batch is padded to it)."""
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        n = len(x)
        if n < batch:
            x = torch.cat([x, x[:1].expand(batch - n, *x.shape[1:])])
        out.append(module(x)[:n].float())
    return torch.cat(out).numpy()


def metrics(logits: np.ndarray, fp32: np.ndarray, labels: np.ndarray | None) -> dict:
    """top-1 (labels), agreement with FP32, KL(FP32 || INT8) and the drop: top-1 points lost with labels, else
    agreement points short of 100."""
    agree = float((logits.argmax(1) == fp32.argmax(1)).mean() * 100)
    p = torch.log_softmax(torch.from_numpy(fp32).double(), 1)
    q = torch.log_softmax(torch.from_numpy(logits).double(), 1)
    kl = float((p.exp() * (p - q)).sum(1).mean())
    out = {"agreement": agree, "kl": kl}
    if labels is not None:
        top1, ref = float((logits.argmax(1) == labels).mean() * 100), float((fp32.argmax(1) == labels).mean() * 100)
        out.update({"top1": top1, "drop_pp": ref - top1})
    else:
        out["drop_pp"] = 100.0 - agree
    return out


@dataclass
class Sensitivity:
    """The calibrated graph and what every unit does to the metrics on the evaluation images."""
    graph: torch.fx.GraphModule
    model: nn.Module
    batch: int
    images: Tensor
    fp32: np.ndarray
    labels: np.ndarray | None
    all_int8: dict
    rows: list[dict] = field(default_factory=list)

    def evaluate(self, float_units: set[str], limit: int | None = None) -> dict:
        """Metrics with `float_units` in float, on the first `limit` images (all by default)."""
        gm = with_float_units(self.graph, self.model, float_units) if float_units else self.graph
        n = len(self.images) if limit is None else min(limit, len(self.images))
        labels = None if self.labels is None else self.labels[:n]
        return metrics(logits_of(gm, self.images[:n], self.batch), self.fp32[:n], labels)

    def ranking(self) -> list[str]:
        """Units by how much keeping only them float brings the INT8 model closer to FP32 (KL divergence: top-1
        moves by whole images, too coarse to rank 80 layers on a thousand), then by their error alone in INT8."""
        return [r["unit"] for r in sorted(self.rows, key=lambda r: (r["kept_float"]["kl"],
                                                                     -r.get("only_int8", {}).get("kl", 0.0)))]


def calibrated_graph(model: nn.Module, calibration: Tensor, opts: QuantOptions) -> torch.fx.GraphModule:
    """XNNPACK-scheme INT8 graph of `model` with a dynamic batch dimension, calibrated by NNCF on the same batch-1
    images and options as an export (`quantize_pt2e`), so its ranges are the export's (checked: identical), while
    evaluation runs batched."""
    if opts.smooth_quant_alpha is not None and opts.smooth_quant_alpha >= 0:
        raise ValueError("the sensitivity analysis needs SmoothQuant off (it rescales weights, so a layer switched "
                         "back to float would not be the original); pass a negative --smooth-quant-alpha")
    from .ptq import calibration_list

    example = torch.cat([calibration[:1]] * 2)  # batch 2: an example of batch 1 would specialise the dimension
    batch = torch.export.Dim("batch", min=1, max=4096)
    return quantize_pt2e(model, example, calibration_list(calibration), opts, dynamic_shapes=({0: batch},))


def measure(model: nn.Module, calibration: Tensor, images: Tensor, labels: np.ndarray | None, opts: QuantOptions,
            batch: int = 100) -> Sensitivity:
    """Calibrate once and score FP32 and all-INT8 on `images`; `rank` fills in the per-unit rows."""
    # At least 2: the graph specialises batch 1 (measured: batch 1 differs from 2..N, which agree exactly).
    batch = max(2, min(batch, len(images)))
    graph = calibrated_graph(model, calibration, opts)
    result = Sensitivity(graph, model, batch, images, logits_of(model, images, batch), labels, {})
    result.all_int8 = result.evaluate(set())
    return result


def rank(result: Sensitivity, only_int8: bool = True, progress=None, limit: int | None = None) -> Sensitivity:
    """Per-unit rows: metrics when only that unit is kept float, and (`only_int8`) when only it is INT8; on the
    first `limit` images (the KL divergence ranks smoothly on fewer images than a top-1 drop needs)."""
    found = units(result.graph)
    result.rows = []
    for done, (unit, kind) in enumerate(found.items(), 1):
        row = {"unit": unit, "kind": kind, "kept_float": result.evaluate({unit}, limit)}
        if only_int8:
            row["only_int8"] = result.evaluate(set(found) - {unit}, limit)
        result.rows.append(row)
        if progress is not None:
            progress(done, len(found))
    return result


def analyse(model: nn.Module, calibration: Tensor, images: Tensor, labels: np.ndarray | None, opts: QuantOptions,
            batch: int = 100, progress=None) -> Sensitivity:
    """The full table (python -m quantize sensitivity)."""
    return rank(measure(model, calibration, images, labels, opts, batch), progress=progress)


@dataclass
class SearchResult:
    met: bool
    kept_float: list[str]
    drop_pp: float
    all_int8_drop_pp: float
    tried: list[dict]


# The keep-float search ranks on this many of its images (a KL ranking is smooth; the drop it checks uses all).
RANK_IMAGES = 1000


def search_keep_float(sens: Sensitivity, max_drop_pp: float, after: SearchResult | None = None) -> SearchResult:
    """Keep the most sensitive units float, the fewest in ranking order whose simulated drop on the search images is
    at most `max_drop_pp` (bisection over how many: ~7 evaluations instead of one per unit; the drop falls with
    more units float, up to the noise of single images). `after`: go on from an earlier search (when a runtime
    measured more than the simulation). Not met when only every unit float would meet it (INT8 buys nothing)."""
    first = sens.all_int8["drop_pp"]
    tried = list(after.tried) if after else [{"kept_float": 0, "drop_pp": first}]
    if after is None and first <= max_drop_pp:
        return SearchResult(True, [], first, first, tried)
    if not sens.rows:
        rank(sens, only_int8=False, limit=RANK_IMAGES)
    ranked = sens.ranking()
    drops: dict[int, float] = {}

    def drop(k: int) -> float:
        if k not in drops:
            drops[k] = sens.evaluate(set(ranked[:k]))["drop_pp"]
            tried.append({"kept_float": k, "drop_pp": drops[k]})
        return drops[k]

    lo, hi = (len(after.kept_float) if after else 0), len(ranked) - 1
    if hi <= lo or drop(hi) > max_drop_pp:
        return SearchResult(False, ranked, 0.0, first, tried)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if drop(mid) <= max_drop_pp else (mid, hi)
    return SearchResult(True, ranked[:hi], drops[hi], first, tried)
