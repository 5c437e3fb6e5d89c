"""What the user asked for (`ExportRequest`), the error every bad request raises, and the checks that need nothing
but the request itself. export.validate fills the defaults and rejects what cannot work, before any work."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_crossformer import targets
from edge_crossformer.files import inputs_at_risk

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
    # None below means "not given" (export.validate refuses a flag given where it would be ignored, so presence must
    # be testable); validate fills the defaults (DEFAULTS) once the request is accepted.
    calib_size: int | None = None
    # Negative: off, the default: it lowered OpenVINO INT8's agreement with FP32 on crossformer-fmnist
    # (docs/int8.md). plain_int8 takes NNCF's own default recipe instead.
    smooth_quant_alpha: float | None = None
    keep_float: tuple[str, ...] = ()
    int8_activations: str | None = None
    # Input channels per scale of grouped weight compression (--precision w4); None: the scheme's default
    # (edge_crossformer.compression).
    group_size: int | None = None
    # OpenVINO / ONNX INT8 weights over the full 8-bit range: exact only on CPUs with VNNI / AMX (or Arm); x86 CPUs
    # without VNNI may saturate (quantize.QuantOptions.overflow_fix). Off: 7-bit weights, the same on every CPU.
    full_range_int8_weights: bool = False
    # The x86 CPU the INT8 is made for (`--cpu`: avx2, vnni, or auto: the exporting host's), and that CPU level once
    # validate resolved it (targets.CPUS): per-level choices are the registry's (Target.cpu_keep_float).
    cpu: str | None = None
    cpu_level: str | None = None
    # Accuracy-controlled INT8: the most top-1 points (or, without labels, agreement points with FP32) INT8 may
    # lose; layers go back to float until it holds (quantize.sensitivity; NNCF's accuracy control for OV / ONNX).
    max_accuracy_drop: float | None = None
    # Parity again on each runtime's aarch64 build under QEMU (export.arm_parity; needs `python -m export setup-arm`).
    verify_arm: bool = False
    reset_head: bool = False
    # A labelled calibration set's classes are the model's labels in order, whatever their names.
    labels_map_by_order: bool = False
    parity_samples: int | None = None
    qat_checkpoint: Path | None = None
    # NNCF's output as is, without this project's INT8 graph fixes (the benchmarks' upstream baseline).
    plain_int8: bool = False
    # "classify" (logits) or "features" (the detection / segmentation backbone's stage maps).
    task: str = "classify"
    # Input (H, W): the square img_size for the classifier; --img-size H W for a backbone (filled by validate).
    img_hw: tuple[int, int] | None = None
    out_indices: tuple[int, ...] | None = None
    # (MIN, MAX): one artifact for every multiple of 32 in the range (features only; ONNX, OpenVINO).
    dynamic_size: tuple[int, int] | None = None
    # ((H, W), ...): one artifact with an entry point per size (features only; Core ML, ExecuTorch).
    sizes: tuple[tuple[int, int], ...] | None = None
    # The fields the caller set, noted by validate before it fills defaults (None: not validated yet); what the
    # manifest's `flags` report.
    flags_given: tuple[str, ...] | None = None

    @property
    def size_mode(self) -> str:
        """"fixed", "range" (--dynamic-size) or "list" (--sizes): edge_crossformer.targets.SIZE_MODES."""
        return "range" if self.dynamic_size is not None else "list" if self.sizes is not None else "fixed"

    @property
    def stem(self) -> str:
        """What artifact file names start with: the model, and `-features` for a backbone."""
        return self.model if self.task == "classify" else f"{self.model}-features"

    def user_inputs(self) -> tuple[Path | None, ...]:
        """Every path the user gave: none of them may be deleted by replacing the output (check_output)."""
        return (self.checkpoint, self.calib_data, self.qat_checkpoint,
                Path(self.labels_source) if self.labels_source else None)

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
    """One label per line ("\n" or "\r\n"), UTF-8 (a byte-order mark is fine), in class-index order, each once;
    trailing blank lines ignored."""
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
    # Lines end at "\n" (and "\r\n") only: str.splitlines also splits at U+2028, U+0085, form feeds..., which no
    # editor shows as a new line, and would shift every label after them.
    lines = [line.strip() for line in text.split("\n")]
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
    first: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if line in first:
            raise ExportError(f"labels file {path} names '{line}' twice (lines {first[line]} and {number}); an app "
                              "could not tell those classes apart: give every class its own label")
        first[line] = number
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
        for item in inputs_at_risk(output, inputs):
            raise ExportError(f"{item} is inside the output directory {output}, which --overwrite replaces; "
                              "move it out or choose another --output")
    probe = output.parent if not output.exists() else output
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ExportError(f"cannot create {output}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK):
        raise ExportError(f"cannot write to {probe}; choose another --output directory")


# What validate fills in for a flag not given, once the request is accepted.
DEFAULTS = {"calib_size": 300, "smooth_quant_alpha": -1.0, "int8_activations": "static", "parity_samples": 8}

# More parity inputs add time and say nothing new: INT8 is judged on held-out images anyway.
MAX_PARITY_SAMPLES = 256
