"""This host's dense GEMM peak per precision, measured with OpenVINO's CPU plugin at the benchmark's thread count.

A square-ish fully connected layer (M x K times K x N) is large enough to be compute bound and shaped like a
transformer's linears. FP32 runs with the f32 hint, BF16 with the bf16 hint (only where the CPU has BF16), INT8 as
FakeQuantize -> MatMul, which the plugin executes with u8 x s8 kernels (VNNI / AMX / dot-product). The best of a few
timed runs counts: a peak is what the hardware can do, not what it usually does.
"""

from __future__ import annotations

import time

import numpy as np

SHAPE = (1024, 2048, 2048)  # M, K, N


def _matmul_model(int8: bool, shape=SHAPE):
    import openvino as ov
    import openvino.opset13 as ops

    m, k, n = shape
    rng = np.random.default_rng(0)
    x = ops.parameter([1, m, k], ov.Type.f32, name="x")
    w = ops.constant(rng.standard_normal((n, k)).astype(np.float32) * 0.05)
    src_x, src_w = x, w
    if int8:
        lo, hi = np.float32(0.0), np.float32(4.0)
        src_x = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        wlo, whi = np.float32(-0.2), np.float32(0.2)
        src_w = ops.fake_quantize(w, wlo, whi, wlo, whi, 255)
    y = ops.matmul(src_x, src_w, transpose_a=False, transpose_b=True)
    return ov.Model([y], [x], "gemm")


def measure(precision: str, threads: int, runs: int = 10, shape=SHAPE) -> dict:
    """{'gmacs_per_s', 'method'} for precision in fp32 / bf16 / int8."""
    import openvino as ov

    hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]
    compiled = ov.Core().compile_model(_matmul_model(precision == "int8", shape), "CPU",
                                       {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    x = np.abs(np.random.default_rng(1).standard_normal((1, shape[0], shape[1]))).astype(np.float32)
    for _ in range(3):
        request.infer({0: x})
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        request.infer({0: x})
        best = min(best, time.perf_counter() - t)
    macs = shape[0] * shape[1] * shape[2]
    return {"gmacs_per_s": round(macs / best / 1e9, 1),
            "method": f"OpenVINO CPU MatMul {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]}, {threads} threads, "
                      f"{'FakeQuantize u8 x s8' if precision == 'int8' else hint + ' hint'}, best of {runs}"}


def host_has_bf16() -> bool:
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no OpenVINO, or a plugin without the property: assume no BF16
        return False


def measure_all(threads: int, quick: bool = False) -> dict:
    shape = (256, 1024, 1024) if quick else SHAPE
    runs = 3 if quick else 10
    precisions = ["fp32", "int8"] + (["bf16"] if host_has_bf16() else [])
    return {p: measure(p, threads, runs, shape) for p in precisions}
