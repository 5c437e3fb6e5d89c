"""results.json -> results.md tables and PNG plots; shared by `python -m benchmarks` and `python -m benchmarks merge`."""

from __future__ import annotations

import json
from pathlib import Path

from edge_crossformer.files import atomic_path

from edge_crossformer import targets as registry

from .accuracy import WEIGHTS

# Display names: PyTorch eager, then each target's runtime (Core ML's too: device results name it).
RUNTIME_NAMES = {"pytorch": "PyTorch eager", **{t.runtime or t.name: t.runtime_name for t in registry.TARGETS.values()}}
# accuracy.json keys its runtimes by export target
ACCURACY_KEYS = {t.runtime: t.name for t in registry.runnable()}


def _f(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def machine_line(report: dict) -> str:
    m = report["machine"]
    isa = f"; {', '.join(m['isa'])}" if m.get("isa") else ""
    isa += f" (INT8: {m['int8_dot_product']})" if m.get("int8_dot_product") else ""
    mem = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    return f"{m.get('name')}: {m.get('cpu') or '?'}, {m.get('cores')} cores{mem}{isa}; {m.get('os')}"


def markdown(report: dict) -> str:
    """One machine's results as Markdown (what the README's performance section shows)."""
    s = report["settings"]
    lines = [f"### {s.get('model')} @ {s.get('img_size')} px, batch 1, {s.get('threads') or 'default'} threads",
             "", f"Machine: {machine_line(report)}  ", f"Created {report['created']}, commit "
             f"`{(report.get('commit') or '?')[:12]}`; {s.get('warmup')} warm-up + {s.get('runs')} timed runs per "
             f"case" + (f" in {s['rounds']} interleaved rounds." if s.get("rounds") else "."), ""]
    if (report.get("model") or {}).get("macs"):
        lines.append(f"Model: {report['model']['macs'] / 1e9:.2f} GMAC, {report['model']['params'] / 1e6:.1f} M "
                     "parameters (counted from the model).")
    if report.get("peaks"):
        lines.append("GEMM peak here: " + ", ".join(f"{p.upper()} {v['gmacs_per_s']:.0f} GMAC/s"
                                                     for p, v in report["peaks"].items()) + ".")
    lines += ["", "| runtime | precision | variant | median ms | p90 ms | trimmed mean ms | load ms | peak MiB | "
              "size MB | % of GEMM peak |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        name = RUNTIME_NAMES.get(r["runtime"], r["runtime"]) + (f" ({r['backend']})" if r.get("backend") not in (
            None, "CPU", "eager") else "")
        if r.get("status", "ok") != "ok":
            lines.append(f"| {name} | {r['precision']} | {r.get('variant', 'project')} | {r['status']}: "
                         f"{r.get('error') or ''} "
                         "| | | | | | |")
            continue
        lat = r["latency_ms"]
        size = r["artifact_bytes"] / 1e6 if r.get("artifact_bytes") else None
        roof = 100 * r["roofline_fraction"] if r.get("roofline_fraction") else None
        lines.append(f"| {name} | {r['precision']} | {r.get('variant', 'project')} | {_f(lat['median'])} | {_f(lat['p90'])} | "
                     f"{_f(lat['trimmed_mean'])} | {_f(r.get('load_ms'), '.0f')} | "
                     f"{_f(r.get('peak_rss_mib'), '.0f')} | {_f(size, '.1f')} | {_f(roof, '.1f')} |")
    if report.get("ratios"):
        lines += ["", "| ratio (median latency) | value | goal | met |", "| --- | ---: | ---: | --- |"]
        for g in report["ratios"]:
            met = {True: "yes", False: "**no**", None: "-"}[g.get("met")]
            lines.append(f"| {g['name']} | {_f(g.get('value'), '.3f')} | "
                         f"{'-' if g.get('goal') is None else '<= ' + str(g['goal'])} | {met} |")
    if report.get("recommendation"):
        lines += ["", "What to ship on this CPU (fastest artifact that passed the export's accuracy gates):", ""]
        lines += [f"- {rec['line']}" for rec in report["recommendation"]]
    deleg = report.get("delegation") or {}
    if deleg:
        lines += ["", "Placement:", ""]
        for file, d in deleg.items():
            if "ops_outside_delegate" in d:
                lines.append(f"- `{file}`: {d.get('delegates')} delegate(s), {d.get('ops_outside_delegate')} ops "
                             f"outside {d.get('by_op') or ''}")
            else:
                hist = d.get("op_histogram") or {}
                top = ", ".join(f"{k} {v}" for k, v in sorted(hist.items(), key=lambda kv: -kv[1])[:8])
                lines.append(f"- `{file}`: max rank {d.get('max_rank')}, {d.get('gather_ops')} gathers; ops: {top}; "
                             f"compute plan: {d.get('compute_plan')}")
    return "\n".join(lines) + "\n"


