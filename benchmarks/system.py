"""What machine and which tool versions a result came from (the `machine`, `versions` and `commit` fields)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from edge_crossformer.host import host_isa


def _packages() -> tuple[str, ...]:
    """The packages whose versions every report records: the manifest's list."""
    from export.manifest import TOOLS

    return TOOLS


def machine() -> dict:
    host = host_isa()
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"kind": "host", "name": f"{platform.system().lower()} {platform.machine()} ({cores} cores)",
            "os": f"{platform.system()} {platform.release()}", "cpu": host["cpu"], "cores": cores,
            "isa": host["isa"], "int8_dot_product": host["int8_dot_product"],
            "memory_gib": round(memory, 1) if memory else None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _packages():
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
