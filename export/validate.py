"""Validation of an export request: fill the per-model defaults and reject anything that cannot work, before any
work (bad input writes nothing). What each target can do comes from the registry (edge_crossformer.targets)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from edge_crossformer import get_config, targets
from edge_crossformer.backbone import BackboneConfigError, as_hw, check_out_indices, check_range
from edge_crossformer.checkpoint import learned_ranges_file
from edge_crossformer.host import cpu_level, host_isa
from edge_crossformer.cli import MAX_FEATURE_SIDE, MAX_IMAGES, MAX_IMG_SIZE, MAX_NUM_CLASSES, regex_problem
from edge_crossformer.registry import ASSETS, check_img_size, check_num_classes

from .arm_parity import check_request as check_request_arm
from .compression import check_compression_request, held_out_images, searchable_weights, unsupported_message
from .flags import FLAGS, TASKS, check_flags, given
from .int8 import check_calibration_request
from .request import (DEFAULTS, INT8_ACTIVATIONS, MAX_PARITY_SAMPLES, ExportError, ExportRequest, check_output,
                      read_labels)
from .sizes import example_size

# --sizes: entry points per artifact.
MAX_SIZES = 8


def check_accuracy_request(req: ExportRequest) -> None:
    drop = req.max_accuracy_drop
    if not math.isfinite(drop) or not 0 <= drop < 100:
        raise ExportError(f"--max-accuracy-drop is in percentage points, 0 <= PP < 100; got {drop}")
    int8 = [t for t in req.targets if req.precision_for(t) == "int8"]
    low_bit = [t for t in req.targets if searchable_weights(req.precision_for(t))]
    if not int8 and not low_bit:
        raise ExportError("--max-accuracy-drop applies to INT8 and to weights below 8 bits: add --precision int8 "
                          "(or w4 / palette4 / palette6)")
    if req.reference_model:
        raise ExportError("--max-accuracy-drop applies to the export-friendly model; drop --reference-model")
    if low_bit:
        check_weight_search_request(req, low_bit)
    if int8:
        check_int8_search_request(req, int8)


def check_weight_search_request(req: ExportRequest, names: list[str]) -> None:
    """Compressed weights: the drop is measured on the model's own labelled images (those its parity uses)."""
    precision = req.precision_for(names[0])
    if not held_out_images(precision, req):
        raise ExportError(f"--max-accuracy-drop with --precision {precision} measures the drop on {req.model}'s own "
                          "labelled images (the bundled model's Fashion-MNIST), and it has none: export without "
                          "--max-accuracy-drop (the logits' cosine gate applies), or install Debian's "
                          "dataset-fashion-mnist for the bundled model")


def check_int8_search_request(req: ExportRequest, int8: list[str]) -> None:
    if req.int8_activations == "dynamic":
        raise ExportError("--max-accuracy-drop searches the static INT8 scheme; drop --int8-activations dynamic "
                          "(dynamic INT8 already keeps activations in float between linears)")
    pt2e = [t for t in int8 if targets.get(t).int8_scheme == "xnnpack"]
    if pt2e and req.smooth_quant_alpha is not None and req.smooth_quant_alpha >= 0:
        raise ExportError(f"--max-accuracy-drop for {', '.join(pt2e)} needs SmoothQuant off (its per-layer search "
                          "switches layers back to their original float weights); pass --smooth-quant-alpha -1")
    ranges = learned_ranges_file(req.checkpoint)
    learned = [t for t in int8 if targets.get(t).uses_learned_ranges]
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
    check_request_arm(req)
    if req.task not in TASKS:
        raise ExportError(f"--task must be classify or features, got {req.task!r}")
    validate_features(req) if req.task == "features" else validate_classifier(req)
    check_flags(req)
    resolve_cpu(req)
    for field, value in DEFAULTS.items():
        if getattr(req, field) is None:
            setattr(req, field, value)
    req.output = Path(os.path.abspath(req.output))
    check_output(req.output, req.overwrite, req.user_inputs())
    return req


def resolve_cpu(req: ExportRequest) -> None:
    """--cpu auto: the exporting host's CPU level; a host that is neither AVX2 nor VNNI x86 cannot say which."""
    if req.cpu is None or req.cpu in targets.CPUS:
        req.cpu_level = req.cpu
        return
    host = host_isa()
    req.cpu_level = cpu_level(host["isa"], host["arch"])
    if req.cpu_level is None:
        raise ExportError(f"--cpu auto: this host ({host['cpu']}, {host['arch']}) is not an x86 CPU with AVX2, so "
                          f"it cannot say which INT8 to make: name the CPU it is for, --cpu "
                          f"{' or --cpu '.join(targets.CPUS)}")


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
    check_compression_request(req, cfg)
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
            raise ExportError(unsupported_message(precision, name) or
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
    check_compression_request(req, get_config(req.model).backbone())
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
SIZE_FLAGS = {"range": ("--dynamic-size MIN MAX", "one artifact for a range of sizes (symbolic H and W)",
                        "serve every size in a range from one graph"),
              "list": ("--sizes HxW HxW ...", "one entry point per size", "serve a list of sizes, one entry "
                       "point each")}


def check_size_mode(req: ExportRequest) -> None:
    """Every target asked for serves the request's size mode (a backbone's --dynamic-size or --sizes); the refusal
    names the mode the others serve."""
    mode = req.size_mode
    unable = sorted(t for t in req.targets if not targets.get(t).serves(mode))
    if mode == "fixed" or not unable:
        return
    flag, what, _ = SIZE_FLAGS[mode]
    able = ", ".join(sorted(targets.names(lambda t: t.serves(mode))))
    other = next((m for m in SIZE_FLAGS if m != mode and all(targets.get(t).serves(m) for t in unable)), None)
    instead = (f"{', '.join(unable)} {SIZE_FLAGS[other][2]}: export them with {SIZE_FLAGS[other][0]}" if other
               else f"export {', '.join(unable)} one size at a time (--img-size H W)")
    raise ExportError(f"{flag.split()[0]}: {what} is made for {able}; {instead}, in a separate command")


def check_classifier_range(req: ExportRequest, cfg) -> None:
    """--dynamic-size for the classifier: one ONNX / OpenVINO graph for every size in the range (FP32 / FP16)."""
    try:
        check_range(cfg, *req.dynamic_size, name=req.model)
    except BackboneConfigError as e:
        raise ExportError(str(e)) from e
    fixed = sorted(t for t in req.targets if not targets.get(t).serves("range"))
    if fixed:
        raise ExportError(f"--dynamic-size: one classifier for a range of sizes is made for "
                          f"{', '.join(sorted(targets.names(lambda t: t.serves('range'))))} (symbolic H and W); "
                          f"export {', '.join(fixed)} at one size (--img-size N), in a separate command")
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
