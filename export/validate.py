"""Validation of an export request: fill the per-model defaults and reject anything that cannot work, before any
work (bad input writes nothing). What each target can do comes from the registry (edge_crossformer.targets)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_crossformer import get_config, targets
from edge_crossformer.backbone import BackboneConfigError, as_hw, check_out_indices, check_range
from edge_crossformer.checkpoint import learned_ranges_file
from edge_crossformer.cli import MAX_FEATURE_SIDE, MAX_IMAGES, MAX_IMG_SIZE, MAX_NUM_CLASSES, regex_problem
from edge_crossformer.registry import ASSETS, check_img_size, check_num_classes

from .int8 import check_calibration_request
from edge_crossformer.targets import PRECISIONS, SIZE_MODES

from .request import (DEFAULTS, INT8_ACTIVATIONS, MAX_PARITY_SAMPLES, ExportError, ExportRequest, check_output,
                      read_labels)
from .sizes import example_size

# --sizes: entry points per artifact.
MAX_SIZES = 8


def check_accuracy_request(req: ExportRequest) -> None:
    drop = req.max_accuracy_drop
    if not math.isfinite(drop) or not 0 <= drop < 100:
        raise ExportError(f"--max-accuracy-drop is in percentage points, 0 <= PP < 100; got {drop}")
    if not any(req.precision_for(t) == "int8" for t in req.targets):
        raise ExportError("--max-accuracy-drop applies to INT8: add --precision int8")
    if req.int8_activations == "dynamic":
        raise ExportError("--max-accuracy-drop searches the static INT8 scheme; drop --int8-activations dynamic "
                          "(dynamic INT8 already keeps activations in float between linears)")
    pt2e = [t for t in req.targets if targets.get(t).int8_scheme == "xnnpack"]
    if pt2e and req.smooth_quant_alpha is not None and req.smooth_quant_alpha >= 0:
        raise ExportError(f"--max-accuracy-drop for {', '.join(pt2e)} needs SmoothQuant off (its per-layer search "
                          "switches layers back to their original float weights); pass --smooth-quant-alpha -1")
    if req.reference_model:
        raise ExportError("--max-accuracy-drop applies to the export-friendly model; drop --reference-model")
    ranges = learned_ranges_file(req.checkpoint)
    learned = [t for t in req.targets if targets.get(t).uses_learned_ranges]
    if ranges is not None and learned:
        raise ExportError(f"--max-accuracy-drop recalibrates, but {req.checkpoint} comes with ranges learned in QAT "
                          f"({ranges}); export {' / '.join(targets.get(t).title for t in learned)} without "
                          "--max-accuracy-drop to use them, or "
                          "move the ranges file away")



def validate(req: ExportRequest) -> ExportRequest:
    """Fill per-model defaults and reject anything that cannot work or any flag that would do nothing (FLAGS),
    before doing any work."""
    if req.flags_given is None:  # validating again must not count the defaults filled the first time as given
        req.flags_given = tuple(f.field for f in FLAGS if f.field and given(req, f.field))
    check_one_size_flag(req)
    if req.task not in TASKS:
        raise ExportError(f"--task must be classify or features, got {req.task!r}")
    validate_features(req) if req.task == "features" else validate_classifier(req)
    check_flags(req)
    for field, value in DEFAULTS.items():
        if getattr(req, field) is None:
            setattr(req, field, value)
    req.output = Path(os.path.abspath(req.output))
    check_output(req.output, req.overwrite, req.user_inputs())
    return req


def validate_classifier(req: ExportRequest) -> None:
    """The classifier's defaults and refusals."""
    if req.sizes is not None:
        raise ExportError("--sizes exports a backbone for several sizes: add --task features")
    if req.out_indices is not None:
        raise ExportError("--out-indices picks a backbone's stage maps: add --task features")
    if isinstance(req.img_size, (tuple, list)):
        if len(req.img_size) != 2 or req.img_size[0] != req.img_size[1]:
            raise ExportError(f"the classifier takes a square input: --img-size N (got {list(req.img_size)}); "
                              "non-square sizes are for backbones (--task features --img-size H W)")
        req.img_size = req.img_size[0]
    try:
        cfg = get_config(req.model)
        if req.img_size is None:
            req.img_size = cfg.default_img_size
        if req.num_classes is None:
            req.num_classes = cfg.default_num_classes
        check_img_size(req.img_size)
        check_num_classes(req.num_classes)
    except ValueError as e:
        raise ExportError(str(e)) from e
    req.img_hw = (req.img_size, req.img_size)
    if req.dynamic_size is not None:
        check_classifier_range(req, cfg)
    check_bounds(req)
    check_weights(req, cfg)
    check_precisions(req)
    req.labels, req.labels_source = labels_for(req, cfg)
    check_int8_activations(req)
    if req.max_accuracy_drop is not None:
        check_accuracy_request(req)
    if any(req.precision_for(t) == "int8" for t in req.targets):
        check_calibration_request(req, cfg)
    if req.plain_int8 and req.smooth_quant_alpha is not None:
        raise ExportError("plain_int8 takes NNCF's own recipe (SmoothQuant included): leave smooth_quant_alpha unset")



