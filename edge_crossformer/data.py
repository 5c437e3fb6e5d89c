"""Images in, model-ready tensors out: Fashion-MNIST IDX files, ImageFolder trees and flat folders of images.

One preprocessing path for everything (`preprocess`): resize the shorter side to `resize.size`, center-crop
`resize.crop`, RGB float in [0, 1]. It follows the manifest's `input.resize`, so evaluation here and the apps agree.
Normalization is not done here: every artifact normalizes inside its graph.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                        "Ankle boot"]
# Unreadable files a report names (the count covers them all).
SKIPPED_EXAMPLES = 5
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataError(ValueError):
    """Unusable data (missing, empty, unreadable, wrong classes); the message says how to fix it."""


# ---------------------------------------------------------------------------------------------- preprocessing
def resize_and_crop(x: Tensor, size: int, crop: int, interpolation: str = "bilinear") -> Tensor:
    """[N, C, H, W] float -> [N, C, crop, crop]: shorter side to `size`, then a center crop."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
    if (nh, nw) != (h, w):
        mode = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}[interpolation]
        kw = {} if mode == "nearest" else {"align_corners": False, "antialias": nh < h or nw < w}
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return x[..., top:top + crop, left:left + crop].clamp(0.0, 1.0)


def preprocess(images: Tensor | np.ndarray, resize: dict) -> Tensor:
    """uint8 or float images ([N, H, W], [N, 1|3, H, W] or [N, H, W, 3]) -> RGB float [N, 3, crop, crop] in [0, 1]."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.dtype == torch.uint16 or x.dtype == torch.int32:
        x = x.float() / 65535.0
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return resize_and_crop(x.float(), resize["size"], resize["crop"], resize.get("interpolation", "bilinear"))


# ---------------------------------------------------------------------------------------------- image files
def load_image(path: str | Path) -> np.ndarray:
    """Any common image file -> uint8 RGB [H, W, 3]. Gray, CMYK, palette and 16-bit convert; alpha composites on
    white (what a viewer shows). Raises DataError for unreadable files."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA"):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy
    # DecompressionBombError: a "picture" whose pixels would not fit in memory (not an OSError).
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class ImageSet:
    """Preprocessed images [N, 3, S, S] in [0, 1], labels [N] (-1 when unlabelled), class names."""
    images: Tensor
    labels: Tensor
    classes: list[str]
    skipped: int = 0
    source: str = ""
    # Up to SKIPPED_EXAMPLES of the unreadable files, as "path: why" (what a report names).
    skipped_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).all())


def load_image_folder(path: str | Path, resize: dict, limit: int | None = None, labelled: bool | None = None,
                      progress=None) -> ImageSet:
    """An ImageFolder tree (one sub-folder per class, sorted names = class indices) or a flat folder of images.

    Corrupt files are skipped, counted (`skipped`, `skipped_examples`: callers report them) and named in one warning;
    an empty or unreadable set is a DataError.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}; pass a folder of images or of class sub-folders")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _image_files(p))
    if subdirs and labelled is not False:
        classes = [p.name for p in subdirs]
        files = [(f, i) for i, d in enumerate(subdirs) for f in _image_files(d)]
    else:
        if labelled:
            raise DataError(f"{root} has no class sub-folders; a labelled set needs one sub-folder per class")
        classes = []
        files = [(f, -1) for f in _image_files(root)]
    if not files:
        raise DataError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if limit is not None:
        # Spread a subset over classes: every k-th file of the sorted list.
        step = max(1, len(files) // limit)
        files = files[::step][:limit]
    images, labels, skipped, examples = [], [], 0, []
    for f, label in files:
        try:
            arr = load_image(f)
        except DataError as e:
            skipped += 1
            if len(examples) < SKIPPED_EXAMPLES:
                examples.append(str(e).removeprefix("cannot read image "))
            continue
        images.append(preprocess(torch.from_numpy(arr)[None], resize)[0])
        labels.append(label)
        if progress is not None:
            progress()
    if skipped:
        warnings.warn(f"skipped {skipped} unreadable image file(s) in {root}", stacklevel=2)
    if not images:
        raise DataError(f"none of the {len(files)} image files in {root} could be read")
    return ImageSet(torch.stack(images), torch.tensor(labels), classes, skipped, str(root), examples)


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def find_fashion_mnist(root: str | Path | None = None, split: str = "test") -> tuple[Path, Path] | None:
    root = Path(root) if root else FASHION_MNIST_DIR
    prefix = "t10k" if split == "test" else "train"
    for suffix in (".gz", ""):
        images = root / f"{prefix}-images-idx3-ubyte{suffix}"
        labels = root / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.exists() and labels.exists():
            return images, labels
    return None


def load_fashion_mnist(root: str | Path | None = None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and labels [N] of one split ('train': 60k, 'test': 10k)."""
    found = find_fashion_mnist(root, split)
    if found is None:
        where = root or FASHION_MNIST_DIR
        raise DataError(
            f"Fashion-MNIST {split} files not found in {where}; install them with "
            "`sudo apt-get install dataset-fashion-mnist` or pass the folder holding the *-idx?-ubyte(.gz) files"
        )
    images, labels = read_idx(found[0]), read_idx(found[1])
    if len(images) != len(labels):
        raise DataError(f"{found[0]} has {len(images)} images but {found[1]} has {len(labels)} labels")
    return images, labels


def is_fashion_mnist_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (find_fashion_mnist(p, "test") is not None or find_fashion_mnist(p, "train") is not None)


def strided_indices(n: int, limit: int | None, exclude: int | None = None) -> np.ndarray:
    """Which of n Fashion-MNIST images a `limit` takes: evenly strided, so every class is covered. `exclude`:
    leave out the images a load with limit=`exclude` takes (a held-out set disjoint from the calibration set)."""
    taken = np.arange(n)
    if exclude is not None and 0 < exclude < n:
        taken = np.setdiff1d(taken, strided_indices(n, exclude))
    if limit is not None and limit < len(taken):
        taken = taken[::len(taken) // limit][:limit]
    return taken


def load_dataset(path: str | Path | None, resize: dict, *, split: str = "test", limit: int | None = None,
                 labelled: bool | None = None, progress=None, exclude: int | None = None) -> ImageSet:
    """Fashion-MNIST (IDX files), an ImageFolder tree or a flat folder, whichever `path` holds. `exclude`
    (Fashion-MNIST only): leave out the images a load with limit=`exclude` takes (see strided_indices)."""
    if path is None or is_fashion_mnist_dir(path):
        if path is None and find_fashion_mnist(None, split) is None:
            raise DataError("no data given and Fashion-MNIST is not installed; pass a folder of images")
        available = split if find_fashion_mnist(path, split) else ("train" if split == "test" else "test")
        images, labels = load_fashion_mnist(path, available)
        keep = strided_indices(len(images), limit, exclude=exclude)
        images, labels = images[keep], labels[keep]
        x = torch.cat([preprocess(torch.from_numpy(images[i:i + 2048]), resize) for i in range(0, len(images), 2048)])
        # A folder with one split serves as both; the source (which manifests and reports record) says so.
        note = "" if available == split else f" (the folder has no {split} split)"
        return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_LABELS),
                        source=f"fashion-mnist:{available}{note}")
    return load_image_folder(path, resize, limit=limit, labelled=labelled, progress=progress)
