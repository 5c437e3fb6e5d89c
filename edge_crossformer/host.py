"""Which CPU a number was measured on: the ISA features that change INT8 (and BF16) arithmetic.

An INT8 artifact is built on one machine and runs on many, and x86 CPUs differ in how they add INT8 products:
with VNNI or AMX the u8 x s8 products go straight into 32-bit sums; without them (SSE, AVX2, AVX-512 without VNNI)
ONNX Runtime's and OpenVINO's kernels first add adjacent pairs of products into a saturating 16-bit value
(pmaddubsw). Arm's dot-product instructions accumulate in 32 bits. Every parity and benchmark figure records this.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# /proc/cpuinfo flags that decide which kernels the runtimes pick. x86: AVX2 / FMA, AVX-512, VNNI (AVX-512 and the
# VEX-encoded AVX-VNNI), BF16, AMX. Arm: NEON (asimd), dot product (asimddp), int8 matmul (i8mm), bf16, SVE.
ISA_FLAGS = ("sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def int8_dot_product(isa: list[str] | tuple[str, ...], arch: str) -> str:
    """How INT8 products are summed on a CPU with these features (what decides INT8 results on x86)."""
    features = set(isa)
    x86 = arch.lower() in ("x86_64", "amd64", "i686", "x86")
    if x86 and features & {"amx_int8"}:
        return "x86 AMX: 32-bit accumulation"
    if x86 and features & {"avx512_vnni", "avx_vnni"}:
        return "x86 VNNI: 32-bit accumulation"
    if x86:
        return "x86 without VNNI: u8 x s8 pairs summed in saturating int16 (pmaddubsw)"
    if "asimddp" in features or "i8mm" in features:
        return "Arm dot product: 32-bit accumulation"
    if arch.lower() in ("arm64", "aarch64") and platform.system() == "Darwin":
        return "Apple silicon: 32-bit accumulation"
    return f"{arch}: int8 accumulation not classified"


def cpu_level(isa: list[str] | tuple[str, ...], arch: str) -> str | None:
    """The x86 level INT8 kernels are picked by (targets.CPUS): "vnni" (32-bit INT8 sums: AVX-512 VNNI, AVX-VNNI,
    AMX), "avx2" (AVX2 without VNNI, AVX-512 without VNNI included: oneDNN's INT8 brgemm kernels need VNNI), or None
    (not x86, or below AVX2)."""
    if arch.lower() not in ("x86_64", "amd64"):
        return None
    features = set(isa)
    if features & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return "vnni"
    return "avx2" if "avx2" in features else None


@functools.lru_cache(maxsize=1)
def host_isa() -> dict:
    """{cpu, arch, isa, int8_dot_product} for this machine (Linux reads /proc/cpuinfo; elsewhere the arch only)."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    arch = platform.machine()
    cpu = info.get("model name") or info.get("Hardware") or platform.processor() or arch
    if platform.system() == "Darwin":
        import subprocess

        try:
            cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 check=True, timeout=10).stdout.strip() or cpu
        except (OSError, subprocess.SubprocessError):
            pass
    isa = sorted(f for f in ISA_FLAGS if f in flags)
    return {"cpu": cpu, "arch": arch, "isa": isa, "int8_dot_product": int8_dot_product(isa, arch)}
