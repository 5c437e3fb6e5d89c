"""Running a runtime below this CPU's ISA, and checking that it really did and still computes the same thing.

Only oneDNN can be capped: it reads ONEDNN_MAX_CPU_ISA once, when it is first used (so a capped run is a process of
its own). OpenVINO's CPU plugin is built on oneDNN, but it also calls MLAS and its own JIT snippets, which read cpuid
and may not follow the cap; the kernel names in its PERF_COUNT profile tell. ONNX Runtime's MLAS and ExecuTorch's
XNNPACK (through cpuinfo) read cpuid and have no such switch: they always run this CPU's best kernels.

A cap can break inference instead of slowing it (ONEDNN_MAX_CPU_ISA=SSE41 made OpenVINO return an empty output on
an AVX2 host: fast and wrong), so a capped run is compared with the uncapped one before any of its times count.
"""

from __future__ import annotations

import numpy as np

# Runtime -> environment variable that caps its ISA (read when the runtime's library loads).
CAP_VARIABLE = {"openvino": "ONEDNN_MAX_CPU_ISA"}
# Why the others have none (recorded in the profile JSON).
NO_CAP = {"onnxruntime": "MLAS picks its kernels from cpuid when the library loads; no variable or option caps it",
          "executorch": "XNNPACK picks its kernels from cpuinfo (cpuid); the Python runtime exposes no cap"}
# --isa value -> (oneDNN's name for the cap, the host features it leaves unused, kernel-name fragments that must
# not appear in a run capped there).
CAPS = {
    "avx2": ("AVX2", ("avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"),
             ("avx512", "amx", "vnni", "avx10")),
    "avx512_core": ("AVX512_CORE", ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"),
                    ("vnni", "amx", "bf16", "avx10")),
}


def native_name(isa: list[str]) -> str:
    """The x86 level that decides INT8 kernels, in words: 'AMX', 'AVX-512 VNNI', 'AVX-VNNI', 'AVX-512', 'AVX2'."""
    for flag, name in (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                       ("avx512bw", "AVX-512"), ("avx2", "AVX2"), ("asimddp", "Arm dot product"),
                       ("asimd", "Arm NEON")):
        if flag in isa:
            return name
    return "baseline ISA"


def label(cap: str | None, isa: list[str]) -> str:
    """How a figure's ISA is written beside it: '<native> (native)' or 'AVX2 (capped on a VNNI CPU)'."""
    native = native_name(isa)
    if cap is None:
        return f"{native} (native)"
    capped = {"avx2": "AVX2", "avx512_core": "AVX-512 without VNNI"}[cap]
    return f"{capped} (capped on a{'n' if native[0] in 'AEIO' else ''} {native} CPU)"


def applicable(cap: str, runtime: str, isa: list[str]) -> str | None:
    """Why `cap` cannot be measured for this runtime on this host (None: it can)."""
    if runtime not in CAP_VARIABLE:
        return NO_CAP.get(runtime, "no ISA cap known for this runtime")
    if not set(CAPS[cap][1]) & set(isa):
        return f"this CPU has nothing above {CAPS[cap][0]}: the native run is the {CAPS[cap][0]} run"
    return None


def environment(cap: str, runtime: str) -> dict[str, str]:
    return {CAP_VARIABLE[runtime]: CAPS[cap][0]}


# Kernels that read cpuid themselves whatever oneDNN is told, and whose names do not say which ISA they ran: OpenVINO
# calls MLAS for many FP32 FullyConnected layers (`gemm_mlas_f32`).
UNCAPPED = ("mlas",)


