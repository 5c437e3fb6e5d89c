"""Parity: every artifact, run on its own runtime, against the faithful reference model. One set of metrics and
one gate for logits and for a backbone's maps (per output level), at every size the artifact serves that parity
checks (export.sizes.parity_sizes).

Inputs: the sample images shipped in `export/samples/` (resized as the manifest says) plus seeded image-like inputs
(smooth random fields, not white noise, so attention sees structure). INT8 is judged on real held-out images.
Reference: the faithful model on CUDA when present (TF32 off), else CPU, in float32. Gates: docs/parity.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_crossformer import targets
from edge_crossformer.compression import is_compressed, weight_scheme
from edge_crossformer.data import load_image, preprocess

from .sizes import Size, int8_images, output_names, parity_sizes
from .request import ExportRequest

# The gates (docs/parity.md): FP32 relative to max |reference| (logits, or each map), per target
# (edge_crossformer.targets); FP16 by PSNR; INT8 logits by top-1 agreement and accuracy drop on real labelled images,
# INT8 maps by the lowest cosine (per image) of any level on held-out real images. Compressed weights like INT8 logits,
# with each scheme's own thresholds (edge_crossformer.compression: max_drop_pp, min_top1_agreement).
FP16_PSNR_DB = 60.0
FP16_TOP1 = 0.99
INT8_TOP1 = 0.98
INT8_DROP_PP = 0.5
INT8_COSINE = 0.97
# Held-out real images an INT8 backbone is judged on, per size (docs/backbone.md).
INT8_MAP_IMAGES = 32


def parity_inputs(img_size: int, resize: dict, count: int, samples_dir: Path) -> np.ndarray:
    """[N, 3, S, S] float32 in [0, 1]: shipped sample images first, then seeded smooth random images."""
    images = []
    if samples_dir.is_dir():
        for path in sorted(samples_dir.glob("*.png")):
            arr = torch.from_numpy(load_image(path))[None]
            spec = {**resize, "size": img_size * resize["size"] // resize["crop"], "crop": img_size}
            images.append(preprocess(arr, spec)[0])
    gen = torch.Generator().manual_seed(1234)
    while len(images) < count:
        coarse = torch.rand(1, 3, 7, 7, generator=gen)
        fine = torch.rand(1, 3, img_size, img_size, generator=gen) * 0.15
        images.append((F.interpolate(coarse, size=(img_size, img_size), mode="bicubic", align_corners=False) * 0.85
                       + fine).clamp(0, 1)[0])
    return torch.stack(images[:max(count, len(images))]).numpy().astype(np.float32)


def eight_bit(images: np.ndarray) -> np.ndarray:
    """Images as an image input (Core ML, the apps) can represent them: 8-bit pixels, float32 in [0, 1]."""
    return (np.round(np.asarray(images, dtype=np.float64) * 255.0) / 255.0).astype(np.float32)


def reference_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def reference_logits(model: nn.Module, inputs: np.ndarray, batch: int = 8) -> tuple[np.ndarray, str]:
    device = reference_device()
    # TF32 off for the reference (full FP32 products), then the caller's settings back.
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = model.to(device)
        outs = [model(torch.from_numpy(inputs[i:i + batch]).to(device)).float().cpu()
                for i in range(0, len(inputs), batch)]
    finally:
        model.to("cpu")
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return torch.cat(outs).numpy(), name


@dataclass
class ParityResult:
    max_abs: float
    rel_max: float
    cosine: float
    psnr_db: float
    top1_agreement: float
    samples: int

    def as_dict(self) -> dict:
        return {"max_abs": self.max_abs, "rel_max": self.rel_max, "cosine": self.cosine, "psnr_db": self.psnr_db,
                "top1_agreement": self.top1_agreement, "samples": self.samples}


def metrics(got: np.ndarray, ref: np.ndarray) -> dict:
    """Per batch of outputs (first axis: inputs): max |diff|, that relative to the largest reference magnitude, the
    lowest per-input cosine, PSNR (peak: the largest reference magnitude) and SQNR."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"artifact output shape {got.shape} differs from the reference {ref.shape}")
    g, r = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    diff = g - r
    max_abs, peak = float(np.abs(diff).max()), float(np.abs(r).max())
    cos = np.sum(g * r, axis=1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1) + 1e-30)
    mse, noise = float(np.mean(diff ** 2)), float(np.sum(diff ** 2))
    return {"max_abs": max_abs, "rel_max": max_abs / peak if peak else max_abs, "cosine": float(cos.min()),
            "psnr_db": math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse),
            "sqnr_db": math.inf if noise == 0 else 10 * math.log10(float(np.sum(r ** 2)) / noise)}


def compare(got: np.ndarray, ref: np.ndarray) -> ParityResult:
    """Logits against the reference's: the metrics plus top-1 agreement."""
    m = metrics(got, ref)
    agree = float(np.mean(np.asarray(got).argmax(1) == np.asarray(ref).argmax(1)))
    return ParityResult(m["max_abs"], m["rel_max"], m["cosine"], m["psnr_db"], agree, len(ref))