def check_one_size_flag(req: ExportRequest) -> None:
    """--img-size, --dynamic-size and --sizes each say every size the artifact serves: one of them at a time."""
    given = [flag for flag, value in (("--img-size", req.img_size), ("--dynamic-size", req.dynamic_size),
                                      ("--sizes", req.sizes)) if value is not None]
    if len(given) > 1:
        raise ExportError(f"{' and '.join(given)} both set the input size: give one (--img-size for one size, "
                          "--dynamic-size MIN MAX for a range on onnx / openvino, --sizes HxW ... for a list on "
                          "coreml / executorch)")



def check_weights(req: ExportRequest, cfg) -> None:
    """A checkpoint that exists (or bundled weights), and a head the request can have."""
    if req.checkpoint is None and cfg.bundled_checkpoint is None:
        raise ExportError(
            f"{req.model} has no bundled weights; pass --checkpoint PATH (an upstream .pth or .safetensors file). "
            "Upstream checkpoints must be downloaded by hand; nothing is fetched at run time"
        )
    if req.checkpoint is not None and not Path(req.checkpoint).exists():
        raise ExportError(f"checkpoint not found: {req.checkpoint}")
    if req.checkpoint is not None and not Path(req.checkpoint).is_file():
        raise ExportError(f"checkpoint {req.checkpoint} is not a file; pass the .pth/.pt/.safetensors file itself")
    if req.reset_head and req.checkpoint is None:
        raise ExportError("--reset-head replaces the head of a --checkpoint with another class count; pass "
                          "--checkpoint and --num-classes")
    if req.checkpoint is None and req.num_classes != cfg.default_num_classes:
        raise ExportError(f"the bundled {req.model} weights have {cfg.default_num_classes} classes; "
                          "pass --checkpoint to export another head")



def _able(where) -> str:
    return ", ".join(targets.names(where))



def check_precisions(req: ExportRequest) -> None:
    """Each target can produce the precision asked of it; target-only options name a target that takes them."""
    if req.dynamic_batch and not any(targets.get(t).dynamic_batch for t in req.targets):
        raise ExportError(f"--dynamic-batch applies to {targets.titles(lambda t: t.dynamic_batch)} only: add "
                          f"--target {_able(lambda t: t.dynamic_batch)} (or all)")
    for name in req.targets:
        precision, target = req.precision_for(name), targets.get(name)
        if not target.supports(precision):
            raise ExportError(
                f"--precision {precision} is not supported for target {name} "
                f"(it supports {', '.join(target.precisions)}); {precision} is available for: "
                f"{_able(lambda t: t.supports(precision))}"
            )
    if req.full_range_int8_weights and not any(req.precision_for(t) == "int8" for t in req.targets
                                               if targets.get(t).x86_pair_sums):
        raise ExportError(f"--full-range-int8-weights applies to INT8 {targets.titles(lambda t: t.x86_pair_sums)} "
                          f"artifacts only: add --precision int8 and --target {_able(lambda t: t.x86_pair_sums)} or "
                          "all")



def labels_for(req: ExportRequest, cfg) -> tuple[list[str], str]:
    """(labels, where they came from): --labels, the bundled model's own, or class_0 ... class_{K-1}."""
    if req.labels_source:
        return read_labels(Path(req.labels_source), req.num_classes), req.labels_source
    if cfg.labels_file and req.checkpoint is None:
        return read_labels(ASSETS / cfg.labels_file, req.num_classes), str(ASSETS / cfg.labels_file)
    return [f"class_{i}" for i in range(req.num_classes)], ""



