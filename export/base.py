"""What every target module returns, and the context it gets: one uniform signature, `export(ctx) -> [Artifact]`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .prepare import ModelSource
from .request import ExportError, ExportRequest

INSTALL_HINT = {
    "coremltools": "pip install 'edge-crossformer[coreml]'  (coremltools==9.0)",
    "executorch": "pip install 'edge-crossformer[executorch]'  (executorch==1.5.1)",
    "openvino": "pip install 'edge-crossformer[openvino]'  (openvino, nncf)",
    "onnx": "pip install 'edge-crossformer[onnx]'  (onnx, onnxruntime, onnxscript)",
    "onnxruntime": "pip install 'edge-crossformer[onnx]'  (onnx, onnxruntime, onnxscript)",
    "onnxscript": "pip install 'edge-crossformer[onnx]'  (onnx, onnxruntime, onnxscript)",
    "nncf": "pip install 'edge-crossformer[openvino]'  (openvino, nncf)",
}


def require(module: str, target: str):
    """Import a backend lazily; a missing one is a clear error with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise ExportError(f"target {target} needs the '{top}' package, which is not installed: "
                          f"{INSTALL_HINT.get(top, f'pip install {top}')}") from e


@dataclass
class Artifact:
    target: str
    delegate: str | None
    precision: str
    path: Path
    # Runs the artifact on its own runtime: [1, 3, S, S] float32 in [0, 1] -> logits. None where it cannot run here.
    runner: Callable[[np.ndarray], np.ndarray] | None = None
    skip_reason: str | None = None
    extra_files: list[Path] = field(default_factory=list)
    # Other ways to run the same artifact, by name: their parity is recorded beside the runner's, not gated.
    cross_checks: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass
class TargetContext:
    request: ExportRequest
    source: ModelSource
    staging: Path
    precision: str
    step: Callable[[str], None] = lambda message: None

    def file_name(self, target: str, delegate: str | None, ext: str, precision: str | None = None) -> Path:
        """`<model>_<target>-<delegate>_<precision>.<ext>` inside the staging directory."""
        kind = f"{target}-{delegate}" if delegate else target
        return self.staging / f"{self.request.model}_{kind}_{precision or self.precision}.{ext}"
