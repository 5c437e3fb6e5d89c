"""python -m benchmarks golden: the golden contract the demo apps test themselves against.

For the bundled model and the shipped sample images it records what a correct app computes: the preprocessed input
(per-channel statistics and pixels at fixed coordinates, so an app can check its resize exactly), the logits and the
top-5. Two synthetic images (an upscale and an antialiased downscale, both non-square so the center crop matters)
pin the resize path that the 28x28 samples never take. The logits come from the faithful reference model in float64,
so regenerating the file on another machine gives the same digits; the fp32 artifacts match them within
`tolerances.logits_abs.fp32`. Re-running gives byte-identical JSON. Each sample's decoded pixels are written beside
the file as a binary PPM (`images[].pixels_file`): the apps' core tests start from exactly the exporter's RGB bytes,
with no image decoder and no colour management.

    python -m benchmarks golden             # (re)writes apps/golden/golden.json and apps/golden/samples/*.ppm
    python -m benchmarks golden --check     # exit 1 when a committed file is stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from edge_crossformer.outputs import check_output

from .stats import latency_stats

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "apps" / "golden" / "golden.json"
DEFAULT_SAMPLES = ROOT / "export" / "samples"
DEFAULT_MODEL = "crossformer-fmnist"
SCHEMA = "edge-crossformer/golden"
SCHEMA_VERSION = 1

# Where pixels are probed, as fractions of the crop size (corners, center, and a few off-grid points).
PROBE_FRACTIONS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.5), (0.1, 0.9), (0.3, 0.15),
                   (0.42, 0.55), (0.65, 0.35), (0.77, 0.84), (0.88, 0.06), (0.22, 0.45))

# Synthetic 8-bit RGB images that apps regenerate from the formula (mod is non-negative, as Python's %).
PATTERN = "r = (7x + 3y) mod 256, g = (x * y) mod 256, b = (255 - 5x + 2y) mod 256; x = column, y = row, from 0"
RESIZE_CASES = (("downscale-100x75", 100, 75), ("upscale-20x24", 20, 24))

# Latency samples (ms) with outliers, even and odd counts, and the edge case of one run: the apps' statistics must
# reproduce docs/results_schema.md's definitions on these exactly (to 1e-9).
STATISTICS_CASES = (
    (0.1, (8.4, 8.1, 9.9, 8.0, 8.2, 8.3, 31.5, 8.1, 8.6, 8.0, 7.9, 8.2, 8.5, 8.1, 8.8, 8.0, 8.3, 12.0, 8.2, 8.1)),
    (0.2, (5.0, 4.0, 3.0, 100.0, 6.0, 2.0, 1.0)),
    (0.1, (3.25,)),
)
STATISTICS = ("median over all runs (mean of the two middle values for an even count); p90 nearest-rank: the "
              "ceil(0.9 n)-th smallest; trimmed_mean: sorted, drop floor(trim n) runs from each end (none when "
              "that would leave nothing), mean of the rest")

TOLERANCES = {
    "input_abs": 1e-5,        # float preprocessing (Android): max |app - golden| per probed pixel
    "input_abs_8bit": 0.002,  # 8-bit image inputs (Core ML): rounding to 1/255 adds up to 0.5/255
    "input_stats_abs": 1e-4,  # per-channel mean / std / min / max
    "logits_abs": {"fp32": 1e-3},
    "probability_abs": {"fp32": 1e-3},
    "top1_must_match": ["fp32", "fp16", "int8"],
    "top5_order_must_match": ["fp32"],
}
NOTES = [
    "Preprocessing (manifest input.resize): decode to 8-bit RGB (alpha composited on white), divide by 255, resize "
    "the shorter side to resize.size with bilinear interpolation (half-pixel centers; when shrinking, a triangle "
    "filter widened by the scale factor, i.e. antialiased, as torch.nn.functional.interpolate(antialias=True)), "
    "new sizes rounded half to even, then a center crop of resize.crop (offset floor((new - crop) / 2)), clamp to "
    "[0, 1]. Normalization is inside the model.",
    "Tensor layout NCHW float32; pixels[i] is [R, G, B] at probes[i] = [row, column] of the cropped image.",
    "std is the population standard deviation (divide by N).",
    "Logits: faithful reference model in float64 on the float32 input. Probabilities: softmax of the logits.",
]


class GoldenError(RuntimeError):
    """Something the golden file cannot be built from; the message says how to fix it."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def label_of(path: Path, labels: list[str]) -> int | None:
    """Class index from a sample's file name (fmnist_test0000_ankle-boot.png -> 'Ankle boot'), None if unknown."""
    name = path.stem.split("_", 2)[-1]
    by_slug = {slug(label): i for i, label in enumerate(labels)}
    return by_slug.get(slug(name))