def check_int8_activations(req: ExportRequest) -> None:
    if req.int8_activations is not None and req.int8_activations not in INT8_ACTIVATIONS:
        raise ExportError(f"--int8-activations must be one of {', '.join(INT8_ACTIVATIONS)}, "
                          f"got {req.int8_activations!r}")
    if req.int8_activations in (None, "static"):
        return
    int8 = [t for t in req.targets if req.precision_for(t) == "int8"]
    other = [t for t in int8 if req.int8_activations not in targets.get(t).int8_activations]
    if not int8:
        raise ExportError(f"--int8-activations {req.int8_activations} applies to INT8 only: add --precision int8")
    if other:
        able = _able(lambda t: req.int8_activations in t.int8_activations)
        raise ExportError(f"--int8-activations {req.int8_activations} is supported by {able} only, not "
                          f"{', '.join(other)}; export those targets in a separate command (static INT8)")
    ranges = None if req.reference_model else learned_ranges_file(req.checkpoint)
    if ranges is not None:
        raise ExportError(f"--int8-activations dynamic cannot use the static ranges learned in QAT ({ranges}): "
                          "export with static activations, or move the ranges file away to quantize the QAT "
                          "weights dynamically")



def check_bounds(req: ExportRequest) -> None:
    """Sizes and knobs within what the tool can do in reasonable time and memory (also for callers that build an
    ExportRequest without the command line's argument types)."""
    sides = list(req.img_hw) + list(req.dynamic_size or ()) + [v for hw in req.sizes or () for v in hw]
    limit, what = (MAX_IMG_SIZE, "img_size") if req.task == "classify" else (MAX_FEATURE_SIDE, "input side")
    if max(sides) > limit:
        raise ExportError(f"{what} {max(sides)} is above the supported {limit} px (export time and memory "
                          f"grow with its square); use a size in [32, {limit}]")
    if req.num_classes is not None and req.num_classes > MAX_NUM_CLASSES:
        raise ExportError(f"num_classes {req.num_classes} is above the supported {MAX_NUM_CLASSES}")
    if req.parity_samples is not None and not 1 <= req.parity_samples <= MAX_PARITY_SAMPLES:
        raise ExportError(f"--parity-samples must be in [1, {MAX_PARITY_SAMPLES}], got {req.parity_samples}")
    if req.calib_size is not None and not 1 <= req.calib_size <= MAX_IMAGES:
        raise ExportError(f"--calib-size must be in [1, {MAX_IMAGES}], got {req.calib_size}")
    alpha = req.smooth_quant_alpha
    if alpha is not None and (not math.isfinite(alpha) or alpha > 1):
        raise ExportError(f"--smooth-quant-alpha must be in [0, 1] (or negative to disable), got {alpha}")
    for pattern in req.keep_float:
        problem = regex_problem(pattern)
        if problem:
            raise ExportError(f"--keep-float: {problem}")

def validate_features(req: ExportRequest) -> None:
    """Fill defaults and reject what a backbone export cannot do, before any work."""
    try:
        cfg = get_config(req.model).backbone()
        req.out_indices = check_out_indices((0, 1, 2, 3) if req.out_indices is None else req.out_indices)
        if req.dynamic_size is not None:
            check_range(cfg, *req.dynamic_size, name=req.model)
            req.img_hw = example_size(req.dynamic_size)
        elif req.sizes is not None:
            req.sizes = check_sizes(req)
            req.img_hw = req.sizes[0]
        else:
            size = req.img_size if req.img_size is not None else cfg.default_img_size
            req.img_hw = as_hw(size)
    except (BackboneConfigError, ValueError) as e:
        raise ExportError(str(e)) from e
    req.img_size = req.img_hw[0] if req.img_hw[0] == req.img_hw[1] else list(req.img_hw)
    check_size_mode(req)
    check_bounds(req)
    check_precisions(req)
    check_int8_activations(req)
    if any(req.precision_for(t) == "int8" for t in req.targets):
        if req.sizes is not None:
            raise ExportError("INT8 with --sizes is not supported yet (each size would be calibrated on its own): "
                              "export INT8 backbones one size at a time (--img-size H W), or a range for "
                              f"{_able(lambda t: t.serves('range'))} (--dynamic-size)")
        check_calibration_request(req, get_config(req.model))
    if req.checkpoint is None and get_config(req.model).bundled_checkpoint is None:
        raise ExportError(f"{req.model} has no bundled weights; pass --checkpoint PATH (an upstream detection / "
                          "segmentation checkpoint, or a classification one as backbone initialisation)")
    if req.checkpoint is not None and not Path(req.checkpoint).is_file():
        raise ExportError(f"checkpoint not found (or not a file): {req.checkpoint}")

