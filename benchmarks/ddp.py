"""`python -m benchmarks ddp`: training and QAT throughput with 1 process and with N processes under torchrun.

Runs `python -m edge_crossformer.train` and `python -m quantize qat` on the same Fashion-MNIST subset and global
batch, once as plain commands and once behind `torchrun --nproc_per_node N` (gloo on CPUs, NCCL on GPUs), and
writes `ddp.json` with images per second of training (evaluation, calibration and start-up left out), the loss
curves side by side, and the machine every number comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_crossformer.cli import MAX_IMAGES, int_in
from edge_crossformer.files import atomic_path
from edge_crossformer.outputs import check_output

from .system import commit, machine, versions

ROOT = Path(__file__).resolve().parents[1]


def _command(module: str, processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--rdzv-backend",
            "c10d", "--rdzv-endpoint", "localhost:0", "-m", module, *args]


def _run(module: str, processes: int, args: list[str], log: Path) -> float:
    started = time.time()
    with open(log, "w") as out:
        done = subprocess.run(_command(module, processes, args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"{module} with {processes} process(es) failed (exit {done.returncode}); see {log}")
    return time.time() - started


def _epochs(work: Path) -> list[dict]:
    """The per-epoch records of a finished run (its resume state keeps them)."""
    import torch

    return json.loads(torch.load(work / "last.pt", map_location="cpu", weights_only=True)["history"])


def _case(name: str, module: str, args: list[str], images: int, processes: int, threads: int, tmp: Path) -> dict:
    work = tmp / f"{name}-{processes}x{threads}"
    extra = ["--workdir", str(work), "--no-resume"] + (["--output", str(work / "out.safetensors")]
                                                       if module == "quantize" else [])
    load = os.getloadavg()[0]  # another job on the same cores shows here (and slows multi-threaded runs most)
    wall = _run(module, processes, [*args, *extra, "--threads", str(threads)], work.with_suffix(".log"))
    epochs = _epochs(work)
    seconds = epochs[-1]["seconds"]
    return {"processes": processes, "threads_per_process": threads, "load_average_1min_before": round(load, 2),
            "train_seconds": seconds,
            "images_per_second": round(images * len(epochs) / seconds, 1), "wall_seconds": round(wall, 1),
            "loss": [e["loss"] for e in epochs]}


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks ddp", description=__doc__)
    p.add_argument("--processes", type=int_in(2, 64), default=2, help="processes of the torchrun runs (default 2)")
    p.add_argument("--train-images", type=int_in(1, MAX_IMAGES), default=2048,
                   help="training images per epoch, a multiple of --batch-size (default 2048)")
    p.add_argument("--batch-size", type=int_in(1, 65536), default=128, help="global batch (default 128)")
    p.add_argument("--output", type=Path, default=Path("benchmark_results/ddp"))
    args = p.parse_args(argv)
    # No input paths (the runs read the installed Fashion-MNIST); the output is checked before the runs, not after.
    check_output(args.output, "--output", directory=True, owned=[args.output / "ddp.json"])
    common = ["--train-limit", str(args.train_images), "--batch-size", str(args.batch_size), "--epochs", "1"]
    cases = {"train (crossformer-fmnist, FP32)": ("edge_crossformer.train", common),
             "qat (crossformer-fmnist, NNCF scheme)": ("quantize", ["qat", *common, "--val-limit", "500",
                                                                      "--calib-size", "64"])}
    results = {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="ddp-") as tmp:
        for i, (name, (module, cmd)) in enumerate(cases.items()):
            # One process on every core, one process on one core, N processes sharing the cores.
            results[name] = [_case(f"case{i}", module, cmd, args.train_images, n, threads, Path(tmp))
                             for n, threads in ((1, cores), (1, 1), (args.processes, max(1, cores // args.processes)))]
    report = {"what": "training throughput (images/s, training steps only) with 1 process vs torchrun",
              "train_images": args.train_images, "global_batch": args.batch_size, "results": results,
              "machine": machine(), "versions": versions(), "commit": commit()}
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output / "ddp.json") as tmp_json:
        tmp_json.write_text(json.dumps(report, indent=2) + "\n")
    for name, rows in results.items():
        print(name, "; ".join(f"{r['processes']} process(es) x {r['threads_per_process']} thread(s): "
                              f"{r['images_per_second']} images/s" for r in rows))
    print(f"wrote {args.output / 'ddp.json'}")
    return 0