def compare_maps(got: list[np.ndarray], ref: list[np.ndarray], names: list[str]) -> list[dict]:
    """A backbone's maps against the reference's, per output level."""
    if len(got) != len(ref):
        raise ValueError(f"artifact returned {len(got)} maps, the reference {len(ref)}")
    rows = []
    for name, g, r in zip(names, got, ref):
        if g.shape != r.shape:
            raise ValueError(f"{name}: artifact shape {g.shape} differs from the reference {r.shape}")
        rows.append({"output": name, "shape": list(g.shape[1:]), **metrics(g, r)})
    return rows


def gate(target: str, precision: str, result: ParityResult | list[dict]) -> tuple[str, str]:
    """('pass' | 'fail', the rule applied) for logits (a ParityResult) or a backbone's maps (compare_maps rows)."""
    if isinstance(result, list):
        return _gate_maps(target, precision, result)
    if precision == "fp32":
        limit = targets.get(target).fp32_gate
        ok = result.rel_max <= limit and result.top1_agreement == 1.0
        return ("pass" if ok else "fail"), f"max_abs <= {limit:g} x max|ref| and same top-1"
    if precision == "fp16":
        top1 = targets.get(target).fp16_top1 or FP16_TOP1
        ok = result.psnr_db >= FP16_PSNR_DB and result.top1_agreement >= top1
        return ("pass" if ok else "fail"), f"PSNR >= {FP16_PSNR_DB:g} dB and top-1 agreement >= {top1:.0%}"
    scheme = weight_scheme(precision)
    top1 = scheme.min_top1_agreement if scheme is not None else INT8_TOP1
    ok = result.top1_agreement >= top1
    return ("pass" if ok else "fail"), f"top-1 agreement with the fp32 reference >= {top1:.0%}"


def _gate_maps(target: str, precision: str, rows: list[dict]) -> tuple[str, str]:
    if precision == "int8":
        ok, rule = (all(r["cosine"] >= INT8_COSINE for r in rows),
                    f"every map: cosine with the fp32 reference >= {INT8_COSINE} on held-out real images")
    elif precision == "fp32":
        limit = targets.get(target).fp32_gate
        ok, rule = all(r["rel_max"] <= limit for r in rows), f"every map: max_abs <= {limit:g} x max|ref| of the map"
    else:
        ok, rule = all(r["psnr_db"] >= FP16_PSNR_DB for r in rows), f"every map: PSNR >= {FP16_PSNR_DB:g} dB"
    return ("pass" if ok else "fail"), rule


