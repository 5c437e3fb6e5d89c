"""What a diagnosis tells: the first layer over the gate, the worst layers, a table, diagnose.json and a plot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from edge_crossformer.files import atomic_path, json_safe

WORST = 10


def _judged(row: dict, kernel: bool) -> float | None:
    """The number a layer is gated on: runtime vs the INT8 simulation where there is one, else vs float."""
    return row.get("kernel_rel") if kernel else row.get("rel")


def summarise(rows: list[dict], gate: float, kernel: bool) -> dict:
    """first_over_gate (in network order), the WORST layers by error, and a one-line summary."""
    judged = [(row, _judged(row, kernel)) for row in rows]
    over = [row for row, value in judged if value is not None and not value <= gate]  # NaN counts as over
    ranked = sorted((pair for pair in judged if pair[1] is not None), key=lambda p: -_sortable(p[1]))
    first = over[0]["layer"] if over else None
    measure = "runtime vs INT8 simulation" if kernel else "runtime vs torch"
    blind = [row["layer"] for row, value in judged if value is None]
    summary = (f"first layer over the gate ({measure}, {gate:g}): {first} "
               f"(block {over[0]['block']}), error {_fmt(_judged(over[0], kernel))}" if over
               else f"no layer over the gate ({measure}, {gate:g})")
    if blind:
        summary += f"; {len(blind)} layer(s) not exposed by the runtime"
    return {"gate": gate, "gated_on": measure, "first_over_gate": first,
            "first_block_over_gate": over[0]["block"] if over else None,
            "worst": [row["layer"] for row, _ in ranked[:WORST]], "not_exposed": blind, "layers": rows,
            "error_growth": error_growth(rows, "sim_cosine" if kernel else "cosine")[:WORST], "summary": summary}


def error_growth(rows: list[dict], key: str) -> list[dict]:
    """Where the error enters, largest first: for each block-level point (stem, block, merge, final norm, head) in
    network order, how much 1 - cosine with float (`key`: the INT8 simulation's where there is one) grows over the
    block-level point before it. Per-layer errors accumulate downstream of the layer that causes them; their growth
    is what `python -m quantize sensitivity` (one layer INT8 at a time) ranks too (docs/diagnose.md)."""
    grown, before = [], 0.0
    for row in rows:
        if row["layer"] != row["block"] or row.get(key) is None:
            continue
        error = 1.0 - row[key]
        grown.append({"block": row["block"], "added": error - before, "one_minus_cosine": error})
        before = error
    return sorted(grown, key=lambda g: -_sortable(g["added"]))


def against_sensitivity(result: dict, sensitivity: dict, top: int = 3) -> dict:
    """How the blocks where the INT8 simulation's error grows (`error_growth`) compare with `python -m quantize
    sensitivity`'s ranking (its sensitivity.json: each unit's KL divergence from FP32 when only it is INT8, summed
    per block): the top-`top` blocks of each, their overlap, and Spearman's rank correlation over the blocks both
    rank. The measures differ (error accumulated in the whole INT8 model vs logits with one unit INT8), so this
    is agreement, not identity (docs/diagnose.md)."""
    import numpy as np

    from .points import block_of

    kl: dict[str, float] = {}
    for row in sensitivity["layers"]:
        block = block_of(row["unit"])
        if block is not None:
            kl[block] = kl.get(block, 0.0) + float(row["only_int8"]["kl"])
    growth = {g["block"]: g["added"] for g in error_growth(result["layers"], "sim_cosine")}
    both = [b for b in growth if b in kl]
    ranks = [np.argsort(np.argsort(values)) for values in ([growth[b] for b in both], [kl[b] for b in both])]
    rho = float(np.corrcoef(*ranks)[0, 1]) if len(both) > 2 else None
    by_growth, by_kl = sorted(both, key=lambda b: -growth[b])[:top], sorted(both, key=lambda b: -kl[b])[:top]
    return {"top": top, "diagnose": by_growth, "sensitivity": by_kl,
            "overlap": [b for b in by_growth if b in by_kl], "spearman": rho, "blocks": len(both)}


def _sortable(value: float) -> float:
    return math.inf if value is None or math.isnan(value) else value


def _fmt(value, spec: str = ".2e") -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict, console=None) -> None:
    """First layer over the gate, then the worst layers, in a rich table on stderr."""
    from rich.console import Console
    from rich.table import Table

    # Layer names whole, also when stderr is not a terminal (rich's default there is 80 columns).
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    kernel = result["gated_on"].startswith("runtime vs INT8")
    table = Table(title=f"{result['artifact']} on {result['runtime']}: {result['summary']}", title_justify="left")
    columns = ["layer", "rel err", "cosine", "rewrite rel"] + (["INT8 sim rel", "sim cosine", "runtime vs sim"]
                                                               if kernel else [])
    for col in columns:
        table.add_column(col, justify="left" if col == "layer" else "right", no_wrap=col == "layer")
    by_name = {row["layer"]: row for row in result["layers"]}
    shown = ([result["first_over_gate"]] if result["first_over_gate"] else []) + [
        name for name in result["worst"] if name != result["first_over_gate"]]
    for name in shown:
        row = by_name[name]
        cells = [name + (" (first over gate)" if name == result["first_over_gate"] else ""), _fmt(row.get("rel")),
                 _fmt(row.get("cosine"), ".6f"), _fmt(row.get("rewrite_rel"))]
        if kernel:
            cells += [_fmt(row.get("sim_rel")), _fmt(row.get("sim_cosine"), ".6f"), _fmt(row.get("kernel_rel"))]
        value = _judged(row, kernel)
        style = "red" if value is None or not value <= result["gate"] else ""
        table.add_row(*cells, style=style)
    console.print(table)
    growth = [g for g in result.get("error_growth", []) if g["added"] > 0][:3]
    if growth:
        what = "quantization error (INT8 simulation)" if kernel else "error"
        console.print(f"{what} grows most at: " + ", ".join(
            f"{g['block']} (1 - cosine +{g['added']:.1e})" for g in growth))
    agreement = result.get("sensitivity")
    if agreement:
        rho = "-" if agreement["spearman"] is None else f"{agreement['spearman']:.2f}"
        console.print(f"against quantize sensitivity: top {agreement['top']} here {', '.join(agreement['diagnose'])}; "
                      f"there {', '.join(agreement['sensitivity'])}; shared {len(agreement['overlap'])}, "
                      f"rank correlation {rho} over {agreement['blocks']} blocks")
    if result["not_exposed"]:
        console.print(f"not exposed by {result['runtime']}: {', '.join(result['not_exposed'][:8])}"
                      + (" ..." if len(result["not_exposed"]) > 8 else ""))


def plot(results: list[dict], path: Path) -> None:
    """Error growth through the network: one line per artifact (log scale), the INT8 simulation dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = max((r["layers"] for r in results), key=len)
    names = [row["layer"] for row in layers]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.22), 4.5))
    for result in results:
        index = {row["layer"]: i for i, row in enumerate(result["layers"])}
        for key, style, label in (("rel", "-", result["artifact"]), ("sim_rel", "--", "INT8 simulation")):
            xs = [index[n] for n in names if n in index and result["layers"][index[n]].get(key) is not None]
            ys = [max(result["layers"][x][key], 1e-12) for x in xs]
            if xs:
                ax.plot(xs, ys, style, marker=".", label=f"{label} ({result['artifact']})" if key == "sim_rel"
                        else label)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("max |diff| / max |ref| of the layer")
    ax.set_title("error through the network, per artifact (vs the exported torch model)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(directory: Path, document: dict) -> list[Path]:
    """diagnose.json and diagnose.png into `directory`, each through a temporary file renamed into place."""
    directory = Path(directory)
    paths = [directory / "diagnose.json", directory / "diagnose.png"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    with atomic_path(paths[1]) as tmp:
        plot(document["artifacts"], tmp.with_suffix(".png"))
        tmp.with_suffix(".png").replace(tmp)
    return paths