# How each size mode is asked for, and what it makes: the words of the refusal below.
SIZE_FLAGS = {"range": ("--dynamic-size MIN MAX", "one artifact for every size in a range (symbolic H and W)"),
              "list": ("--sizes HxW HxW ...", "one artifact with an entry point per size")}


def check_size_mode(req: ExportRequest) -> None:
    """Every target asked for serves the request's size mode (a backbone's --dynamic-size or --sizes)."""
    mode = req.size_mode
    unable = [t for t in req.targets if not targets.get(t).serves(mode)]
    if mode == "fixed" or not unable:
        return
    flag, what = SIZE_FLAGS[mode]
    other = [f"{SIZE_FLAGS[m][0]} ({_able(lambda t, m=m: t.serves(m))})" for m in SIZE_FLAGS if m != mode]
    raise ExportError(f"{flag.split()[0]}: {what} is made for {_able(lambda t: t.serves(mode))}; export "
                      f"{', '.join(unable)} in a separate command, one size at a time (--img-size H W) or with "
                      f"{' or '.join(other)}")


def check_classifier_range(req: ExportRequest, cfg) -> None:
    """--dynamic-size for the classifier: one ONNX / OpenVINO graph for every size in the range (FP32 / FP16)."""
    try:
        check_range(cfg, *req.dynamic_size, name=req.model)
    except BackboneConfigError as e:
        raise ExportError(str(e)) from e
    fixed = [t for t in req.targets if not targets.get(t).serves("range")]
    if fixed:
        raise ExportError(f"--dynamic-size: one classifier for a range of sizes is made for "
                          f"{_able(lambda t: t.serves('range'))} (symbolic H and W); export {', '.join(fixed)} at "
                          "one size (--img-size N), in a separate command")
    if any(req.precision_for(t) == "int8" for t in req.targets) or req.dynamic_batch:
        raise ExportError("--dynamic-size for the classifier is FP32 / FP16 and batch 1 for now: drop "
                          "--precision int8 / --dynamic-batch, or export one size")
    req.img_hw = example_size(req.dynamic_size)

def check_sizes(req: ExportRequest) -> tuple[tuple[int, int], ...]:
    sizes = tuple(as_hw(hw) for hw in req.sizes)
    if len(sizes) < 2 or len(sizes) > MAX_SIZES:
        raise ExportError(f"--sizes takes 2 to {MAX_SIZES} sizes (one entry point each), got {len(sizes)}; for "
                          "one size use --img-size H W")
    if len(set(sizes)) != len(sizes):
        raise ExportError(f"--sizes repeats a size ({', '.join(f'{h}x{w}' for h, w in sizes)}): give each once")
    return sizes


# ------------------------------------------------------------------------------------------------ the flag table
# Every flag of `python -m export`: where it is used (task x size mode x precision x target, and for INT8 where the
# activation ranges come from) and what the manifest records of it. Given anywhere else it would be ignored or only
# half honoured, so `check_flags` refuses it (exit 2) before any work. A flag that some of the requested targets
# use is accepted: each artifact's `flags` in the manifest lists the given flags that shaped it. The facts about
# targets are the registry's. tests/test_flag_table.py walks the whole table, and fails for a flag without a row.

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
    Flag("--max-accuracy-drop", "max_accuracy_drop", "info.accuracy_control, checks", tasks=("classify",),
         size_modes=("fixed",), precisions=("int8",), ranges=("calibrated",),
         scope="applies to the classifier's INT8 with calibrated activation ranges only"),
    Flag("--labels-map-by-order", "labels_map_by_order", "int8_calibration.labels", tasks=("classify",),
         precisions=("int8",), scope="applies to the classifier's INT8 only (a labelled calibration set)"),
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
