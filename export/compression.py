"""Weight compression for the exporters (`--precision w8 / w4 / palette4 / palette6`, edge_crossformer.compression):
the request's checks, the plan a target compresses by (`ctx.weights`), and what the manifest records.

A target that runs a scheme lists it in the registry's `precisions`; its module reads `ctx.weights` (a
`WeightPlan`: the scheme, the group size, which module paths stay at 8 bits) and returns an Artifact whose
`info["compression"]` holds `plan.record(...)` with the layers it compressed. The pipeline adds the file size and
the ratio to the FP32 weights (`manifest_entry`); parity gates it on held-out images like INT8 (export.parity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_crossformer import get_config, targets
from edge_crossformer.compression import (GROUP_SIZES, SEARCHABLE_WEIGHTS, WEIGHT_SCHEMES, WeightScheme, is_compressed,
                                          linear_in_features, role_patterns, weight_scheme)

from .int8 import check_calibration_request
from .request import ExportError, ExportRequest


@dataclass(frozen=True)
class WeightPlan:
    scheme: WeightScheme
    # Input channels per scale (grouped schemes), or None: per output channel / per tensor.
    group_size: int | None
    # Module paths (regular expressions) kept at 8-bit weights.
    keep_8bit: tuple[str, ...]

    def kept(self, module_path: str) -> bool:
        """Whether the weight of the module at `module_path` stays at 8 bits (export-friendly model's paths; a
        target strips its own prefixes first)."""
        return any(re.search(pattern, module_path) for pattern in self.keep_8bit)

    def record(self, compressed: int, kept_8bit: int, **target_facts) -> dict:
        """The manifest's `compression` for an artifact: the scheme, and how many weight tensors the target wrote at
        the scheme's bits and at 8 bits (a test fails when `compressed` is 0), plus its own facts (e.g. the runtime
        op that runs them)."""
        return {**self.scheme.record(self.group_size), "kept_8bit_patterns": list(self.keep_8bit),
                "layers_compressed": compressed, "layers_kept_8bit": kept_8bit, **target_facts}


def plan_for(req: ExportRequest, precision: str, stages: int) -> WeightPlan | None:
    """The plan of a compressed precision (None for fp32 / fp16 / int8)."""
    scheme = weight_scheme(precision)
    if scheme is None:
        return None
    group = (req.group_size or scheme.group_size) if scheme.grouped else None
    return WeightPlan(scheme, group, role_patterns(scheme.keep_8bit, stages))


def searchable_weights(precision: str) -> bool:
    """Whether --max-accuracy-drop can keep layers of this compressed precision at 8 bits (w4, palette4, ...)."""
    return precision in SEARCHABLE_WEIGHTS


def compressed_targets(req: ExportRequest) -> list[str]:
    return [t for t in req.targets if is_compressed(req.precision_for(t))]


def unsupported_message(precision: str, name: str) -> str | None:
    """The refusal for a compressed precision target `name` does not offer, naming the targets that do (None for
    other precisions: export.validate's generic message)."""
    scheme = weight_scheme(precision)
    if scheme is None:
        return None
    able = targets.names(lambda t: t.supports(precision))
    where = (f"available for: {', '.join(able)}" if able else "no target offers it yet")
    if precision.startswith("int8+"):
        alone = " or ".join(f"--precision {p}" for p in ("int8", scheme.name) if targets.get(name).supports(p))
        return (f"--precision {precision} (INT8 activations with {scheme.bits}-bit weights) cannot be made for "
                f"{name}: its runtime does not run both together; {where}"
                + (f". For {name}, export {alone} in a separate command" if alone else ""))
    offered = [p for p in targets.get(name).precisions if is_compressed(p)]
    what = ("palettization (weights as indices into a look-up table) is Core ML's"
            if scheme.kind == "palette" else f"{scheme.bits}-bit weights are not offered by {name}")
    return (f"--precision {precision}: {what}; {where}. {name} offers "
            f"{', '.join(offered) if offered else 'no weight compression'}"
            + (f" ({', '.join(targets.get(name).precisions)} in all)" if not offered else ""))


def check_compression_request(req: ExportRequest, cfg) -> None:
    """A compressed export the request can have: the classifier at one size, and a group size that is a power of
    two dividing the input channels of every layer it applies to."""
    names = compressed_targets(req)
    if req.group_size is not None and not any(weight_scheme(req.precision_for(t)).grouped for t in names):
        return  # export.flags refuses it, naming where it applies
    if not names:
        return
    if req.task != "classify" or req.dynamic_size is not None:
        raise ExportError(f"--precision {req.precision_for(names[0])} exports the classifier at one size for now: "
                          "drop --task features / --dynamic-size, or export FP32 / FP16 / INT8 for those")
    for name in names:
        scheme = weight_scheme(req.precision_for(name))
        if scheme.grouped:
            check_group_size(req.group_size or scheme.group_size, scheme, cfg, req.model,
                             given=req.group_size is not None)
            check_target_group_size(req.group_size or scheme.group_size, name)


def check_target_group_size(group: int, name: str) -> None:
    """A group size the target's runtime takes (the registry's `group_sizes`, where it takes fewer than all)."""
    allowed = targets.get(name).group_sizes
    if allowed and group not in allowed:
        others = targets.names(lambda t: t.supports("w4") and not t.group_sizes)
        raise ExportError(f"--group-size {group}: {name} takes {' / '.join(map(str, allowed))} "
                          f"({targets.get(name).group_sizes_why}); use one of those"
                          + (f", or export {', '.join(others)} with {group} in a separate command" if others else ""))


def check_group_size(group: int, scheme: WeightScheme, cfg, model: str, given: bool) -> None:
    flag = f"--group-size {group}" if given else f"the default group size {group}"
    if group not in GROUP_SIZES:
        raise ExportError(f"{flag}: the group size must be one of {', '.join(map(str, GROUP_SIZES))} (input "
                          "channels per scale; ONNX Runtime's MatMulNBits takes powers of two >= 16)")
    channels = linear_in_features(cfg, scheme.keep_8bit)
    bad = {where: c for where, c in channels.items() if c % group}
    if bad:
        fits = [g for g in GROUP_SIZES if all(c % g == 0 for c in channels.values())]
        where, c = next(iter(bad.items()))
        raise ExportError(f"{flag} does not divide the input channels of {model}'s {scheme.bits}-bit layers "
                          f"({where}: {c} channels); use --group-size {' / '.join(map(str, fits)) or '16'}")


def held_out_images(precision: str, req: ExportRequest) -> bool:
    """Whether an artifact of `precision` is judged on held-out real images (export.int8.Int8Data.parity) rather
    than on the parity samples: INT8 always; compressed weights where the model has labelled images of its own (the
    bundled model's Fashion-MNIST test split; --calib-data is INT8's)."""
    if precision == "int8":
        return True
    if not is_compressed(precision) or req.calib_data is not None:
        return False
    try:
        check_calibration_request(req, get_config(req.model))
    except ExportError:
        return False
    return True


def manifest_entry(info: dict, file_bytes: int, params: int) -> dict:
    """The manifest's `compression` for an artifact: the target's record, its size on disk and the ratio of the FP32
    weights (4 bytes per parameter) to it."""
    fp32 = 4 * params
    return {**info, "bytes": file_bytes, "fp32_weight_bytes": fp32, "ratio_vs_fp32": round(fp32 / file_bytes, 3)}


def describe() -> str:
    """The schemes for --help."""
    return "; ".join(f"{s.name}: {s.help}" for s in WEIGHT_SCHEMES.values())
