"""Is the INT8 artifact just written faster than FP32 on this machine? A cheap check, recorded in the artifact's
info (`int8_speed`) and warned about in one line when INT8 is the slower one.

INT8 exists to be faster, and on some CPUs it is not (x86 without VNNI: OpenVINO's INT8 FullyConnected kernels lose
to its FP32 ones; docs/performance/isa.md). The check times the INT8 file against the FP32 graph it was quantized
from, on the same runtime, interleaved pairs, within a small time budget (SECONDS): enough to see a ratio above 1,
not a benchmark (`python -m benchmarks` measures with rounds, warm-up and the machine's load recorded).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

from edge_crossformer.host import host_isa

# Timing budget per INT8 artifact (after one warm-up run of each), and the most pairs it times.
SECONDS = 2.0
MAX_PAIRS = 20


def int8_speed(load_runner, fp32_path: Path, int8_path: Path, example: np.ndarray) -> dict:
    """{int8_ms, fp32_ms, ratio, pairs, isa, load_average} of interleaved runs (medians), each runtime at its
    default threads, on `example` ([1, 3, H, W] float32)."""
    fp32, int8 = load_runner(fp32_path), load_runner(int8_path)
    fp32(example)
    int8(example)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    started = time.perf_counter()
    while len(times["int8"]) < MAX_PAIRS and (time.perf_counter() - started < SECONDS or len(times["int8"]) < 3):
        for name, run in (("fp32", fp32), ("int8", int8)):
            t = time.perf_counter()
            run(example)
            times[name].append((time.perf_counter() - t) * 1e3)
    int8_ms, fp32_ms = statistics.median(times["int8"]), statistics.median(times["fp32"])
    host = host_isa()
    return {"int8_ms": round(int8_ms, 3), "fp32_ms": round(fp32_ms, 3), "ratio": round(int8_ms / fp32_ms, 3),
            "pairs": len(times["int8"]), "cpu": host["cpu"], "isa": host["isa"],
            "load_average": round(os.getloadavg()[0], 2)}


def warning(file_name: str, speed: dict | None) -> str | None:
    """The one-line warning for an INT8 artifact slower than FP32 here (None when it is not)."""
    if not speed or speed.get("ratio") is None or speed["ratio"] <= 1.0:
        return None
    return (f"{file_name}: INT8 is slower than FP32 on this CPU ({speed['ratio']:.2f}x: {speed['int8_ms']:.1f} vs "
            f"{speed['fp32_ms']:.1f} ms, {speed['pairs']} interleaved pairs, load {speed['load_average']}); "
            "measure with python -m benchmarks, and see docs/performance/isa.md for --cpu")
