"""Load one artifact (or a PyTorch module) on its runtime, pinned to a thread count, as `run(x) -> logits`.

Each loader returns (run, load_ms): load_ms covers reading the file and compiling / planning it, until the first
inference can start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: a runtime, a precision, project or baseline, and what it loads."""
    runtime: str            # pytorch | onnxruntime | openvino | executorch
    precision: str          # fp32 | bf16 | int8 | int8-dynamic (ExecuTorch)
    variant: str            # project | baseline
    backend: str            # CPU | xnnpack | eager
    artifact: Path | None = None  # None for PyTorch eager
    hint: str | None = None       # OpenVINO inference precision hint
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.runtime}/{self.precision}/{self.variant}"


def load_artifact(case: Case, threads: int) -> tuple[Runner, float]:
    """The artifact through its target's one loader (edge_crossformer.targets), the one parity and accuracy use."""
    from edge_crossformer import targets

    target = targets.by_runtime(case.runtime)
    options = {"precision_hint": case.hint} if case.hint else {}
    t = time.perf_counter()
    run = target.load_runner(case.artifact, threads, **options)
    return run, (time.perf_counter() - t) * 1e3


def load_pytorch(model_name: str, img_size: int, export_friendly: bool, threads: int,
                 checkpoint: str | None = None) -> tuple[Runner, float]:
    import torch

    from edge_crossformer.preprocessing import Normalized
    from edge_crossformer.registry import create_model

    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = Normalized(create_model(model_name, checkpoint=checkpoint, img_size=img_size,
                                    export_friendly=export_friendly)).eval()
    load_ms = (time.perf_counter() - t) * 1e3

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run, load_ms


def load(case: Case, threads: int, model_name: str, img_size: int,
         checkpoint: str | None = None) -> tuple[Runner, float]:
    if case.runtime == "pytorch":
        return load_pytorch(model_name, img_size, case.variant == "project", threads, checkpoint)
    return load_artifact(case, threads)
