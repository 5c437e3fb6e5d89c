"""What to ship on this CPU, per runtime: the fastest of this project's artifacts that passed its accuracy gates,
with its ratio to the same runtime's FP32 and to upstream as exported, from the latency benchmark's own results.

The gates are the export's (export.parity: INT8 judged on held-out real images); a case whose artifact failed them,
or that no gate judges (OpenVINO's BF16 hint runs the FP32 file in BF16 and nothing checks its accuracy), is not a
candidate, and the recommendation says so.
"""

from __future__ import annotations

# The gates' verdict when the benchmark times seeded random weights (near-tied logits: INT8's top-1 agreement with FP32
# says nothing about a trained model): ranked by speed, and the recommendation says the gates were not judged.
UNJUDGED = "not judged (random weights)"
# Upstream as exported, the reference every runtime is compared with (issue #5's goals are against it too).
UPSTREAM = "openvino/fp32/baseline"


def gate_status(manifest: dict, file_name: str) -> str:
    """The export's verdict on one artifact file: pass, fail, or skipped (no runtime to judge it)."""
    for art in manifest.get("artifacts", []):
        if art.get("file") == file_name:
            return art.get("parity", {}).get("status", "unknown")
    return "unknown"


def _why_not(result: dict) -> str | None:
    if result.get("status") != "ok":
        return f"did not run: {result.get('error')}"
    if result["precision"] == "bf16":
        return "no accuracy gate judges the BF16 hint (the FP32 file computed in BF16)"
    if result.get("gates") not in ("pass", UNJUDGED):
        return f"accuracy gates: {result.get('gates', 'unknown')}"
    return None


def recommend(results: list[dict], isa_label: str) -> list[dict]:
    """Per runtime with project artifacts: {runtime, ship, precision, median_ms, vs_fp32, vs_upstream,
    vs_upstream_same_runtime, isa, excluded: [{id, why}], line}."""
    by_id = {r["id"]: r for r in results if r.get("status") == "ok" and r.get("latency_ms")}
    upstream = by_id.get(UPSTREAM)
    out = []
    for runtime in dict.fromkeys(r["runtime"] for r in results if r.get("variant") == "project"):
        if runtime == "pytorch":
            continue  # the reference, not something to deploy
        mine = [r for r in results if r["runtime"] == runtime and r.get("variant") == "project"]
        excluded = [{"id": r["id"], "why": why} for r in mine if (why := _why_not(r))]
        candidates = [r for r in mine if not _why_not(r)]
        if not candidates:
            out.append({"runtime": runtime, "ship": None, "isa": isa_label, "excluded": excluded,
                        "line": f"on this CPU ({isa_label}) {runtime}: nothing to ship (no artifact passed its gates "
                                "and ran)"})
            continue
        best = min(candidates, key=lambda r: r["latency_ms"]["median"])
        median = best["latency_ms"]["median"]
        fp32 = by_id.get(f"{runtime}/fp32/project")
        own = by_id.get(f"{runtime}/fp32/baseline")
        entry = {"runtime": runtime, "ship": best["id"], "precision": best["precision"],
                 "artifact": best.get("artifact"), "median_ms": median, "isa": isa_label,
                 "vs_fp32": _ratio(median, fp32), "vs_upstream": _ratio(median, upstream),
                 "vs_upstream_same_runtime": _ratio(median, own), "gates": best.get("gates"),
                 "excluded": excluded}
        entry["line"] = _line(entry)
        out.append(entry)
    return out


def _ratio(median: float, other: dict | None) -> float | None:
    return round(median / other["latency_ms"]["median"], 4) if other else None


def _line(e: dict) -> str:
    parts = [f"{e['vs_fp32']:.2f}x its FP32" if e["vs_fp32"] is not None else None,
             f"{e['vs_upstream']:.2f}x upstream's OpenVINO FP32" if e["vs_upstream"] is not None else None,
             f"{e['vs_upstream_same_runtime']:.2f}x upstream on {e['runtime']} FP32"
             if e["vs_upstream_same_runtime"] is not None and e["runtime"] != "openvino" else None]
    ratios = ", ".join(p for p in parts if p)
    return (f"on this CPU ({e['isa']}) ship {e['runtime']} {e['precision']} ({e['artifact']}): "
            f"{e['median_ms']:.2f} ms" + (f", {ratios}" if ratios else "")
            + (" (random weights: accuracy gates not judged; a trained checkpoint's export judges them)"
               if e.get("gates") == UNJUDGED else ""))
