"""`python -m benchmarks android`: run the Android demo app's benchmark on a connected phone and fetch its JSON.

Pushes manifest.json, labels.txt and the XNNPACK .pte of an export to the app's external files folder
(`/sdcard/Android/data/<package>/files/models`, which the app prefers over its bundled assets), starts the app's
benchmark activity with an intent, waits for `BENCHMARK_DONE` in logcat and pulls `files/benchmarks/results.json`
(docs/results_schema.md) through `run-as` (debug builds). Merge it with a host run: `python -m benchmarks merge`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edge_crossformer.cli import MAX_RUNS, MAX_THREADS, float_in, int_in
from edge_crossformer.outputs import OutputError, check_output

from .verify import ArtifactError, verified_export

PACKAGE = "org.edgecrossformer.demo"
ACTION = "org.edgecrossformer.demo.BENCHMARK"
TAG = "EdgeCrossFormer"


class AndroidError(RuntimeError):
    """Something about adb, the phone or the app is not ready; the message says what to do."""


def _adb(serial: str | None, *args: str, check: bool = True, timeout: float = 120) -> str:
    cmd = ["adb"] + (["-s", serial] if serial else []) + list(args)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AndroidError(f"`{' '.join(cmd)}` failed: {(out.stderr or out.stdout).strip()[:300]}")
    return out.stdout


def check_device(serial: str | None) -> str:
    if shutil.which("adb") is None:
        raise AndroidError("adb not found on PATH: install Android platform-tools (Android Studio's SDK manager, or "
                           "`sudo apt-get install adb`), connect a phone with USB debugging on, and try again")
    lines = [ln.split() for ln in _adb(None, "devices").splitlines()[1:] if ln.strip()]
    ready = [ln[0] for ln in lines if len(ln) > 1 and ln[1] == "device"]
    if serial:
        if serial not in ready:
            raise AndroidError(f"device {serial} is not connected or not authorised (adb devices: {lines or 'none'})")
        return serial
    if not ready:
        why = f" ({', '.join(' '.join(ln) for ln in lines)})" if lines else ""
        raise AndroidError(f"no Android device connected{why}: plug one in with USB debugging enabled and accept "
                           "the RSA prompt on the phone")
    if len(ready) > 1:
        raise AndroidError(f"several devices connected ({', '.join(ready)}); pick one with --serial")
    return ready[0]


def pick_artifacts(export_dir: Path) -> tuple[dict, list[Path]]:
    manifest_path = export_dir / "manifest.json"
    if not manifest_path.exists():
        raise AndroidError(f"{manifest_path} not found: run `python -m export --target executorch --output "
                           f"{export_dir}` first")
    # Pushed to the phone only as the manifest vouches for it: an edited or truncated .pte would be timed there.
    manifest = verified_export(export_dir, f"export it again (python -m export --target executorch --output "
                                           f"{export_dir} --overwrite)")
    pte = [a for a in manifest["artifacts"] if a.get("target") == "executorch" and a.get("delegate") == "xnnpack"]
    if not pte:
        raise AndroidError(f"{manifest_path} lists no ExecuTorch XNNPACK .pte; export with --target executorch")
    files = [manifest_path, export_dir / pte[0]["file"]]
    if (export_dir / "labels.txt").exists():
        files.append(export_dir / "labels.txt")
    return manifest, files


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks android", description=__doc__)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/crossformer-fmnist"),
                   help="an export folder holding manifest.json and an XNNPACK .pte")
    p.add_argument("--serial", help="adb device serial when several are connected")
    p.add_argument("--package", default=PACKAGE)
    p.add_argument("--runs", type=int_in(1, MAX_RUNS), default=50, help="timed runs, >= 1 (default 50)")
    p.add_argument("--warmup", type=int_in(0, MAX_RUNS), default=10, help="untimed runs, >= 0 (default 10)")
    p.add_argument("--threads", type=int_in(0, MAX_THREADS), default=0,
                   help=f"0 to {MAX_THREADS} (default 0: ExecuTorch's default)")
    p.add_argument("--timeout", type=float_in(0, low_open=True), default=600,
                   help="seconds to wait for the benchmark, > 0 (default 600)")
    p.add_argument("--output", type=Path, default=Path("benchmark_results/android/results.json"))
    args = p.parse_args(argv)
    try:
        # The local work first (no phone needed to find a bad path or export), then the phone.
        _, files = pick_artifacts(args.artifacts)
        check_output(args.output, "--output", directory=False, inputs={"--artifacts": files})
        serial = check_device(args.serial)
        if f"package:{args.package}" not in _adb(serial, "shell", "pm", "list", "packages", args.package):
            raise AndroidError(f"{args.package} is not installed on {serial}: build and install the demo app "
                               "(apps/README.md: `./gradlew installDebug` in apps/android)")
        remote = f"/sdcard/Android/data/{args.package}/files/models"
        _adb(serial, "shell", "mkdir", "-p", remote)
        for f in files:
            print(f"pushing {f.name} ({f.stat().st_size / 1e6:.1f} MB)")
            _adb(serial, "push", str(f), f"{remote}/{f.name}", timeout=600)
        _adb(serial, "logcat", "-c")
        _adb(serial, "shell", "am", "start", "-W", "-a", ACTION, "-n", f"{args.package}/.BenchmarkActivity",
             "--ei", "runs", str(args.runs), "--ei", "warmup", str(args.warmup), "--ei", "threads", str(args.threads))
        print(f"benchmark started on {serial}; waiting for {TAG} BENCHMARK_DONE")
        deadline = time.time() + args.timeout
        while True:
            log = _adb(serial, "logcat", "-d", "-s", f"{TAG}:*", check=False)
            if "BENCHMARK_FAILED" in log:
                raise AndroidError("the app reported: " + log.split("BENCHMARK_FAILED", 1)[1].splitlines()[0].strip())
            if "BENCHMARK_DONE" in log:
                break
            if time.time() > deadline:
                raise AndroidError(f"no BENCHMARK_DONE within {args.timeout:.0f} s; `adb logcat -s {TAG}` shows why")
            time.sleep(2)
        data = _adb(serial, "exec-out", "run-as", args.package, "cat", "files/benchmarks/results.json")
        report = json.loads(data)
    except (AndroidError, ArtifactError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except json.JSONDecodeError:
        print("error: could not read the app's results.json through run-as (a release build?); install the debug "
              "build, or pull it by hand: see apps/README.md", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    from edge_crossformer.files import atomic_path

    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}; merge with a host run: python -m benchmarks merge "
          f"benchmark_results/<model>_<size>/results.json {args.output}")
    return 0
