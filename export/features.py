"""`--task features`: the detection / segmentation backbone's stage maps as the artifact's outputs.

One size (`--img-size H W`), or every multiple of 32 in a range from one artifact (`--dynamic-size MIN MAX`:
symbolic H and W in ONNX and OpenVINO, padding and masks computed in the graph). Parity is per output level,
relative to the level's largest reference magnitude, and for a range at every size in `parity_sizes`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_crossformer import get_config
from edge_crossformer.backbone import BackboneConfigError, as_hw, check_out_indices, check_range, output_specs
from edge_crossformer.reference_backbone import STRIDES

from . import targets
from .request import ExportError, ExportRequest, check_bounds, check_output, check_precisions

# Targets whose one artifact takes symbolic H and W; the others serve a list of sizes (--sizes: one ExecuTorch
# method / Core ML function per size, export/multisize.py, docs/multisize.md).
RANGE_TARGETS = ("onnx", "openvino")
LIST_TARGETS = ("coreml", "executorch")
MAX_SIZES = 8
# FP16 maps: PSNR per level, like the classifier's logits.
FP16_PSNR_DB = 60.0
# INT8 maps: the lowest cosine (per image) of any level with the FP32 reference on held-out real images, and
# how many of them parity runs per size (docs/backbone.md has what was measured).
INT8_COSINE = 0.97
INT8_IMAGES = 32


def validate_features(req: ExportRequest) -> ExportRequest:
    """Fill defaults and reject what a backbone export cannot do, before any work."""
    try:
        cfg = get_config(req.model).backbone()
        req.out_indices = check_out_indices((0, 1, 2, 3) if req.out_indices is None else req.out_indices)
        if req.dynamic_size is not None:
            check_range(cfg, *req.dynamic_size, name=req.model)
            req.img_hw = example_size(req.dynamic_size)
        elif req.sizes is not None:
            req.sizes = check_sizes(req)
            req.img_hw = req.sizes[0]
        else:
            size = req.img_size if req.img_size is not None else cfg.default_img_size
            req.img_hw = as_hw(size)
    except (BackboneConfigError, ValueError) as e:
        raise ExportError(str(e)) from e
    req.img_size = req.img_hw[0] if req.img_hw[0] == req.img_hw[1] else list(req.img_hw)
    _refuse_classifier_options(req)
    if req.sizes is not None:
        ranged = [t for t in req.targets if t in RANGE_TARGETS]
        if ranged:
            raise ExportError(f"--sizes makes one entry point per size for {', '.join(LIST_TARGETS)}; "
                              f"{', '.join(ranged)} serve every size in a range from one graph: export them with "
                              "--dynamic-size MIN MAX in a separate command")
    if req.dynamic_size is not None:
        fixed = [t for t in req.targets if t not in RANGE_TARGETS]
        if fixed:
            raise ExportError(f"--dynamic-size: one artifact for a range of sizes is made for "
                              f"{', '.join(RANGE_TARGETS)} (symbolic H and W); export {', '.join(fixed)} for a "
                              "list of sizes with --sizes HxW HxW ... (one entry point per size), in a separate "
                              "command")
    check_bounds(req)
    check_precisions(req)
    if any(req.precision_for(t) == "int8" for t in req.targets):
        if req.sizes is not None:
            raise ExportError("INT8 with --sizes is not supported yet (each size would be calibrated on its own): "
                              "export INT8 backbones one size at a time (--img-size H W), or a range for onnx, "
                              "openvino (--dynamic-size)")
        from .int8 import check_calibration_request

        check_calibration_request(req, get_config(req.model))
    if req.checkpoint is None and get_config(req.model).bundled_checkpoint is None:
        raise ExportError(f"{req.model} has no bundled weights; pass --checkpoint PATH (an upstream detection / "
                          "segmentation checkpoint, or a classification one as backbone initialisation)")
    if req.checkpoint is not None and not Path(req.checkpoint).is_file():
        raise ExportError(f"checkpoint not found (or not a file): {req.checkpoint}")
    req.output = Path(os.path.abspath(req.output))
    check_output(req.output, req.overwrite, (req.checkpoint,))
    return req


def check_classifier_range(req: ExportRequest, cfg) -> None:
    """--dynamic-size for the classifier: one ONNX / OpenVINO graph for every size in the range (FP32 / FP16)."""
    try:
        check_range(cfg, *req.dynamic_size, name=req.model)
    except BackboneConfigError as e:
        raise ExportError(str(e)) from e
    fixed = [t for t in req.targets if t not in RANGE_TARGETS]
    if fixed:
        raise ExportError(f"--dynamic-size: one classifier for a range of sizes is made for "
                          f"{', '.join(RANGE_TARGETS)} (symbolic H and W); export {', '.join(fixed)} at one size "
                          "(--img-size N), in a separate command")
    if any(req.precision_for(t) == "int8" for t in req.targets) or req.dynamic_batch:
        raise ExportError("--dynamic-size for the classifier is FP32 / FP16 and batch 1 for now: drop "
                          "--precision int8 / --dynamic-batch, or export one size")
    req.img_hw = example_size(req.dynamic_size)


def check_sizes(req: ExportRequest) -> tuple[tuple[int, int], ...]:
    sizes = tuple(as_hw(hw) for hw in req.sizes)
    if len(sizes) < 2 or len(sizes) > MAX_SIZES:
        raise ExportError(f"--sizes takes 2 to {MAX_SIZES} sizes (one entry point each), got {len(sizes)}; for "
                          "one size use --img-size H W")
    if len(set(sizes)) != len(sizes):
        raise ExportError(f"--sizes repeats a size ({', '.join(f'{h}x{w}' for h, w in sizes)}): give each once")
    return sizes


def size_dispatch(runners: dict[tuple[int, int], Callable]) -> Callable:
    """One runner for an artifact with an entry point per size: picks it by the input's H x W."""
    def run(x: np.ndarray):
        hw = tuple(x.shape[-2:])
        if hw not in runners:
            raise ValueError(f"input {hw[0]}x{hw[1]} is not one of the artifact's sizes "
                             f"({', '.join(f'{h}x{w}' for h, w in runners)}); resize to one of them")
        return runners[hw](x)

    return run


