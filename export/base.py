"""What every target module returns, and the context it gets: one uniform signature, `export(ctx) -> [Artifact]`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_crossformer import get_config, targets

from .compression import WeightPlan, plan_for
from .prepare import ModelSource
from .request import ExportError, ExportRequest
from .schemes import SCHEMES


def require(module: str, target: str):
    """Import a backend lazily; a missing one is a clear error with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise ExportError(f"target {target} needs the '{top}' package, which is not installed: "
                          f"{targets.install_hint(top)}") from e


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
    target: targets.Target
    request: ExportRequest
    source: ModelSource
    staging: Path
    precision: str
    step: Callable[[str], None] = lambda message: None

    @property
    def int8(self):
        """The INT8 scheme this artifact is made with (export.schemes), or None for FP32 / FP16."""
        return SCHEMES[self.target.int8_scheme] if self.precision == "int8" else None

    @property
    def weights(self) -> WeightPlan | None:
        """The weight compression this artifact is made with (export.compression), or None (fp32 / fp16 / int8);
        with --max-accuracy-drop, its search's units at 8 bits too."""
        plan = plan_for(self.request, self.precision, len(get_config(self.request.model).depths))
        return self.source.weight_plan(plan)

    @property
    def spelling(self):
        """How the model spells its ops for this target at the request's size mode (edge_crossformer.targets)."""
        return self.target.spelling_for(self.request.size_mode)

    def deployable(self):
        """The model in this target's spelling."""
        return self.source.deployable(self.spelling)

    def file_name(self, delegate: str | None, ext: str, precision: str | None = None) -> Path:
        """`<model>_<target>-<delegate>_<precision>.<ext>` inside the staging directory."""
        kind = f"{self.target.name}-{delegate}" if delegate else self.target.name
        return self.staging / f"{self.request.stem}_{kind}_{precision or self.precision}.{ext}"
