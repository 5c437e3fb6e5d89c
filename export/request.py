"""What the user asked for, validated before any work starts (so bad input writes nothing)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_crossformer import get_config
from edge_crossformer.registry import ASSETS, check_img_size, check_num_classes

from . import targets

TARGETS = targets.names()
DEFAULT_MODEL = "crossformer-fmnist"
# How INT8 activations get their ranges: calibrated once (static, every target) or per row at run time (dynamic,
# where the target's runtime has it).
INT8_ACTIVATIONS = ("static", "dynamic")


class ExportError(Exception):
    """A user-facing failure: printed as one clear message, exit code 2, nothing written."""


@dataclass
class ExportRequest:
    targets: tuple[str, ...]
    model: str = DEFAULT_MODEL
    checkpoint: Path | None = None
    img_size: int | None = None
    num_classes: int | None = None
    labels: list[str] = field(default_factory=list)
    labels_source: str = ""
    precision: str | None = None
    output: Path = Path("artifacts")
    overwrite: bool = False
    reference_model: bool = False
    dynamic_batch: bool = False
    calib_data: Path | None = None
    calib_size: int = 300
    # Off by default: measured on crossformer-fmnist (500 held-out images), NNCF's default SmoothQuant (0.95)
    # lowered OpenVINO INT8 top-1 agreement from 99.0% to 96.8% and 0.5 to 95.6%; ONNX 98.8% either way.
    smooth_quant_alpha: float | None = -1.0
    keep_float: tuple[str, ...] = ()
    int8_activations: str = "static"
    # OpenVINO / ONNX INT8 weights over the full 8-bit range: exact only on CPUs with VNNI / AMX (or Arm); x86 CPUs
    # without VNNI may saturate (quantize.QuantOptions.overflow_fix). Off: 7-bit weights, the same on every CPU.
    full_range_int8_weights: bool = False
    # Accuracy-controlled INT8: the most top-1 points (or, without labels, agreement points with FP32) INT8 may
    # lose; layers go back to float until it holds (quantize.sensitivity; NNCF's accuracy control for OV / ONNX).
    max_accuracy_drop: float | None = None
    reset_head: bool = False
    parity_samples: int = 8
    qat_checkpoint: Path | None = None
    # NNCF's output as is, without this project's INT8 graph fixes (the benchmarks' upstream baseline).
    plain_int8: bool = False
    # "classify" (logits) or "features" (the detection / segmentation backbone's stage maps: export/features.py).
    task: str = "classify"
    # Input (H, W): the square img_size for the classifier; --img-size H W for a backbone (filled by validate).
    img_hw: tuple[int, int] | None = None
    out_indices: tuple[int, ...] | None = None
    # (MIN, MAX): one artifact for every multiple of 32 in the range (features only; ONNX, OpenVINO).
    dynamic_size: tuple[int, int] | None = None
    # ((H, W), ...): one artifact with an entry point per size (features only; Core ML, ExecuTorch).
    sizes: tuple[tuple[int, int], ...] | None = None

    @property
    def stem(self) -> str:
        """What artifact file names start with: the model, and `-features` for a backbone."""
        return self.model if self.task == "classify" else f"{self.model}-features"

    def precision_for(self, target: str) -> str:
        return self.precision or targets.get(target).default_precision


def parse_targets(target: str) -> tuple[str, ...]:
    """'all', one target, or a comma-separated list (e.g. 'onnx,openvino')."""
    if target == "all":
        return TARGETS
    names = tuple(dict.fromkeys(t.strip() for t in target.split(",") if t.strip()))
    for name in names or (target,):
        if name not in TARGETS:
            raise ExportError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}, all "
                              "(or a comma-separated list)")
    return names


# A labels file is text: larger than this is some other file given by mistake.
MAX_LABELS_BYTES = 16 << 20


def read_labels(path: Path, num_classes: int) -> list[str]:
    """One label per line, UTF-8 (a byte-order mark is fine), in class-index order; trailing blank lines ignored."""
    if not path.exists():
        raise ExportError(f"labels file not found: {path}")
    if not path.is_file():
        raise ExportError(f"labels path {path} is {'a directory' if path.is_dir() else 'not a regular file'}; "
                          "pass a text file with one label per line")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise ExportError(f"labels file {path} is {path.stat().st_size >> 20} MB, not a list of labels; pass a text "
                          "file with one label per line")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExportError(f"labels file {path} is UTF-16; save it as UTF-8 (one label per line)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ExportError(f"labels file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          "save it as UTF-8, one label per line") from None
    if "\0" in text:
        raise ExportError(f"labels file {path} holds NUL bytes: it is not a text file; pass one label per line")
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != num_classes:
        raise ExportError(
            f"labels file {path} has {len(lines)} lines but the model has {num_classes} classes; "
            "give one label per line, in class-index order"
        )
    empty = [i + 1 for i, line in enumerate(lines) if not line]
    if empty:
        raise ExportError(f"labels file {path} has empty labels on line(s) {', '.join(map(str, empty[:5]))}; give "
                          "every class a name, one per line, in class-index order")
    return lines


def check_output(output: Path, overwrite: bool, inputs: tuple[Path | None, ...] = ()) -> None:
    """The output is a directory this run may create or replace, without taking anything else with it."""
    output = Path(os.path.abspath(output))
    if output.exists() and not output.is_dir():
        raise ExportError(f"output path {output} is a file; pass a directory (--output DIR)")
    here = Path.cwd().resolve()
    if output.resolve() == here or output.resolve() in here.parents:
        raise ExportError(f"--output {output} is the current directory or contains it; the output directory is "
                          "replaced as a whole, so choose a new directory (e.g. --output artifacts/NAME)")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ExportError(f"output directory {output} is not empty; pass --overwrite to replace its contents")
        if not (output / "manifest.json").is_file():
            raise ExportError(f"output directory {output} holds files but no manifest.json, so it is not an earlier "
                              "export; --overwrite replaces only earlier exports: choose a new or empty directory")
        for item in inputs:
            if item is not None and Path(os.path.abspath(item)).is_relative_to(output):
                raise ExportError(f"{item} is inside the output directory {output}, which --overwrite replaces; "
                                  "move it out or choose another --output")
    probe = output.parent if not output.exists() else output
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ExportError(f"cannot create {output}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK):
        raise ExportError(f"cannot write to {probe}; choose another --output directory")


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
    from quantize.qat import learned_ranges_file

    ranges = learned_ranges_file(req.checkpoint)
    learned = [t for t in req.targets if targets.get(t).uses_learned_ranges]
    if ranges is not None and learned:
        raise ExportError(f"--max-accuracy-drop recalibrates, but {req.checkpoint} comes with ranges learned in QAT "
                          f"({ranges}); export {' / '.join(targets.get(t).title for t in learned)} without "
                          "--max-accuracy-drop to use them, or "
                          "move the ranges file away")


def validate(req: ExportRequest) -> ExportRequest:
    """Fill per-model defaults and reject anything that cannot work, before doing any work."""
    check_one_size_flag(req)
    if req.task == "features":
        from .features import validate_features

        return validate_features(req)
    if req.task != "classify":
        raise ExportError(f"--task must be classify or features, got {req.task!r}")
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
        from .features import check_classifier_range

        check_classifier_range(req, cfg)
    check_bounds(req)
    check_weights(req, cfg)
    check_precisions(req)
    req.labels, req.labels_source = labels_for(req, cfg)
    check_int8_activations(req)
    if req.max_accuracy_drop is not None:
        check_accuracy_request(req)
    if any(req.precision_for(t) == "int8" for t in req.targets):
        from .int8 import check_calibration_request

        check_calibration_request(req, cfg)
    req.output = Path(os.path.abspath(req.output))
    check_output(req.output, req.overwrite, (req.checkpoint, req.calib_data,
                                             Path(req.labels_source) if req.labels_source else None))
    return req


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
    if req.int8_activations not in INT8_ACTIVATIONS:
        raise ExportError(f"--int8-activations must be one of {', '.join(INT8_ACTIVATIONS)}, "
                          f"got {req.int8_activations!r}")
    if req.int8_activations == "static":
        return
    int8 = [t for t in req.targets if req.precision_for(t) == "int8"]
    other = [t for t in int8 if req.int8_activations not in targets.get(t).int8_activations]
    if not int8:
        raise ExportError(f"--int8-activations {req.int8_activations} applies to INT8 only: add --precision int8")
    if other:
        able = _able(lambda t: req.int8_activations in t.int8_activations)
        raise ExportError(f"--int8-activations {req.int8_activations} is supported by {able} only, not "
                          f"{', '.join(other)}; export those targets in a separate command (static INT8)")
    from quantize.qat import learned_ranges_file

    ranges = None if req.reference_model else learned_ranges_file(req.checkpoint)
    if ranges is not None:
        raise ExportError(f"--int8-activations dynamic cannot use the static ranges learned in QAT ({ranges}): "
                          "export with static activations, or move the ranges file away to quantize the QAT "
                          "weights dynamically")


def check_bounds(req: ExportRequest) -> None:
    """Sizes and knobs within what the tool can do in reasonable time and memory (also for callers that build an
    ExportRequest without the command line's argument types)."""
    from edge_crossformer.cli import MAX_FEATURE_SIDE, MAX_IMG_SIZE, MAX_IMAGES, MAX_NUM_CLASSES, regex_problem

    sides = list(req.img_hw) + list(req.dynamic_size or ()) + [v for hw in req.sizes or () for v in hw]
    limit, what = (MAX_IMG_SIZE, "img_size") if req.task == "classify" else (MAX_FEATURE_SIDE, "input side")
    if max(sides) > limit:
        raise ExportError(f"{what} {max(sides)} is above the supported {limit} px (export time and memory "
                          f"grow with its square); use a size in [32, {limit}]")
    if req.num_classes is not None and req.num_classes > MAX_NUM_CLASSES:
        raise ExportError(f"num_classes {req.num_classes} is above the supported {MAX_NUM_CLASSES}")
    if not 1 <= req.parity_samples <= MAX_PARITY_SAMPLES:
        raise ExportError(f"--parity-samples must be in [1, {MAX_PARITY_SAMPLES}], got {req.parity_samples}")
    if not 1 <= req.calib_size <= MAX_IMAGES:
        raise ExportError(f"--calib-size must be in [1, {MAX_IMAGES}], got {req.calib_size}")
    alpha = req.smooth_quant_alpha
    if alpha is not None and (not math.isfinite(alpha) or alpha > 1):
        raise ExportError(f"--smooth-quant-alpha must be in [0, 1] (or negative to disable), got {alpha}")
    for pattern in req.keep_float:
        problem = regex_problem(pattern)
        if problem:
            raise ExportError(f"--keep-float: {problem}")


# More parity inputs add time and say nothing new: INT8 is judged on held-out images anyway.
MAX_PARITY_SAMPLES = 256
