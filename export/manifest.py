"""`manifest.json`: what apps read to feed and label an exported model, and the proof that it matches."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from pathlib import Path

from edge_crossformer import IMAGENET_MEAN, IMAGENET_STD, get_config

from .request import ExportRequest

SCHEMA_VERSION = 1
TOOLS = ("edge-crossformer", "torch", "executorch", "coremltools", "openvino", "nncf", "onnx", "onnxruntime",
         "onnxscript", "numpy")


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


def resize_spec(req: ExportRequest) -> dict:
    """How apps must resize a photo before it enters the model (upstream eval: bicubic, crop ratio 0.875)."""
    return get_config(req.model).resize_for(req.img_size)


def build_manifest(req: ExportRequest, artifacts: list[dict], failures: list[dict], source: dict) -> dict:
    status = "pass" if artifacts and not failures and all(
        a["parity"]["status"] in ("pass", "skipped") for a in artifacts) else "fail"
    return {
        "schema_version": SCHEMA_VERSION,
        "model": req.model,
        "img_size": req.img_size,
        "num_classes": req.num_classes,
        "input": {
            "name": "image", "shape": [1, 3, req.img_size, req.img_size], "layout": "NCHW", "dtype": "float32",
            "range": [0.0, 1.0], "color": "RGB",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "applied": "in_model"},
            "resize": resize_spec(req),
            "coreml": "image input (RGB); Core ML scales pixels by 1/255",
        },
        "output": {"name": "logits", "shape": [1, req.num_classes], "activation": "none (apply softmax)"},
        "labels": list(req.labels),
        "labels_file": "labels.txt",
        "artifacts": artifacts,
        "failures": failures,
        "status": status,
        "source": source,
        "tools": tool_versions(),
    }