def _refuse_classifier_options(req: ExportRequest) -> None:
    given = [flag for flag, value in (("--num-classes", req.num_classes), ("--labels", req.labels_source),
                                      ("--reset-head", req.reset_head), ("--dynamic-batch", req.dynamic_batch),
                                      ("--max-accuracy-drop", req.max_accuracy_drop)) if value]
    if given:
        raise ExportError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to the classifier; a backbone "
                          "(--task features) has no head: drop the flag")


def example_size(dynamic_size: tuple[int, int]) -> tuple[int, int]:
    """The size a range is traced at: non-square (so H and W stay two symbols) and inside the range."""
    low, high = dynamic_size
    if low == high:
        raise ExportError(f"--dynamic-size {low} {high} is one size: use --img-size {low} {high}")
    return low, low + 32


def dynamic_shapes(req: ExportRequest) -> tuple[dict, ...] | None:
    """torch.export's dims for the image's H and W: multiples of 32 within --dynamic-size, or None for one size."""
    if req.dynamic_size is None:
        return None
    low, high = req.dynamic_size
    h = torch.export.Dim("h_32", min=low // 32, max=high // 32)
    w = torch.export.Dim("w_32", min=low // 32, max=high // 32)
    return ({2: 32 * h, 3: 32 * w},)


def output_names(req: ExportRequest) -> list[str]:
    return [spec["name"] for spec in output_specs(get_config(req.model).backbone(), req.out_indices, None)]


def parity_sizes(req: ExportRequest) -> list[tuple[int, int]]:
    """Where an artifact is checked: its one size, or for a range its ends, squares, non-squares and sizes that
    need padding at every stage (at least 10 when the range has them)."""
    if req.sizes is not None:
        return list(req.sizes)
    if req.dynamic_size is None:
        return [tuple(req.img_hw)]
    low, high = req.dynamic_size
    mid = (low + high) // 64 * 32
    odd = [v for v in range(low, high + 1, 32) if (v // 32) % 2]  # odd stage-4 grids: padded everywhere
    picks = [(low, low), (high, high), (low, high), (high, low), (mid, mid), (low, mid), (mid, high),
             (low + 32, low), (high - 32, high)]
    picks += [(odd[0], odd[-1]), (odd[len(odd) // 2], odd[len(odd) // 2])] if odd else []
    inside = [(h, w) for h, w in picks if low <= h <= high and low <= w <= high]
    return list(dict.fromkeys(inside))


def parity_inputs(hw: tuple[int, int], count: int, samples_dir: Path) -> np.ndarray:
    """[N, 3, H, W] float32 in [0, 1]: the shipped sample images resized to H x W (detectors resize, they do not
    crop), then seeded smooth random images."""
    from edge_crossformer.data import load_image

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


def int8_images(images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Calibration / held-out images (loaded square) resized to the backbone's H x W, 8-bit like every input."""
    resized = F.interpolate(images.float(), size=tuple(hw), mode="bilinear", align_corners=False).clamp(0, 1)
    return torch.round(resized * 255) / 255


def calibration_arrays(images: torch.Tensor, req: ExportRequest) -> list[np.ndarray]:
    """Batch-1 calibration arrays at the backbone's size; for a range, spread over `parity_sizes` (one graph
    serves them all: calibrated at one size only, the smallest lost most, cosine 0.967 at 64 x 64 for
    crossformer-fmnist calibrated at 64 x 96)."""
    sizes = parity_sizes(req)
    return [int8_images(images[i:i + 1], sizes[i % len(sizes)]).numpy().astype(np.float32)
            for i in range(len(images))]


@torch.no_grad()
def reference_maps(model, inputs: np.ndarray) -> list[np.ndarray]:
    outs = [model(torch.from_numpy(inputs[i:i + 1])) for i in range(len(inputs))]
    return [torch.cat([o[level] for o in outs]).numpy() for level in range(len(outs[0]))]


def run_maps(runner, inputs: np.ndarray) -> list[np.ndarray]:
    outs = [runner(inputs[i:i + 1]) for i in range(len(inputs))]
    outs = [o if isinstance(o, (list, tuple)) else [o] for o in outs]
    return [np.concatenate([np.asarray(o[level], dtype=np.float32) for o in outs]) for level in range(len(outs[0]))]


def compare_maps(got: list[np.ndarray], ref: list[np.ndarray], names: list[str]) -> list[dict]:
    """Per level: max |diff| relative to the level's largest reference magnitude, cosine and PSNR."""
    if len(got) != len(ref):
        raise ValueError(f"artifact returned {len(got)} maps, the reference {len(ref)}")
    rows = []
    for name, g, r in zip(names, got, ref):
        if g.shape != r.shape:
            raise ValueError(f"{name}: artifact shape {g.shape} differs from the reference {r.shape}")
        g64, r64 = g.astype(np.float64).reshape(len(g), -1), r.astype(np.float64).reshape(len(r), -1)
        diff, peak = g64 - r64, float(np.abs(r64).max())
        mse = float(np.mean(diff ** 2))
        cos = np.sum(g64 * r64, 1) / (np.linalg.norm(g64, axis=1) * np.linalg.norm(r64, axis=1) + 1e-30)
        noise = float(np.sum(diff ** 2))
        rows.append({"output": name, "shape": list(g.shape[1:]), "max_abs": float(np.abs(diff).max()),
                     "rel_max": float(np.abs(diff).max()) / peak if peak else float(np.abs(diff).max()),
                     "cosine": float(cos.min()),
                     "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse)),
                     "sqnr_db": float("inf") if noise == 0 else float(10 * np.log10(np.sum(r64 ** 2) / noise))})
    return rows


def gate(target: str, precision: str, rows: list[dict]) -> tuple[bool, str]:
    if precision == "int8":
        return (all(r["cosine"] >= INT8_COSINE for r in rows),
                f"every map: cosine with the fp32 reference >= {INT8_COSINE} on held-out real images")
    if precision == "fp32":
        limit = targets.get(target).fp32_gate
        return all(r["rel_max"] <= limit for r in rows), f"every map: max_abs <= {limit:g} x max|ref| of the map"
    return all(r["psnr_db"] >= FP16_PSNR_DB for r in rows), f"every map: PSNR >= {FP16_PSNR_DB:g} dB"


def classifier_parity(art, reference, req: ExportRequest, samples_dir: Path) -> dict:
    """A classifier that serves a range: logits against the any-size oracle at each of `parity_sizes`, gated like
    a fixed-size classifier (export.parity) at every size."""
    from . import parity as logits

    per_size, ok, rule = [], True, ""
    for hw in parity_sizes(req):
        inputs = parity_inputs(hw, req.parity_samples, samples_dir)
        with torch.no_grad():
            expected = reference(torch.from_numpy(inputs)).numpy()
        measured = logits.compare(logits.run_batched(art.runner, inputs), expected)
        status, rule = logits.gate(art.target, art.precision, measured)
        ok &= status == "pass"
        per_size.append({"size": list(hw), "status": status, **measured.as_dict()})
    worst = lambda key, pick: pick(s[key] for s in per_size)  # noqa: E731
    return {"reference_device": "cpu", "rel_max": worst("rel_max", max), "max_abs": worst("max_abs", max),
            "cosine": worst("cosine", min), "psnr_db": worst("psnr_db", min),
            "top1_agreement": worst("top1_agreement", min), "samples": req.parity_samples,
            "sizes_checked": len(per_size), "gate": rule + ", at every size", "status": "pass" if ok else "fail",
            "per_size": per_size}


def parity(art, reference, req: ExportRequest, samples_dir: Path, source=None) -> dict:
    """The artifact against the reference backbone at each of `parity_sizes`; worst level and size decide."""
    names, per_size, ok, rule = output_names(req), [], True, ""
    held = None
    if art.precision == "int8":  # judged on real images calibration did not see, like the classifier
        held = source.int8_data
    for hw in parity_sizes(req):
        inputs = (parity_inputs(hw, req.parity_samples, samples_dir) if held is None
                  else int8_images(held.parity[:INT8_IMAGES], hw).numpy())
        rows = compare_maps(run_maps(art.runner, inputs), reference_maps(reference, inputs), names)
        passed, rule = gate(art.target, art.precision, rows)
        ok &= passed
        per_size.append({"size": list(hw), "status": "pass" if passed else "fail", "outputs": rows})
    worst = lambda key, pick: pick(r[key] for s in per_size for r in s["outputs"])  # noqa: E731
    return {"reference_device": "cpu", "rel_max": worst("rel_max", max), "max_abs": worst("max_abs", max),
            "cosine": worst("cosine", min), "psnr_db": worst("psnr_db", min), "sqnr_db": worst("sqnr_db", min),
            "samples": len(inputs), **({"images": held.source} if held is not None else {}),
            "sizes_checked": len(per_size), "gate": rule, "status": "pass" if ok else "fail", "per_size": per_size}


def manifest_sections(req: ExportRequest) -> dict:
    """What an app or a detection head needs: outputs (name, stride, channels, shape) and the sizes accepted."""
    cfg = get_config(req.model).backbone()
    fixed = None if req.dynamic_size else tuple(req.img_hw)
    if req.dynamic_size:
        low, high = req.dynamic_size
        sizes = {"kind": "range", "min": low, "max": high, "multiple_of": 32, "non_square": True}
    elif req.sizes:
        from .multisize import method_name

        fixed = None
        sizes = {"kind": "list", "sizes": [list(hw) for hw in req.sizes],
                 "entry_points": [method_name(*hw) for hw in req.sizes],
                 "entry_point_kind": "ExecuTorch method / Core ML function (default: the first)"}
    else:
        sizes = {"kind": "fixed", "height": fixed[0], "width": fixed[1]}
    return {"task": "features", "outputs": output_specs(cfg, req.out_indices, fixed), "sizes": sizes,
            "strides": [STRIDES[i] for i in req.out_indices],
            "backbone": {"group_size": list(cfg.group_size), "interval": list(cfg.interval),
                         "norm_after_stage": False}}
