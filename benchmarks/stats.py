"""Latency statistics as docs/results_schema.md defines them (the apps implement the same, checked by golden.json)."""

from __future__ import annotations

import math


def latency_stats(samples_ms, trim: float) -> dict:
    """median, nearest-rank p90, mean after dropping `trim` of the runs at each end, min, max, n."""
    s = sorted(float(v) for v in samples_ms)
    n = len(s)
    if n == 0:
        raise ValueError("no timed runs to summarise")
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    k = int(math.floor(trim * n))
    kept = s[k:n - k] if n - 2 * k > 0 else s
    return {"median": median, "p90": s[max(0, math.ceil(0.9 * n) - 1)], "trimmed_mean": sum(kept) / len(kept),
            "min": s[0], "max": s[-1], "n": n}
