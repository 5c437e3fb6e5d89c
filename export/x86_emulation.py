"""An x86 CPU without AVX-512 or VNNI, emulated: this host's own Python run by QEMU user mode with a Haswell CPU model
(AVX2 + FMA; QEMU's TCG implements no AVX-512 at all). The runtimes pick their kernels from CPUID, which the emulator
answers, so which kernels they select on an AVX2-only CPU, and what those compute, can be checked on any x86 host.
How fast they run there cannot: TCG translates every instruction, so its times are the emulator's.

qemu-x86_64 comes from the same Debian trixie qemu-user package as qemu-aarch64, installed under DIR by
`python -m export setup-arm` (export/arm_setup.py).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from . import arm

DIR = arm.CACHE.parent / "x86"
EMULATOR = "qemu-x86_64"
# Haswell: AVX2 and FMA, no AVX-512, no VNNI. noTSX: TCG has no TSX and would warn about it on every start.
CPU_MODEL = "Haswell-noTSX"
# What CPUID must not report inside (checked by tests/test_cpu_isa.py from the emulated process itself).
ABSENT = ("AVX512F", "AVX512VNNI", "AVX512_SKX")


class Unavailable(Exception):
    """The emulator is not installed here, or this host is not x86."""


def emulator() -> Path:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"an x86 CPU model is emulated on x86 hosts only (this one: {platform.machine()})")
    path = DIR / EMULATOR
    if not path.is_file():
        raise Unavailable(f"{path} not found: run {arm.SETUP_COMMAND} (it installs {EMULATOR} beside qemu-aarch64)")
    return path


def command(*args: str) -> list[str]:
    """This Python, with these arguments, on the emulated AVX2-only CPU (run by the emulator directly: a child
    process it started would run natively)."""
    return [str(emulator()), "-cpu", CPU_MODEL, sys.executable, *args]


def label(host: str) -> str:
    """How a figure from the emulated CPU is written beside it."""
    return f"AVX2 (QEMU-emulated Haswell on {host}: kernels and outputs; times are the emulator's, not speed)"
