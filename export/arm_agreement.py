"""Top-1 agreement of artifacts on ARM (QEMU-emulated) and on this host, on Fashion-MNIST test images (docs/arm.md).

    python -m export.arm_agreement REFERENCE_DIR ARTIFACT [ARTIFACT ...] [--cpus phone,neon] [--images 200]

REFERENCE_DIR holds an FP32 export (its ONNX file, run on this host, is the reference). For every artifact and
emulated CPU: agreement of its top-1 with the reference on x86 and on ARM, agreement ARM vs x86, the cosine of ARM
to x86 logits, and the emulated seconds per inference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import arm
from edge_crossformer.targets import by_runtime

RUNTIME_OF = {".pte": "executorch", ".onnx": "onnxruntime", ".xml": "openvino"}


def _host(path: Path, images: np.ndarray) -> np.ndarray:
    run = by_runtime(RUNTIME_OF[path.suffix]).load_runner(path, threads=arm.THREADS)
    return np.concatenate([np.asarray(run(x[None])).reshape(1, -1) for x in images])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def measure(env, path: Path, images: np.ndarray, reference: np.ndarray, cpu: str, hint: str) -> dict:
    runtime = RUNTIME_OF[path.suffix]
    host = _host(path, images)
    outputs, facts = arm.run(env, runtime, path, images, cpu, {"precision_hint": hint, "timeout_s": 3600})
    emulated = np.concatenate([out[0].reshape(1, -1) for out in outputs])
    top = reference.argmax(1)
    return {"artifact": path.name, "runtime": runtime, "cpu": cpu, "cpu_model": facts["cpu_model"],
            "emulator": facts["emulator"], "hint": hint if runtime == "openvino" else None, "images": len(images),
            "x86_vs_fp32": float(np.mean(host.argmax(1) == top)),
            "arm_vs_fp32": float(np.mean(emulated.argmax(1) == top)),
            "arm_vs_x86": float(np.mean(emulated.argmax(1) == host.argmax(1))),
            "cosine_arm_x86": _cosine(emulated, host),
            "seconds_per_inference": float(np.median(facts["seconds_per_inference"]))}


def main(argv: list[str] | None = None) -> int:
    from edge_crossformer.data import load_dataset

    parser = argparse.ArgumentParser(prog="python -m export.arm_agreement", description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--cpus", default="phone,neon")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--hint", default="f32")
    args = parser.parse_args(argv)
    env = arm.environment()
    images = load_dataset(None, {"size": 32, "crop": 32}, limit=args.images).images.numpy()
    reference = _host(next(args.reference.glob("*_onnx_fp32.onnx")), images)
    for path in args.artifacts:
        for cpu in args.cpus.split(","):
            print(json.dumps(measure(env, path, images, reference, cpu, args.hint)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