def plot_latency(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(rep, r) for rep in reports for r in rep["results"] if r.get("status", "ok") == "ok" and r.get("latency_ms")]
    if not rows:
        return
    labels = [(f"{rep['machine'].get('name', '')}: " if len(reports) > 1 else "")
              + f"{RUNTIME_NAMES.get(r['runtime'], r['runtime'])} {r['precision']} {r.get('variant', 'project')}"
              + (f" [{r.get('backend')}]" if r.get("backend") and rep.get("source") != "host"
                 else "") for rep, r in rows]
    med = [r["latency_ms"]["median"] for _, r in rows]
    p90 = [r["latency_ms"]["p90"] for _, r in rows]
    colors = ["#4c72b0" if r.get("variant", "project") == "project" else "#c44e52" for _, r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.6))
    y = range(len(rows))
    ax.barh(y, med, color=colors, alpha=0.9)
    ax.errorbar(med, y, xerr=[[0] * len(rows), [b - a for a, b in zip(med, p90)]], fmt="none", ecolor="black",
                capsize=2, lw=0.8)
    for yi, v in zip(y, med):
        ax.text(v, yi, f" {v:.1f}", va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median latency, ms (whisker: p90); blue = this project, red = upstream as exported")
    s = reports[0]["settings"]
    ax.set_title(f"{s.get('model')} @ {s.get('img_size')} px, batch 1" + (
        f", {s.get('threads')} threads, {reports[0]['machine'].get('cpu', '')}" if len(reports) == 1 else ""),
        fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_accuracy_latency(report: dict, path: Path) -> bool:
    acc = report.get("accuracy")
    if not acc or not acc.get("results"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for r in report["results"]:
        key = ACCURACY_KEYS.get(r["runtime"])
        if r.get("status") != "ok" or r["variant"] != "project" or key not in acc["results"]:
            continue
        name = {"fp32": "FP32", "int8": "INT8 PTQ", "int8-dynamic": "INT8 PTQ dynamic",
                "int8-full-range": "INT8 PTQ full-range", **WEIGHTS}.get(r["precision"])
        entry = acc["results"][key].get(name)
        if entry:
            points.append((r["latency_ms"]["median"], entry["top1"], f"{RUNTIME_NAMES[r['runtime']]} {name}"))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for x, y, label in points:
        ax.scatter([x], [y], s=40)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("median latency, ms (batch 1)")
    ax.set_ylabel(f"top-1 %, {acc.get('images')} images ({acc.get('data')})")
    ax.set_title(f"{report['settings']['model']}: accuracy vs latency on this host", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(report: dict, output: Path) -> list[Path]:
    """results.json, results.md, latency.png (+ accuracy_latency.png when accuracy numbers exist)."""
    output.mkdir(parents=True, exist_ok=True)
    written = [output / "results.json", output / "results.md"]
    with atomic_path(written[0]) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    try:
        plot_latency([report], output / "latency.png")
        written.append(output / "latency.png")
        md += "\n![latency](latency.png)\n"
        if plot_accuracy_latency(report, output / "accuracy_latency.png"):
            written.append(output / "accuracy_latency.png")
            md += "\n![accuracy vs latency](accuracy_latency.png)\n"
    except ImportError:
        md += "\n(plots need matplotlib: pip install 'edge-crossformer[plots]')\n"
    with atomic_path(written[1]) as tmp:
        tmp.write_text(md)
    return written
