"""`manifest.json`: what apps read to feed and label an exported model, and the proof that it matches."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from pathlib import Path

from edge_crossformer import get_config, targets
from edge_crossformer.backbone import output_specs
from edge_crossformer.preprocessing import input_contract
from edge_crossformer.reference_backbone import STRIDES

from .request import ExportRequest
from .sizes import method_name

SCHEMA_VERSION = 1
TOOLS = ("edge-crossformer", "torch", *targets.packages(), "numpy")


def sha256_of(path: Path) -> tuple[str, int]:
    """sha256 and byte count of a file, or of a directory (e.g. .mlpackage) walked in sorted order."""
    digest, total = hashlib.sha256(), 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                total += len(chunk)
    return digest.hexdigest(), total


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def input_section(model: str, img_size: int) -> dict:
    """The manifest's `input`: the model's input contract, plus how Core ML's image input feeds it."""
    return {**input_contract(get_config(model).resize_for(img_size), img_size),
            "coreml": "image input (RGB); Core ML scales pixels by 1/255"}


def output_section(num_classes: int) -> dict:
    return {"name": "logits", "shape": [1, num_classes], "activation": "none (apply softmax)"}


def build_manifest(req: ExportRequest, artifacts: list[dict], failures: list[dict], source: dict) -> dict:
    """The manifest of an export: the input contract, outputs, sizes and labels an app needs, every artifact with its
    parity, the failures, and the tools that made it; status "pass" only when every artifact passed or was
    skipped for want of its runtime and no target failed."""
    status = "pass" if artifacts and not failures and all(
        a["parity"]["status"] in ("pass", "skipped") for a in artifacts) else "fail"
    if req.task == "features":
        return _features_manifest(req, artifacts, failures, source, status)
    if req.dynamic_size:
        return _classifier_range_manifest(req, artifacts, failures, source, status)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": req.model,
        "img_size": req.img_size,
        "num_classes": req.num_classes,
        "input": input_section(req.model, req.img_size),
        "output": output_section(req.num_classes),
        "labels": list(req.labels),
        "labels_file": "labels.txt",
        "artifacts": artifacts,
        "failures": failures,
        "status": status,
        "source": source,
        "tools": tool_versions(),
    }


def _features_manifest(req: ExportRequest, artifacts: list[dict], failures: list[dict], source: dict,
                       status: str) -> dict:
    hw = None if req.dynamic_size or req.sizes else list(req.img_hw)
    contract = input_section(req.model, req.img_hw[0])
    # A backbone's input is resized to H x W without a crop (detectors letterbox or resize; no classifier crop).
    contract.update(shape=[1, 3, *(hw or ["H", "W"])], resize={"size": hw or "one of sizes", "crop": None,
                                                               "interpolation": "bilinear"})
    return {"schema_version": SCHEMA_VERSION, "model": req.model, "img_size": hw, "input": contract,
            **manifest_sections(req), "artifacts": artifacts, "failures": failures, "status": status,
            "source": source, "tools": tool_versions()}


def _classifier_range_manifest(req: ExportRequest, artifacts: list[dict], failures: list[dict], source: dict,
                               status: str) -> dict:
    """A classifier for every size in --dynamic-size: the input's H and W are symbolic, the rest as usual."""
    low, high = req.dynamic_size
    contract = input_section(req.model, req.img_size)
    contract["shape"] = [1, 3, "H", "W"]
    return {"schema_version": SCHEMA_VERSION, "model": req.model, "img_size": None,
            "sizes": {"kind": "range", "min": low, "max": high, "multiple_of": 32, "non_square": True,
                      "resize_note": "input.resize describes the classifier's own size; any H x W in the range runs"},
            "num_classes": req.num_classes, "input": contract, "output": output_section(req.num_classes),
            "labels": list(req.labels), "labels_file": "labels.txt", "artifacts": artifacts, "failures": failures,
            "status": status, "source": source, "tools": tool_versions()}


def manifest_sections(req: ExportRequest) -> dict:
    """What an app or a detection head needs: outputs (name, stride, channels, shape) and the sizes accepted."""
    cfg = get_config(req.model).backbone()
    fixed = None if req.dynamic_size else tuple(req.img_hw)
    if req.dynamic_size:
        low, high = req.dynamic_size
        sizes = {"kind": "range", "min": low, "max": high, "multiple_of": 32, "non_square": True}
    elif req.sizes:
        fixed = None
        sizes = {"kind": "list", "sizes": [list(hw) for hw in req.sizes],
                 "entry_points": [method_name(*hw) for hw in req.sizes],
                 "entry_point_kind": "ExecuTorch method / Core ML function (default: the first)"}
    else:
        sizes = {"kind": "fixed", "height": fixed[0], "width": fixed[1]}
    return {"task": "features", "outputs": output_specs(cfg, req.out_indices, fixed), "sizes": sizes,
            "strides": [STRIDES[i] for i in req.out_indices],
            "backbone": {"group_size": list(cfg.group_size), "interval": list(cfg.interval),
                         "norm_after_stage": False}}
