"""profile.json -> a stacked-bar PNG per runtime x precision (one bar per ISA, node time by kind), and the console
table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .node_kinds import KINDS, LABELS
from .report import RUNTIME_NAMES

COLORS = {"gemm": "#4c72b0", "attention": "#dd8452", "norm": "#55a868", "activation": "#c44e52",
          "elementwise": "#8172b3", "reorder": "#937860", "transpose": "#da8bc3", "other": "#8c8c8c"}


def groups(report: dict) -> dict[tuple[str, str], list[dict]]:
    """Measured profiles per (runtime, precision), native first."""
    out: dict[tuple[str, str], list[dict]] = {}
    for p in report["profiles"]:
        if p.get("by_kind"):
            out.setdefault((p["runtime"], p["precision"]), []).append(p)
    for rows in out.values():
        rows.sort(key=lambda p: p["isa"] != "native")
    return out


def write_plots(report: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    load = report["settings"].get("load_average", {}).get("before", ["?"])[0]
    for (runtime, precision), rows in groups(report).items():
        fig, ax = plt.subplots(figsize=(8.5, 1.9 + 0.55 * len(rows)))
        left = [0.0] * len(rows)
        for kind in KINDS:
            widths = [r["by_kind"][kind] for r in rows]
            if not any(widths):
                continue
            ax.barh(range(len(rows)), widths, left=left, color=COLORS[kind], label=LABELS[kind])
            left = [a + b for a, b in zip(left, widths)]
        for i, r in enumerate(rows):
            ax.text(left[i], i, f" {r['node_ms']:.2f} ms nodes / {r['wall_ms']['median']:.2f} ms wall", va="center",
                    fontsize=7)
        ax.set_yticks(range(len(rows)), [r["isa_label"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(left) * 1.6)
        ax.set_xlabel("median node time, ms (summed per kind)")
        s = report["settings"]
        ax.set_title(f"{RUNTIME_NAMES.get(runtime, runtime)} {precision}: {s['model']} @ {s['img_size']} px, "
                     f"{s['threads']} threads, {report['machine']['cpu']} (load {load})", fontsize=8)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.45 if len(rows) < 3 else -0.3), ncol=4,
                  frameon=False)
        fig.tight_layout()
        path = folder / f"{runtime}_{precision}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def kernel_counts(profile: dict, top: int = 6) -> str:
    """An emulated run's kernels (no times: they are the emulator's), most nodes first: 'FullyConnected
    jit_gemm_I8 x36, ...'."""
    ranked = sorted(profile["kernels"], key=lambda k: -k["nodes"])[:top]
    return ", ".join(f"{k['type']} {k['kernel']} x{k['nodes']}" for k in ranked)


def markdown(report: dict) -> str:
    """profile.json as Markdown: one table per ISA (node ms by kind per case), the top kernels, the cap checks."""
    s, m = report["settings"], report["machine"]
    load = s.get("load_average", {})
    lines = [f"## Per-node profiles: {s['model']} @ {s['img_size']} px, batch 1, {s['threads']} threads", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; ISA {', '.join(m['isa'])} ({m['int8_dot_product']}). "
             f"Load average (1 / 5 / 15 min) before {load.get('before')}, after {load.get('after')}: a shared "
             f"machine, every time is an upper bound. Created {report['created']}, commit "
             f"`{(report.get('commit') or '?')[:12]}`; {s['rounds']} processes per case x {s['runs']} profiled runs, "
             "medians.", ""]
    by_isa: dict[str, list[dict]] = {}
    for p in report["profiles"]:
        by_isa.setdefault(p.get("isa_label") or p["isa"], []).append(p)
    for isa, rows in by_isa.items():
        lines += [f"### {isa}", "", "| case | wall ms | node ms | " + " | ".join(KINDS) + " | top kernels (ms) |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in KINDS) + " | --- |"]
        for p in rows:
            if p.get("kernels"):
                lines.append(f"| {p['id']} | {p['status']} | | {kernel_counts(p)} |" + " |" * len(KINDS))
                continue
            if not p.get("by_kind"):
                lines.append(f"| {p['id']} | {p['status']}: {p.get('error') or ''} |" + " |" * (len(KINDS) + 2))
                continue
            top = ", ".join(f"{k['kernel']} {k['ms']:.2f}" for k in p["by_kernel"][:3])
            lines.append(f"| {p['id']} | {p['wall_ms']['median']:.2f} | {p['node_ms']:.2f} | "
                         + " | ".join(f"{p['by_kind'][k]:.2f}" for k in KINDS) + f" | {top} |")
        lines.append("")
    checks = [p for p in report["profiles"] if p.get("cap_check")]
    if checks:
        lines += ["Cap checks (a capped run counts only when its output matches the uncapped run's):", ""]
        lines += [f"- {p['id']}: {p['cap_check']['status']}"
                  + (f" ({p['cap_check']['reason']})" if p["cap_check"].get("reason") else "") for p in checks]
    for runtime, caps in report.get("isa_caps", {}).items():
        for isa, cap in caps.items():
            if not cap["measured"]:
                lines.append(f"- {runtime} {isa}: not measured: {cap['why']}")
    return "\n".join(lines) + "\n"


def print_table(console: Console, report: dict) -> None:
    table = Table(title=f"node time by kind, ms ({report['machine']['cpu']}, {report['settings']['threads']} threads)")
    for col in ("case", "ISA", "wall", "nodes", *KINDS, "top kernel"):
        table.add_column(col, justify="left" if col in ("case", "ISA", "top kernel") else "right")
    for p in report["profiles"]:
        if p.get("kernels"):
            table.add_row(p["id"], p["isa_label"], p["status"], "", *[""] * len(KINDS), kernel_counts(p)[:70])
            continue
        if not p.get("by_kind"):
            table.add_row(p["id"], p.get("isa_label", p["isa"]), f"[red]{p['status']}[/]",
                          (p.get("error") or "")[:70], *[""] * (len(KINDS) + 1))
            continue
        top = p["by_kernel"][0] if p["by_kernel"] else {"kernel": "-", "ms": 0}
        table.add_row(p["id"], p["isa_label"], f"{p['wall_ms']['median']:.2f}", f"{p['node_ms']:.2f}",
                      *[f"{p['by_kind'][k]:.2f}" for k in KINDS], f"{top['kernel']} {top['ms']:.2f}")
    console.print(table)
