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


def load_onnxruntime(path: Path, threads: int) -> tuple[Runner, float]:
    import onnxruntime as ort

    t = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No busy-waiting workers: rounds interleave runtimes, and an idle session's spinning threads took the cores
    # from whichever case ran next (CrossFormer-T 224, ORT INT8: median 39 ms with spinning, 29 ms without, min
    # 25 ms either way). Project and baseline sessions get the same setting.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    load_ms = (time.perf_counter() - t) * 1e3
    return (lambda x: session.run(None, {name: x})[0]), load_ms


def load_openvino(path: Path, threads: int, hint: str = "f32") -> tuple[Runner, float]:
    import openvino as ov

    t = time.perf_counter()
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    out = compiled.output(0)
    load_ms = (time.perf_counter() - t) * 1e3
    return (lambda x: request.infer({0: x})[out]), load_ms


def load_executorch(path: Path, threads: int) -> tuple[Runner, float]:
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from edge_crossformer.util import captured_native_stderr

    with captured_native_stderr():  # the C++ runtime's cpuinfo and "Resetting threadpool" chatter on fd 2
        portable_lib._unsafe_reset_threadpool(threads)
        t = time.perf_counter()
        method = Runtime.get().load_program(str(path)).load_method("forward")
        load_ms = (time.perf_counter() - t) * 1e3

    def run(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].numpy()

    return run, load_ms


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
    if case.runtime == "onnxruntime":
        return load_onnxruntime(case.artifact, threads)
    if case.runtime == "openvino":
        return load_openvino(case.artifact, threads, case.hint or "f32")
    if case.runtime == "executorch":
        return load_executorch(case.artifact, threads)
    if case.runtime == "pytorch":
        return load_pytorch(model_name, img_size, case.variant == "project", threads, checkpoint)
    raise ValueError(f"unknown runtime {case.runtime}")