def synthetic_image(width: int, height: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] following PATTERN."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    rgb = np.stack([(7 * x + 3 * y) % 256, (x * y) % 256, (255 - 5 * x + 2 * y) % 256], axis=-1)
    return rgb.astype(np.uint8)


def probes(size: int) -> list[list[int]]:
    return [[round(fy * (size - 1)), round(fx * (size - 1))] for fy, fx in PROBE_FRACTIONS]


def ppm(rgb: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] as a binary PPM (P6): a header any app can parse in a few lines, then the raw bytes."""
    height, width = rgb.shape[:2]
    return b"P6\n%d %d\n255\n" % (width, height) + np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()


def pixels_file(sample: Path) -> str:
    """Where a sample's decoded copy lives, relative to the golden file."""
    return f"samples/{sample.stem}.ppm"


def decoded_samples(golden: dict, samples: Path = DEFAULT_SAMPLES) -> dict[str, bytes]:
    """{pixels_file: PPM bytes} for every image in golden, decoded as the exporter decodes (load_image)."""
    from edge_crossformer.data import load_image

    return {image["pixels_file"]: ppm(load_image(Path(samples) / image["file"])) for image in golden["images"]}


def input_record(x: torch.Tensor) -> dict:
    """Statistics and probed pixels of one preprocessed image [3, S, S]."""
    flat = x.double().reshape(3, -1)
    r6 = lambda values: [round(float(v), 6) for v in values]  # noqa: E731
    return {
        "shape": [1, *x.shape],
        "mean": r6(flat.mean(1)), "std": r6(flat.std(1, unbiased=False)),
        "min": r6(flat.min(1).values), "max": r6(flat.max(1).values),
        "pixels": [r6(x[:, py, px]) for py, px in probes(x.shape[-1])],
    }


def top5(logits: torch.Tensor, labels: list[str]) -> list[dict]:
    probs = torch.softmax(logits, 0)
    order = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))[:5]
    return [{"index": i, "label": labels[i], "probability": round(float(probs[i]), 6)} for i in order]


def build_golden(model_name: str = DEFAULT_MODEL, samples: Path = DEFAULT_SAMPLES) -> dict:
    from edge_crossformer import Normalized, create_model, get_config
    from edge_crossformer.data import load_image, preprocess
    from edge_crossformer.registry import ASSETS, default_checkpoint
    from export.manifest import input_section, output_section
    from export.request import read_labels

    cfg = get_config(model_name)
    checkpoint = default_checkpoint(model_name)
    if checkpoint is None or not cfg.labels_file:
        raise GoldenError(f"{model_name} has no bundled weights and labels; the golden file is for a bundled model "
                          f"(try --model {DEFAULT_MODEL})")
    files = sorted(Path(samples).glob("*.png"))
    if not files:
        raise GoldenError(f"no sample images (*.png) in {samples}; pass --samples DIR")
    img_size, num_classes = cfg.default_img_size, cfg.default_num_classes
    labels = read_labels(ASSETS / cfg.labels_file, num_classes)
    contract = {"input": input_section(model_name, img_size), "output": output_section(num_classes)}
    resize = contract["input"]["resize"]

    model = Normalized(create_model(model_name)).double().eval()
    images = []
    for path in files:
        arr = load_image(path)
        x = preprocess(torch.from_numpy(arr)[None], resize)[0]
        with torch.no_grad():
            logits = model(x[None].double())[0]
        index = label_of(path, labels)
        images.append({
            "file": path.name, "pixels_file": pixels_file(path),
            "label": labels[index] if index is not None else None, "label_index": index,
            "source": {"width": int(arr.shape[1]), "height": int(arr.shape[0]), "mode": "gray"
                       if bool((arr == arr[..., :1]).all()) else "rgb"},
            "input": input_record(x),
            "logits": [round(float(v), 5) for v in logits],
            "top5": top5(logits, labels),
        })
    cases = []
    for name, width, height in RESIZE_CASES:
        x = preprocess(torch.from_numpy(synthetic_image(width, height))[None], resize)[0]
        cases.append({"name": name, "width": width, "height": height, "input": input_record(x)})

    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "generated_by": "python -m benchmarks golden",
        "model": model_name, "img_size": img_size, "num_classes": num_classes,
        "checkpoint": {"file": checkpoint.name, "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()},
        "labels": labels,
        "input": contract["input"], "output": contract["output"],
        "resize": resize,
        "probes": probes(img_size),
        "tolerances": TOLERANCES,
        "notes": NOTES,
        "images": images,
        "resize_cases": {"pattern": PATTERN, "cases": cases},
        "statistics": {"definition": STATISTICS, "cases": [
            {"trim": trim, "samples_ms": list(samples),
             "expected": {k: round(v, 9) for k, v in latency_stats(samples, trim).items()}}
            for trim, samples in STATISTICS_CASES]},
    }


