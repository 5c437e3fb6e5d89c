"""Parity: every artifact, run on its own runtime, against the faithful reference model.

Inputs: the sample images shipped in `export/samples/` (resized as the manifest says) plus seeded image-like inputs
(smooth random fields, not white noise, so attention sees structure). Reference: the faithful model on CUDA when
present (TF32 off), else CPU, in float32. Gates: docs/parity.md.
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

from . import targets

# The gates (docs/parity.md): FP32 relative to max |reference logit|, per target (export.targets); FP16 by PSNR;
# INT8 by top-1 agreement and accuracy drop on real labelled images.
FP16_PSNR_DB = 60.0
FP16_TOP1 = 0.99
INT8_TOP1 = 0.98
INT8_DROP_PP = 0.5


def parity_inputs(img_size: int, resize: dict, count: int, samples_dir: Path) -> np.ndarray:
    """[N, 3, S, S] float32 in [0, 1]: shipped sample images first, then seeded smooth random images."""
    from edge_crossformer.data import load_image, preprocess

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


def compare(got: np.ndarray, ref: np.ndarray) -> ParityResult:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"artifact output shape {got.shape} differs from the reference {ref.shape}")
    diff = got - ref
    max_abs = float(np.abs(diff).max())
    peak = float(np.abs(ref).max())
    cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-30)
    mse = float(np.mean(diff ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    return ParityResult(max_abs, max_abs / peak if peak else max_abs, float(cos.min()), psnr, agree, len(ref))


def gate(target: str, precision: str, result: ParityResult) -> tuple[str, str]:
    """('pass' | 'fail', the rule applied)."""
    if precision == "fp32":
        limit = targets.get(target).fp32_gate
        ok = result.rel_max <= limit and result.top1_agreement == 1.0
        return ("pass" if ok else "fail"), f"max_abs <= {limit:g} x max|ref| and same top-1"
    if precision == "fp16":
        top1 = targets.get(target).fp16_top1 or FP16_TOP1
        ok = result.psnr_db >= FP16_PSNR_DB and result.top1_agreement >= top1
        return ("pass" if ok else "fail"), f"PSNR >= {FP16_PSNR_DB:g} dB and top-1 agreement >= {top1:.0%}"
    ok = result.top1_agreement >= INT8_TOP1
    return ("pass" if ok else "fail"), f"top-1 agreement with the fp32 reference >= {INT8_TOP1:.0%}"


def run_batched(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    """Artifacts are batch 1: run them one input at a time."""
    return np.concatenate([np.asarray(run(inputs[i:i + 1]), dtype=np.float32).reshape(1, -1)
                           for i in range(len(inputs))])
