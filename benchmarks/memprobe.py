"""Peak memory of one benchmark case, in a process of its own: `python -m benchmarks.memprobe '<json>'`.

Prints one JSON line: peak_rss_mib is the growth of the process's peak resident set from just before loading the
artifact (runtime already imported) to after load + 5 inferences.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    return _status_mib("VmRSS") or _peak_mib()


def _peak_mib() -> float:
    # Linux: VmHWM, which exec resets (ru_maxrss would carry the parent's high-water mark over fork + exec).
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def main() -> int:
    from .runners import Case, load

    spec = json.loads(sys.argv[1])
    c = spec["case"]
    case = Case(**{**c, "artifact": Path(c["artifact"]) if c["artifact"] else None})
    from edge_crossformer import targets

    module = "torch" if case.runtime == "pytorch" else targets.by_runtime(case.runtime).runtime_module
    __import__(module)
    x = np.random.default_rng(0).random((1, 3, spec["img_size"], spec["img_size"]), dtype=np.float32)
    before = _rss_mib()
    run, load_ms = load(case, spec["threads"], spec["model"], spec["img_size"], spec.get("checkpoint"))
    for _ in range(5):
        run(x)
    print(json.dumps({"peak_rss_mib": round(_peak_mib() - before, 1), "load_ms": round(load_ms, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