def output_check(precision: str, native: np.ndarray, other: np.ndarray) -> dict:
    """{status: "broken" | "same", reason, agreement}: whether `other` (a capped or emulated run) computes what the
    native run did: FP32 max |diff| within 1e-3 of the largest logit; INT8 the same top-1 and cosine >= 0.99."""
    native, other = np.asarray(native, np.float64), np.asarray(other, np.float64)
    if other.size == 0 or other.shape != native.shape:
        return {"status": "broken", "reason": f"output shape {list(other.shape)}, expected {list(native.shape)}"}
    if not np.isfinite(other).all():
        return {"status": "broken", "reason": "non-finite output"}
    scale = max(float(np.abs(native).max()), 1e-12)
    diff = float(np.abs(native - other).max()) / scale
    cosine = float((native * other).sum() / max(np.linalg.norm(native) * np.linalg.norm(other), 1e-30))
    rows = native.shape[0] if native.ndim else 1
    same_top1 = bool((native.reshape(rows, -1).argmax(1) == other.reshape(rows, -1).argmax(1)).all())
    agreement = {"max_abs_diff_rel": round(diff, 8), "cosine": round(cosine, 8), "same_top1": same_top1}
    fp = precision.startswith("fp") or precision == "bf16"
    if (fp and diff > 1e-3) or (not fp and (not same_top1 or cosine < 0.99)):
        return {"status": "broken", "reason": "output differs from the native run", "agreement": agreement}
    return {"status": "same", "reason": None, "agreement": agreement}


def verdict(cap: str, precision: str, native: np.ndarray, capped: np.ndarray, native_nodes: list[dict],
            capped_nodes: list[dict]) -> dict:
    """Whether a capped run may be timed, and as what: {status, reason, agreement, uncapped_ms, uncapped_kernels}.
    broken (never timed): its output is empty, not finite, or not what the uncapped run computes (FP32: max |diff|
    within 1e-3 of the largest logit; INT8: same top-1 and cosine >= 0.99, as other kernels may round differently).
    not honored: it ran the very kernels the uncapped run did. partial: the cap changed kernels, but some node time
    is in kernels that name an ISA above the cap or read cpuid themselves (MLAS); the figure is timed with that share.
    ok: every kernel it ran is at or below the cap."""
    broken = output_check(precision, native, capped)
    if broken["status"] == "broken":
        return broken
    agreement = broken["agreement"]
    if {n["kernel"] for n in capped_nodes} == {n["kernel"] for n in native_nodes}:
        return {"status": "not honored", "reason": "the same kernels ran as without the cap", "agreement": agreement}
    escaped = [n for n in capped_nodes if any(f in n["kernel"].lower() for f in CAPS[cap][2] + UNCAPPED)]
    uncapped_ms = sum(n["ms"] for n in escaped)
    total = sum(n["ms"] for n in capped_nodes) or 1.0
    kernels = sorted({f"{n['type']}: {n['kernel']}" for n in escaped})
    return {"status": "partial" if escaped else "ok",
            "reason": (f"{100 * uncapped_ms / total:.0f}% of node time in kernels the cap does not reach: "
                       + ", ".join(kernels)) if escaped else None,
            "agreement": agreement, "uncapped_ms": round(uncapped_ms, 4),
            "uncapped_fraction": round(uncapped_ms / total, 4), "uncapped_kernels": kernels}


def emulated_verdict(precision: str, native: np.ndarray, emulated: np.ndarray, nodes: list[dict]) -> dict:
    """Whether a run on the emulated AVX2-only CPU (export/x86_emulation.py) computed what the native run did
    (output_check), and "not emulated" where a kernel name still says AVX-512 / VNNI / AMX (the emulator let a
    feature through). {status, reason, agreement, above_avx2}."""
    check = output_check(precision, native, emulated)
    above = sorted({f"{n['type']}: {n['kernel']}" for n in nodes
                    if any(f in n["kernel"].lower() for f in CAPS["avx2"][2])})
    if check["status"] == "broken":
        return {**check, "above_avx2": above}
    if above:
        return {"status": "not emulated", "reason": "kernels above AVX2 ran: " + ", ".join(above),
                "agreement": check["agreement"], "above_avx2": above}
    return {"status": "ok", "reason": None, "agreement": check["agreement"], "above_avx2": []}