def run_batched(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    """Artifacts are batch 1: run them one input at a time."""
    return np.concatenate([np.asarray(run(inputs[i:i + 1]), dtype=np.float32).reshape(1, -1)
                           for i in range(len(inputs))])


def map_parity_inputs(hw: Size, count: int, samples_dir: Path) -> np.ndarray:
    """[N, 3, H, W] float32 in [0, 1], 8-bit: the shipped sample images resized to H x W (detectors resize, they
    do not crop), then seeded smooth random images."""
    images = [F.interpolate(torch.from_numpy(load_image(p)).permute(2, 0, 1)[None].float() / 255.0, size=hw,
                            mode="bilinear", align_corners=False)[0].clamp(0, 1)
              for p in sorted(samples_dir.glob("*.png"))]
    gen = torch.Generator().manual_seed(1234)
    while len(images) < count:
        coarse = torch.rand(1, 3, 7, 7, generator=gen)
        fine = torch.rand(1, 3, *hw, generator=gen) * 0.15
        images.append((F.interpolate(coarse, size=hw, mode="bicubic", align_corners=False) * 0.85 + fine)
                      .clamp(0, 1)[0])
    return (np.round(torch.stack(images[:count]).numpy().astype(np.float64) * 255) / 255).astype(np.float32)


@torch.no_grad()
def reference_maps(model: nn.Module, inputs: np.ndarray) -> list[np.ndarray]:
    outs = [model(torch.from_numpy(inputs[i:i + 1])) for i in range(len(inputs))]
    return [torch.cat([o[level] for o in outs]).numpy() for level in range(len(outs[0]))]


def run_maps(runner, inputs: np.ndarray) -> list[np.ndarray]:
    outs = [runner(inputs[i:i + 1]) for i in range(len(inputs))]
    outs = [o if isinstance(o, (list, tuple)) else [o] for o in outs]
    return [np.concatenate([np.asarray(o[level], dtype=np.float32) for o in outs]) for level in range(len(outs[0]))]


def _worst(per_size: list[dict], rows) -> dict:
    """The worst value of each metric over every size (and level) checked."""
    values = [r for s in per_size for r in rows(s)]
    pick = {"rel_max": max, "max_abs": max, "cosine": min, "psnr_db": min, "sqnr_db": min, "top1_agreement": min}
    return {key: fn(r[key] for r in values) for key, fn in pick.items() if values and key in values[0]}


def classifier_range_parity(art, reference: nn.Module, req: ExportRequest, samples_dir: Path) -> dict:
    """A classifier that serves a range: logits against the any-size oracle at each of `parity_sizes`, gated like
    a fixed-size classifier at every size."""
    per_size, ok, rule = [], True, ""
    for hw in parity_sizes(req):
        inputs = map_parity_inputs(hw, req.parity_samples, samples_dir)
        with torch.no_grad():
            expected = reference(torch.from_numpy(inputs)).numpy()
        measured = compare(run_batched(art.runner, inputs), expected)
        status, rule = gate(art.target, art.precision, measured)
        ok &= status == "pass"
        per_size.append({"size": list(hw), "status": status, **measured.as_dict()})
    return {"reference_device": "cpu", **_worst(per_size, lambda s: [s]), "samples": req.parity_samples,
            "sizes_checked": len(per_size), "gate": rule + ", at every size", "status": "pass" if ok else "fail",
            "per_size": per_size}


def features_parity(art, reference: nn.Module, req: ExportRequest, samples_dir: Path, held=None) -> dict:
    """A backbone artifact against the reference backbone at each of `parity_sizes`, per output level; the worst
    level and size decide. `held`: INT8's held-out real images (export.int8.Int8Data), which INT8 is judged on."""
    names, per_size, ok, rule = output_names(req), [], True, ""
    for hw in parity_sizes(req):
        inputs = (map_parity_inputs(hw, req.parity_samples, samples_dir) if held is None
                  else int8_images(held.parity[:INT8_MAP_IMAGES], hw).numpy())
        rows = compare_maps(run_maps(art.runner, inputs), reference_maps(reference, inputs), names)
        status, rule = gate(art.target, art.precision, rows)
        ok &= status == "pass"
        per_size.append({"size": list(hw), "status": status, "outputs": rows})
    return {"reference_device": "cpu", **_worst(per_size, lambda s: s["outputs"]), "samples": len(inputs),
            **({"images": held.source} if held is not None else {}), "sizes_checked": len(per_size),
            "gate": rule, "status": "pass" if ok else "fail", "per_size": per_size}


def output_contract(got: np.ndarray) -> str | None:  # one output as the runtime returns it (before run_batched)
    """What is wrong with an artifact's outputs against the manifest's contract (float32 logits), or None. An INT8
    artifact can return its quantized codes instead (top-1 is unchanged by the monotone mapping, so the INT8 gate
    alone would pass it) and an app would read int8 codes as logits."""
    if not np.issubdtype(got.dtype, np.floating):
        return f"returns {got.dtype} values, not float logits (a quantized output tensor left undequantized)"
    return None


def classifier_parity(art, inputs: np.ndarray, expected: np.ndarray, device: str, int8_set=None) -> dict:
    """A fixed-size classifier artifact's logits against the reference's; INT8 judged on real held-out images
    (`int8_set`: images, their reference logits, labels (-1: none), where they come from) with the top-1 drop
    gated where every image is labelled."""
    extra, held = {}, int8_set is not None and (art.precision == "int8" or is_compressed(art.precision))
    if held:
        inputs, expected, labels, where = int8_set
        # Weight compression calibrates nothing: only the held-out part of INT8's images judges it.
        extra["images"] = where if art.precision == "int8" else f"{len(inputs)} held-out images of {where}"
    got = run_batched(art.runner, inputs)
    measured = compare(got, expected)
    status, rule = gate(art.target, art.precision, measured)
    scheme = weight_scheme(art.precision)
    if scheme is not None and not held:  # no images of the model's own: the logits' direction, not near ties
        status = "pass" if measured.cosine >= scheme.min_cosine else "fail"
        rule = (f"cosine of the logits with the fp32 reference >= {scheme.min_cosine} on every parity input (no "
                "labelled images of the model's own; top-1 agreement recorded, not gated)")
    broken = output_contract(np.asarray(art.runner(inputs[:1])))
    if broken:
        status, extra["output_contract"] = "fail", broken
    if held and (labels >= 0).all():
        limit = scheme.max_drop_pp if scheme is not None else INT8_DROP_PP
        fp32_acc = float((expected.argmax(1) == labels).mean() * 100)
        acc = float((got.argmax(1) == labels).mean() * 100)
        extra.update({"top1_fp32": fp32_acc, "top1_int8" if scheme is None else "top1_artifact": acc,
                      "top1_drop_pp": fp32_acc - acc})
        if fp32_acc - acc > limit + 1e-9:  # points are multiples of 100 / images: 0.2 is one image of 500
            status = "fail"
        rule += f" and top-1 drop <= {limit} pp on labelled images"
    result = {"reference_device": device, **measured.as_dict(), **extra, "gate": rule, "status": status}
    if art.cross_checks:
        result["cross_checks"] = cross_checks(art, inputs, expected, got)
    return result


def cross_checks(art, inputs: np.ndarray, expected: np.ndarray, judged: np.ndarray) -> dict:
    """Parity of the artifact's other runners (Core ML on a Mac: the MIL evaluator), recorded, not gated; and how
    close each is to the judging runtime itself."""
    out = {}
    for name, run in art.cross_checks.items():
        got = run_batched(run, inputs)
        measured = compare(got, expected)
        out[name] = {**measured.as_dict(), "status": gate(art.target, art.precision, measured)[0],
                     "vs_runtime": compare(got, judged).as_dict()}
    return out