def dumps(obj, indent: int = 0) -> str:
    """JSON with lists of scalars on one line (readable, small diffs), everything else indented."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, dict):
        if len(obj) <= 4 and all(not isinstance(v, (dict, list, tuple)) for v in obj.values()):
            return json.dumps(obj, ensure_ascii=False)  # e.g. one top-5 entry, the resize spec
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return json.dumps(list(obj), ensure_ascii=False)
        if all(isinstance(v, (list, tuple)) and all(not isinstance(w, (dict, list)) for w in v) for v in obj):
            return "[" + ", ".join(json.dumps(list(v), ensure_ascii=False) for v in obj) + "]"
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def render(golden: dict) -> str:
    return dumps(golden) + "\n"


def write_golden(golden: dict, output: Path, decoded: dict[str, bytes]) -> None:
    """The decoded samples first, so that a golden file on disk never names a copy that is not there yet."""
    from edge_crossformer.files import atomic_path

    for name, data in decoded.items():
        (output.parent / name).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output.parent / name) as tmp:
            tmp.write_bytes(data)
    with atomic_path(output) as tmp:
        tmp.write_text(render(golden), encoding="utf-8")


def stale_files(golden: dict, output: Path, decoded: dict[str, bytes]) -> list[Path]:
    """The files under output's folder that differ from what would be written (missing ones included)."""
    wanted = {output: render(golden).encode("utf-8")}
    wanted.update({output.parent / name: data for name, data in decoded.items()})
    return [path for path, data in wanted.items() if not path.is_file() or path.read_bytes() != data]


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks golden",
        description="Write the golden contract (preprocessed inputs, logits, top-5 of the sample images) that the "
                    "iOS and Android demo apps test against.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled model (default: {DEFAULT_MODEL})")
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder of sample PNGs (default: "
                   "export/samples)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="golden file (default: apps/golden/golden.json)")
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 when --output differs from what would be written")
    args = p.parse_args(argv)
    try:
        if not args.check:  # --check only reads --output
            check_output(args.output, "--output", directory=False, owned=(args.output, args.output.parent / "samples"),
                         inputs={"--samples": args.samples})
        golden = build_golden(args.model, args.samples)
        decoded = decoded_samples(golden, args.samples)
    except (GoldenError, ValueError) as e:  # OutputError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if not args.output.exists():
            print(f"error: {args.output} does not exist; create it with `python -m benchmarks golden`",
                  file=sys.stderr)
            return 1
        stale = stale_files(golden, args.output, decoded)
        if stale:
            print(f"{', '.join(map(str, stale))} stale or missing (model, samples or preprocessing changed); "
                  "regenerate with `python -m benchmarks golden` and commit apps/golden/", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    write_golden(golden, args.output, decoded)
    print(f"wrote {args.output} ({len(golden['images'])} images, {len(golden['resize_cases']['cases'])} resize cases)")
    return 0
