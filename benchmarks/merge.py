"""`python -m benchmarks merge FILES...`: one report from host and device results.json files.

Writes OUTPUT/merged.json ({"schema", "schema_version", "source": "merged", "reports": [...]}), OUTPUT/results.md
(one cross-machine table, then each machine's own tables) and OUTPUT/latency.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from edge_crossformer.files import atomic_path
from edge_crossformer.outputs import OutputError, check_output

from .report import RUNTIME_NAMES, machine_line, markdown, plot_latency

SCHEMA = "edge-crossformer/results"
REQUIRED = ("schema", "schema_version", "machine", "settings", "results")


# What merge replaces in --output; an input among them is refused (its earlier merged.json included).
OWNED = ("merged.json", "results.md", "latency.png")


class MergeError(ValueError):
    pass


def read_report(path: Path) -> list[dict]:
    """The machine reports in one file (a merged file holds several), each checked against the schema."""
    if not path.is_file():
        raise MergeError(f"{path} {'is a directory' if path.is_dir() else 'not found'}; pass results.json files")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MergeError(f"{path} is not JSON ({e}); pass results.json files written by python -m benchmarks or "
                         "by the demo apps' benchmark mode") from e
    if isinstance(data, dict) and data.get("source") == "merged":
        reports = data.get("reports")
        if not isinstance(reports, list):
            raise MergeError(f"{path} is a merged file without a list of reports; merge the results.json files again")
        return [_checked(path, r) for r in reports]
    return [_checked(path, data)]


def _checked(path: Path, data) -> dict:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise MergeError(f"{path} is not a benchmark results file (schema should be '{SCHEMA}'); see "
                         "docs/results_schema.md")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise MergeError(f"{path} lacks {', '.join(missing)} (docs/results_schema.md)")
    if data["schema_version"] != 1:
        raise MergeError(f"{path} has schema_version {data['schema_version']}; this tool reads version 1")
    data.setdefault("source_file", str(path))
    return data


def combined_table(reports: list[dict]) -> str:
    lines = ["| machine | model | runtime | backend | precision | variant | median ms | p90 ms | trimmed mean ms |",
             "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for rep in reports:
        name = rep["machine"].get("name", "?")
        s = rep["settings"]
        for r in rep["results"]:
            lat = r.get("latency_ms") or {}
            if r.get("status", "ok") != "ok":
                cells = f"{r.get('status')}: {r.get('error') or ''} | | "
            else:
                cells = f"{lat['median']:.2f} | {lat['p90']:.2f} | {lat['trimmed_mean']:.2f}"
            lines.append(f"| {name} | {s.get('model')} @ {s.get('img_size')} | "
                         f"{RUNTIME_NAMES.get(r['runtime'], r['runtime'])} | {r.get('backend') or '-'} | "
                         f"{r['precision']} | {r.get('variant', 'project')} | {cells} |")
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks merge", description=__doc__)
    p.add_argument("files", nargs="+", type=Path, help="results.json files (host and devices)")
    p.add_argument("--output", type=Path, default=Path("benchmark_results/merged"))
    args = p.parse_args(argv)
    try:
        check_output(args.output, "--output", directory=True, owned=[args.output / n for n in OWNED],
                     inputs={"FILES": args.files})
        reports = [rep for f in args.files for rep in read_report(f)]
    except (MergeError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    models = {(r["settings"].get("model"), r["settings"].get("img_size")) for r in reports}
    notes = []
    if len(models) > 1:
        notes.append("note: the files measure different models or sizes: " + ", ".join(f"{m} @ {s}" for m, s in
                                                                                     sorted(models, key=str)))
        print(notes[-1], file=sys.stderr)
    merged = {"schema": SCHEMA, "schema_version": 1, "source": "merged",
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "inputs": [str(f) for f in args.files], "reports": reports}
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output / "merged.json") as tmp:
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
    md = ["# Benchmarks: host and devices", "", *[f"- {machine_line(r)} ({r.get('source', '?')})" for r in reports],
          "", *notes, "", combined_table(reports)]
    for rep in reports:
        md.append(markdown(rep))
    try:
        plot_latency(reports, args.output / "latency.png")
        md.append("![latency](latency.png)\n")
    except ImportError:
        md.append("(plots need matplotlib)\n")
    with atomic_path(args.output / "results.md") as tmp:
        tmp.write_text("\n".join(md))
    print(f"merged {len(reports)} report(s) into {args.output / 'merged.json'} and results.md")
    return 0
