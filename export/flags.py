"""The flag table: every flag of `python -m export`, where it is used (task x size mode x precision x target, and for
INT8 where the activation ranges come from) and what the manifest records of it. Given anywhere else it would be
ignored or only half honoured, so `check_flags` refuses it (exit 2) before any work. A flag that some of the
requested targets use is accepted: each artifact's `flags` in the manifest lists the given flags that shaped it. The
facts about targets are the registry's. tests/test_flag_table.py walks the whole table, and fails for a flag
without a row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_crossformer import targets
from edge_crossformer.checkpoint import learned_ranges_file
from edge_crossformer.compression import SEARCHABLE_WEIGHTS, weight_scheme
from edge_crossformer.targets import PRECISIONS, SIZE_MODES

from .request import ExportError, ExportRequest

TASKS = ("classify", "features")
# Where an INT8 artifact's activation ranges come from (int8_ranges).
RANGES = ("calibrated", "dynamic", "learned")


@dataclass(frozen=True)
class Flag:
    flag: str
    # The ExportRequest field it sets; "" where argparse alone handles it.
    field: str
    # Where the manifest says what it did.
    recorded: str
    tasks: tuple[str, ...] = TASKS
    size_modes: tuple[str, ...] = SIZE_MODES
    precisions: tuple[str, ...] = PRECISIONS
    # Which targets use it (a registry fact); None: every target.
    target: Callable[[targets.Target], bool] | None = None
    # INT8 artifacts only: the activation-range sources it shapes (RANGES).
    ranges: tuple[str, ...] = RANGES
    # Where it applies, in words, for the refusal.
    scope: str = ""

    @property
    def restricted(self) -> bool:
        """Used only somewhere (an artifact's `flags` lists it), not by every export (recorded elsewhere)."""
        return (self.tasks, self.size_modes, self.precisions, self.target, self.ranges) != (
            TASKS, SIZE_MODES, PRECISIONS, None, RANGES)


def _int8(what: str) -> str:
    return f"applies to INT8 {what}only"


FLAGS: tuple[Flag, ...] = (
    Flag("--target", "targets", "artifacts[].target"),
    Flag("--model", "model", "model"),
    Flag("--checkpoint", "checkpoint", "source.checkpoint, source.checkpoint_sha256"),
    Flag("--task", "task", "task (a backbone), output (the classifier)"),
    Flag("--img-size", "img_size", "img_size (features: sizes.kind fixed)", size_modes=("fixed",),
         scope="sets the one input size"),
    Flag("--out-indices", "out_indices", "outputs, strides", tasks=("features",),
         scope="picks a backbone's stage maps (--task features) only"),
    # INT8 with --sizes is not supported yet (each size would be calibrated on its own).
    Flag("--sizes", "sizes", "sizes (kind list, entry points)", tasks=("features",), size_modes=("list",),
         precisions=("fp32", "fp16"), target=lambda t: t.serves("list"),
         scope=f"applies to FP32 / FP16 backbones on {targets.titles(lambda t: t.serves('list'))} only"),
    # Two rows: the classifier for a range is FP32 / FP16 for now, a backbone's takes INT8 too.
    Flag("--dynamic-size", "dynamic_size", "sizes (kind range)", tasks=("classify",), size_modes=("range",),
         precisions=("fp32", "fp16"), target=lambda t: t.serves("range"),
         scope=f"applies to FP32 / FP16 classifiers and to backbones, on "
               f"{targets.titles(lambda t: t.serves('range'))} only"),
    Flag("--dynamic-size", "dynamic_size", "sizes (kind range)", tasks=("features",), size_modes=("range",),
         target=lambda t: t.serves("range"),
         scope=f"applies to FP32 / FP16 classifiers and to backbones, on "
               f"{targets.titles(lambda t: t.serves('range'))} only"),
    Flag("--num-classes", "num_classes", "num_classes, output.shape", tasks=("classify",),
         scope="applies to the classifier only (a backbone has no head)"),
    Flag("--labels", "labels_source", "labels, labels.txt", tasks=("classify",),
         scope="applies to the classifier only (a backbone has no head)"),
    Flag("--reset-head", "reset_head", "source.head", tasks=("classify",),
         scope="applies to the classifier only (a backbone has no head)"),
    Flag("--precision", "precision", "artifacts[].precision"),
    Flag("--calib-data", "calib_data", "artifacts[].parity.images (held-out images; calibration where calibrated)",
         precisions=("int8",), scope=_int8("")),
    Flag("--calib-size", "calib_size", "artifacts[].flags, parity.images (N calibration images)",
         precisions=("int8",), ranges=("calibrated",), scope=_int8("with calibrated activation ranges ")),
    Flag("--smooth-quant-alpha", "smooth_quant_alpha", "artifacts[].flags", precisions=("int8",),
         ranges=("calibrated",), scope=_int8("with calibrated activation ranges ")),
    Flag("--keep-float", "keep_float", "artifacts[].flags", precisions=("int8",), ranges=("calibrated", "dynamic"),
         scope=_int8("with calibrated or dynamic activation ranges ")),
    Flag("--int8-activations", "int8_activations", "artifacts[].flags, info.int8_ranges (ExecuTorch)",
         precisions=("int8",), scope=_int8("")),
    Flag("--full-range-int8-weights", "full_range_int8_weights", "info.int8_weights, info.saturation_check",
         precisions=("int8",), target=lambda t: t.x86_pair_sums,
         scope=_int8(f"{targets.titles(lambda t: t.x86_pair_sums)} artifacts ")),
    # Grouped weight schemes only (edge_crossformer.compression: WeightScheme.group_size).
    Flag("--group-size", "group_size", "artifacts[].compression.group_size",
         precisions=tuple(p for p in PRECISIONS if (s := weight_scheme(p)) is not None and s.grouped),
         scope="applies to grouped low-bit weights (--precision w4) only"),
    # Profiled and checked on the fixed-size classifier (the keep-float patterns name its OpenVINO IR's linears).
    Flag("--cpu", "cpu", "artifacts[].info.cpu_int8", tasks=("classify",), size_modes=("fixed",),
         precisions=("int8",), target=lambda t: bool(t.cpu_keep_float),
         scope=f"applies to fixed-size INT8 classifiers on {targets.titles(lambda t: bool(t.cpu_keep_float))} only "
               "(the only INT8 that differs per x86 CPU)"),
    Flag("--max-accuracy-drop", "max_accuracy_drop", "info.accuracy_control, checks", tasks=("classify",),
         size_modes=("fixed",), precisions=("int8",), ranges=("calibrated",),
         scope="applies to the classifier's INT8 with calibrated activation ranges, and to weights below 8 bits "
               f"({' / '.join(SEARCHABLE_WEIGHTS)}), only"),
    # Compressed weights: the units 4 bits hurt most are kept at 8 bits (quantize.weights).
    Flag("--max-accuracy-drop", "max_accuracy_drop", "info.accuracy_control, checks", tasks=("classify",),
         size_modes=("fixed",), precisions=SEARCHABLE_WEIGHTS,
         scope="applies to the classifier's INT8 with calibrated activation ranges, and to weights below 8 bits "
               f"({' / '.join(SEARCHABLE_WEIGHTS)}), only"),
    Flag("--labels-map-by-order", "labels_map_by_order", "int8_calibration.labels", tasks=("classify",),
         precisions=("int8",), scope="applies to the classifier's INT8 only (a labelled calibration set)"),
    # Compressed weights are not verified on aarch64 yet (export.arm_parity judges INT8's held-out images only).
    Flag("--verify-arm", "verify_arm", "artifacts[].parity.cross_checks['aarch64 ... (QEMU-emulated)']",
         tasks=("classify",), size_modes=("fixed",), precisions=("fp32", "fp16", "int8"),
         target=lambda t: t.runtime in ("executorch", "onnxruntime", "openvino"),
         scope="applies to FP32 / FP16 / INT8 fixed-size classifiers on targets with an aarch64 runtime (not "
               "Core ML)"),
    Flag("--output", "output", "(the folder manifest.json is in)"),
    Flag("--overwrite", "overwrite", "(nothing: it only allows replacing an earlier export)"),
    # The list mode builds each size's model itself (ModelSource.deployable_at), always the rewrite.
    Flag("--reference-model", "reference_model", "source.exported_model", size_modes=("fixed", "range"),
         scope="applies to one size or a range (not --sizes, whose entry points are always the rewrite)"),
    # INT8 ONNX is calibrated and fixed for ONNX Runtime's kernels at batch 1 (export/onnx_qdq.py).
    Flag("--dynamic-batch", "dynamic_batch", "info.dynamic_batch", tasks=("classify",), size_modes=("fixed",),
         precisions=("fp32", "fp16"), target=lambda t: t.dynamic_batch,
         scope=f"applies to the FP32 classifier at one size on {targets.titles(lambda t: t.dynamic_batch)} only"),
    # INT8 is judged on held-out real images (export.int8), not on the parity samples.
    Flag("--parity-samples", "parity_samples", "parity.samples", precisions=("fp32", "fp16"),
         scope="applies to FP32 / FP16 artifacts only (INT8 is judged on held-out real images)"),
)
# A flag may have several rows (where each is used); it is used where any of its rows is.
FLAG_BY_FIELD = {f.field: f for f in FLAGS}


def given(req: ExportRequest, field: str) -> bool:
    """Whether the request sets `field`: presence, not truthiness (0 and 0.0 are given)."""
    value = getattr(req, field)
    return value is not None and value is not False and not (isinstance(value, (str, tuple, list)) and not value)


def int8_ranges(req: ExportRequest, target: targets.Target) -> str:
    """Where an INT8 artifact of `target` gets its activation ranges (RANGES), as export.schemes decides."""
    if req.int8_activations == "dynamic" and "dynamic" in target.int8_activations:
        return "dynamic"
    if target.uses_learned_ranges and not req.reference_model and learned_ranges_file(req.checkpoint):
        return "learned"
    return "calibrated"


RANGE_WORDS = {"dynamic": "ranges per row at run time (--int8-activations dynamic)",
               "learned": "ranges learned in QAT (beside the checkpoint)", "calibrated": "calibrated ranges"}


def why_unused(flag: Flag, req: ExportRequest, name: str, precision: str | None = None) -> tuple[str, str] | None:
    """(the dimension, in words) that makes `flag` do nothing for target `name`'s artifact (of `precision`: the
    target's by default), or None where it is used."""
    target, precision = targets.get(name), precision or req.precision_for(name)
    if req.task not in flag.tasks:
        return "task", f"--task {req.task}"
    if req.size_mode not in flag.size_modes:
        return "size", {"fixed": "one size", "range": "--dynamic-size", "list": "--sizes"}[req.size_mode]
    if precision not in flag.precisions:
        return "precision", f"{name} is {precision}"
    if flag.target is not None and not flag.target(target):
        return "target", f"{name} does not take it"
    if precision == "int8" and int8_ranges(req, target) not in flag.ranges:
        return int8_ranges(req, target), f"{name} INT8 uses {RANGE_WORDS[int8_ranges(req, target)]}"
    return None


def flags_for(req: ExportRequest, name: str, precision: str) -> dict:
    """The given flags that shaped target `name`'s artifact of `precision` (its manifest entry's `flags`)."""
    return {f.flag: _json_value(getattr(req, f.field)) for f in FLAGS if f.field in (req.flags_given or ())
            and f.restricted and why_unused(f, req, name, precision) is None}


def used(field: str, req: ExportRequest, name: str, precision: str | None = None) -> bool:
    """Whether a row of the flag that sets `field` uses it for target `name`'s artifact."""
    return any(why_unused(f, req, name, precision) is None for f in FLAGS if f.field == field)


def with_options(req: ExportRequest, **options) -> ExportRequest:
    """`req` with each of `options` (ExportRequest fields) set where one of its targets uses it (FLAGS), left unset
    elsewhere: for callers that hand one set of knobs to several exports (the benchmarks). A user's own flags go
    through check_flags, which refuses instead."""
    for field, value in options.items():
        if value is not None and any(used(field, req, t) for t in req.targets):
            setattr(req, field, value)
    return req


def flags_given(req: ExportRequest) -> dict:
    """Every flag the request gave, with its value (the manifest's `flags`)."""
    return {f.flag: _json_value(getattr(req, f.field)) for f in FLAGS if f.field in (req.flags_given or ())}


def _json_value(value):
    return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value


def check_flags(req: ExportRequest) -> None:
    """Refuse every given flag that no requested target would use (FLAGS), naming why and the fix."""
    for flag in FLAGS:
        if flag.field not in (req.flags_given or ()) or any(used(flag.field, req, t) for t in req.targets):
            continue
        reasons = [why_unused(flag, req, name) for name in req.targets]
        if all(reasons):
            words = "; ".join(dict.fromkeys(why for _, why in reasons))
            raise ExportError(f"{flag.flag} {flag.scope}: {_fix(flag, reasons[0][0])} (this export: {words})")


def _fix(flag: Flag, dimension: str) -> str:
    """How to make the flag count (after the dimension that fails it), or to drop it."""
    drop = f"drop {flag.flag}"
    able = ",".join(t for t in targets.names(flag.target) if set(targets.get(t).precisions) & set(flag.precisions))
    return {
        "task": f"add --task features, or {drop}" if flag.tasks == ("features",) else drop,
        "size": f"export one size (--img-size), or {drop}" if "fixed" in flag.size_modes else drop,
        "precision": (f"add --precision int8{'' if flag.target is None else ' and --target ' + able}, or {drop}"
                      if "int8" in flag.precisions else
                      f"{drop}, or export {' / '.join(flag.precisions).upper()} in a separate command"),
        "target": f"add --target {able} (or all), or {drop}",
        "dynamic": f"{drop}, or use static activations",
        "learned": f"{drop}, or move the QAT ranges file away to calibrate instead",
        "calibrated": drop,
    }[dimension]
