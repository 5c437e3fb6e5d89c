"""INT8 plumbing for the exporters: where calibration and parity images come from.

Calibration: `--calib-data` (ImageFolder tree, flat folder of images, or a folder of Fashion-MNIST IDX files); the
bundled `crossformer-fmnist` falls back to the Fashion-MNIST training split of Debian's `dataset-fashion-mnist`.
INT8 parity is gated on real images the calibration did not see: the Fashion-MNIST test split for the bundled model,
otherwise the images of the calibration folder beyond the calibration subset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edge_crossformer.config import CrossFormerConfig
from edge_crossformer.data import DataError, ImageSet, find_fashion_mnist, load_dataset

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
    # What the manifest's `int8_calibration` says of the data: images read, files skipped, how labels were matched.
    report: dict = field(default_factory=dict)
    # What --max-accuracy-drop measures the drop on (labels -1 where unlabelled: agreement with FP32 then).
    search: torch.Tensor | None = None
    search_labels: torch.Tensor | None = None
    search_source: str = ""


def load_int8_data(req: ExportRequest, resize: dict) -> Int8Data:
    try:
        if req.calib_data is None:
            calib = load_dataset(None, resize, split="train", limit=req.calib_size)
            held = load_dataset(None, resize, split="test", limit=PARITY_IMAGES)
            data = Int8Data(calib.images, held.images, held.labels, "fashion-mnist train (calibration), test (parity)",
                            {"source": "fashion-mnist", "images_read": len(calib) + len(held), "skipped_files": 0,
                             **check_classes(held, req)})
            if req.max_accuracy_drop is not None:
                # Training images the calibration did not take: the search never sees the images parity reports on.
                search = load_dataset(None, resize, split="train", limit=SEARCH_IMAGES, exclude=req.calib_size)
                data.search, data.search_labels = search.images, search.labels
                data.search_source = f"fashion-mnist train, {len(search)} images outside the calibration set"
            return data
        everything = load_dataset(req.calib_data, resize, split="train", limit=req.calib_size + PARITY_IMAGES)
    except DataError as e:
        raise ExportError(str(e)) from e
    report = check_readable(everything, req) | check_classes(everything, req)
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
                    f"{req.calib_data} ({len(calib_idx)} calibration, {len(parity_idx)} held-out parity images)",
                    report)
    if req.max_accuracy_drop is not None:
        # One folder: the search measures on the held-out parity images, the same ones parity reports on.
        data.search, data.search_labels = data.parity, data.parity_labels
        data.search_source = f"{req.calib_data}: the {len(parity_idx)} held-out parity images"
    return data


# More unreadable files than this share of a calibration folder: the folder is not what the user thinks it is.
MAX_UNREADABLE = 0.10


def check_readable(data: ImageSet, req: ExportRequest) -> dict:
    """Count the calibration files that could not be read (the manifest's `int8_calibration`); refuse beyond
    MAX_UNREADABLE of them."""
    tried = len(data) + data.skipped
    report = {"source": str(req.calib_data), "images_read": len(data), "skipped_files": data.skipped,
              "examples": data.skipped_examples}
    if data.skipped > MAX_UNREADABLE * tried:
        raise ExportError(f"{data.skipped} of {tried} image files in {req.calib_data} cannot be read (more than "
                          f"{MAX_UNREADABLE:.0%}; e.g. {data.skipped_examples[0]}); fix or remove them, or pass "
                          "another --calib-data")
    return report


def check_classes(data: ImageSet, req: ExportRequest) -> dict:
    """A labelled set is the INT8 gate's ground truth: its classes must be the model's (count, and names where the
    model has names), unless --labels-map-by-order says its classes map to the labels in order."""
    if not data.classes or req.task != "classify":
        return {"labels": "none (agreement with FP32)" if req.task == "classify" else "not used (backbone)"}
    source = data.source or str(req.calib_data)
    if len(data.classes) != len(req.labels):
        raise ExportError(f"the labelled calibration set {source} has {len(data.classes)} classes but the model has "
                          f"{len(req.labels)}; pass a set with the model's classes (or a flat folder of images: "
                          "agreement with FP32 is then judged)")
    named = req.labels != [f"class_{i}" for i in range(len(req.labels))]
    differ = [(c, l) for c, l in zip(data.classes, req.labels) if c.strip().casefold() != l.strip().casefold()]
    if req.labels_map_by_order:
        return {"labels": "the set's classes mapped to the model's labels in order (--labels-map-by-order)",
                "set_classes": list(data.classes)}
    if named and differ:
        raise ExportError(f"the labelled calibration set {source} has other class names than the model's labels "
                          f"(e.g. folder '{differ[0][0]}' where label '{differ[0][1]}' is expected); its labels would "
                          "score the INT8 gate against the wrong classes: rename the folders, or pass "
                          "--labels-map-by-order if its classes are the model's labels in order")
    return {"labels": "class names match the model's labels" if named else
            "class count matches (the model's labels have no names)"}
