"""INT8 plumbing for the exporters: where calibration and parity images come from.

Calibration: `--calib-data` (ImageFolder tree, flat folder of images, or a folder of Fashion-MNIST IDX files); the
bundled `crossformer-fmnist` falls back to the Fashion-MNIST training split of Debian's `dataset-fashion-mnist`.
INT8 parity is gated on real images the calibration did not see: the Fashion-MNIST test split for the bundled model,
otherwise the images of the calibration folder beyond the calibration subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edge_crossformer.config import CrossFormerConfig
from edge_crossformer.data import DataError, find_fashion_mnist, load_dataset

from .request import ExportError, ExportRequest

PARITY_IMAGES = 500


def _bundled_fallback(cfg: CrossFormerConfig) -> bool:
    return cfg.bundled_checkpoint is not None and cfg.labels_file is not None and find_fashion_mnist() is not None


def check_calibration_request(req: ExportRequest, cfg: CrossFormerConfig) -> None:
    if req.calib_data is None:
        # The bundled model's own data also calibrates its fine-tuned checkpoints (QAT), same classes.
        same_classes = req.num_classes in (None, cfg.default_num_classes)
        if (req.checkpoint is None or same_classes) and _bundled_fallback(cfg):
            return
        if (req.checkpoint is None or same_classes) and cfg.bundled_checkpoint and cfg.labels_file:
            raise ExportError(
                f"--precision int8 calibrates {req.model} on Fashion-MNIST, which is not installed: install Debian's "
                "package (sudo apt-get install dataset-fashion-mnist), or pass --calib-data PATH (a folder of "
                "images, an ImageFolder tree or Fashion-MNIST IDX files)")
        raise ExportError(
            f"--precision int8 needs calibration images: pass --calib-data PATH (a folder of images, an ImageFolder "
            f"tree or Fashion-MNIST IDX files); {req.model} has no bundled calibration set")
    path = Path(req.calib_data)
    if not path.exists():
        raise ExportError(f"calibration data not found: {path}")
    if not path.is_dir():
        raise ExportError(f"--calib-data must be a folder (of images, of class sub-folders, or of IDX files): {path}")


# 2000: one image is 0.05 pp, fine enough for drops of 0.1 pp; the per-layer ranking takes ~2 s per layer on it.
SEARCH_IMAGES = 2000


@dataclass
class Int8Data:
    calibration: torch.Tensor        # [N, 3, S, S] in [0, 1]
    parity: torch.Tensor             # real images not used for calibration
    parity_labels: torch.Tensor      # -1 where unlabelled
    source: str
    # What --max-accuracy-drop measures the drop on (labels -1 where unlabelled: agreement with FP32 then).
    search: torch.Tensor | None = None
    search_labels: torch.Tensor | None = None
    search_source: str = ""


def load_int8_data(req: ExportRequest, resize: dict) -> Int8Data:
    try:
        if req.calib_data is None:
            calib = load_dataset(None, resize, split="train", limit=req.calib_size)
            held = load_dataset(None, resize, split="test", limit=PARITY_IMAGES)
            data = Int8Data(calib.images, held.images, held.labels, "fashion-mnist train (calibration), test (parity)")
            if req.max_accuracy_drop is not None:
                # Training images the calibration did not take: the search never sees the images parity reports on.
                search = load_dataset(None, resize, split="train", limit=SEARCH_IMAGES, exclude=req.calib_size)
                data.search, data.search_labels = search.images, search.labels
                data.search_source = f"fashion-mnist train, {len(search)} images outside the calibration set"
            return data
        everything = load_dataset(req.calib_data, resize, split="train", limit=req.calib_size + PARITY_IMAGES)
    except DataError as e:
        raise ExportError(str(e)) from e
    n = len(everything)
    if n < 2:
        raise ExportError(f"calibration set {req.calib_data} has {n} readable image(s); give at least a few dozen")
    # Interleave so both halves cover every class of a sorted ImageFolder listing.
    calib_idx = [i for i in range(n) if i % 4 != 3][:req.calib_size]
    parity_idx = [i for i in range(n) if i not in set(calib_idx)]
    if not parity_idx:
        raise ExportError(f"calibration set {req.calib_data} has {n} readable images, all taken by calibration; INT8 "
                          "parity is judged on images calibration did not see: add images (a few dozen at least)")
    data = Int8Data(everything.images[calib_idx], everything.images[parity_idx], everything.labels[parity_idx],
                    f"{req.calib_data} ({len(calib_idx)} calibration, {len(parity_idx)} held-out parity images)")
    if req.max_accuracy_drop is not None:
        # One folder: the search measures on the held-out parity images, the same ones parity reports on.
        data.search, data.search_labels = data.parity, data.parity_labels
        data.search_source = f"{req.calib_data}: the {len(parity_idx)} held-out parity images"
    return data
