"""OpenVINO weight compression (`--precision w8 / w4`, export.compression): NNCF `compress_weights` on the ov.Model,
and what the CPU plugin makes of the compressed weights.

w8: INT8 weights per output channel (symmetric) on every MatMul and Convolution. w4: INT4 weights (symmetric) in
groups of the plan's group size on the MatMuls, the layers the scheme keeps at 8 bits (stem, merges, head: by
measurement, docs/compression.md) at INT8 per channel. Weights are read back from the graph, not from NNCF's log:
a compression that did nothing shows as 0 compressed layers (tests/test_compression.py).
"""

from __future__ import annotations

import re

from .base import TargetContext, require

# OpenVINO's module tracing names a weighted op `__module.model.<module path>/aten::linear/MatMul`.
MODULE = re.compile(r"^__module\.(?:model\.)?([^/]*)/")
WEIGHTED = ("MatMul", "Convolution")
# Nodes between a weight Constant and its op once NNCF has compressed it (Convert, Subtract zero point, Multiply
# scale, Reshape groups).
DECOMPRESSION = ("Convert", "Subtract", "Multiply", "Reshape")


def module_path(op) -> str | None:
    found = MODULE.match(op.get_friendly_name())
    return found.group(1) if found else None


def weight_type(op) -> str | None:
    """The element type a MatMul / Convolution's weight is stored in ('f32', 'i8', 'i4', ...), or None where its
    second input is computed (attention's MatMuls)."""
    node = op.input_value(1).get_node()
    while node.get_type_name() in DECOMPRESSION:
        node = node.input_value(0).get_node()
    return node.get_element_type().get_type_name() if node.get_type_name() == "Constant" else None


def weighted_ops(model) -> list:
    return [op for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED and module_path(op)
            and weight_type(op) is not None]


def compress(ctx: TargetContext, model):
    """The ov.Model with the plan's weights compressed; its manifest record (the plan's, with what the file holds
    and what the CPU plugin runs)."""
    nncf = require("nncf", "openvino")
    mode, plan = nncf.CompressWeightsMode, ctx.weights
    ops = weighted_ops(model)
    kept = [op.get_friendly_name() for op in ops if plan.kept(module_path(op))]
    low = [op.get_friendly_name() for op in ops if op.get_friendly_name() not in kept]
    ctx.step(f"compressing OpenVINO weights to {plan.scheme.bits} bits (NNCF compress_weights)")
    if plan.scheme.bits == 8:
        model = nncf.compress_weights(model, mode=mode.INT8_SYM)
    else:
        # all_layers: NNCF would otherwise keep the last MatMul at its backup precision on its own; the scheme's
        # roles say what stays 8-bit.
        model = nncf.compress_weights(model, mode=mode.INT4_SYM, group_size=plan.group_size, ratio=1.0,
                                      all_layers=True, ignored_scope=_scope(nncf, kept))
        if kept:
            model = nncf.compress_weights(model, mode=mode.INT8_SYM, ignored_scope=_scope(nncf, low))
    stored = {op.get_friendly_name(): weight_type(op) for op in weighted_ops(model)}
    bits = {"i4": 4, "u4": 4, "i8": 8, "u8": 8}
    at_scheme = sum(bits.get(t) == plan.scheme.bits for t in stored.values())
    at_8 = sum(bits.get(t) == 8 for t in stored.values()) if plan.scheme.bits != 8 else 0
    record = plan.record(at_scheme, at_8, stored_weight_types=_count(stored.values()),
                         float_weights=[name for name, t in stored.items() if t not in bits])
    return model, record


def _scope(nncf, names: list[str]):
    return nncf.IgnoredScope(names=names, validate=False) if names else None


def _count(values) -> dict:
    found: dict = {}
    for value in values:
        found[value] = found.get(value, 0) + 1
    return dict(sorted(found.items()))


def runtime_weights(compiled) -> dict:
    """What the CPU plugin runs: per layer type, the precision of its weighted ops' weight inputs as compiled
    (e.g. FullyConnected with i4 weights: decompressed inside the kernel; a Convolution's INT8 weights become f32
    at load time)."""
    found: dict = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        kind = op.get_rt_info()["layerType"].astype(str)
        if kind in ("FullyConnected", "Convolution") and op.get_input_size() > 1:
            weight = op.input_value(1).get_element_type().get_type_name()
            key = f"{kind} {weight}"
            found[key] = found.get(key, 0) + 1
    return dict(sorted(found.items()))
