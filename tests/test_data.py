"""Real-world images load correctly; bad data sets give clear errors."""

import gzip
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from edge_crossformer.data import DataError, load_dataset, load_image, load_image_folder, read_idx

RESIZE = {"size": 32, "crop": 32, "interpolation": "bilinear"}


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_modes_convert_to_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    cases = {
        "gray.png": Image.fromarray(np.full((8, 8), 128, np.uint8), "L"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.zeros((8, 8), np.uint8)]), "RGBA"),
        "gray16.png": Image.fromarray(np.full((8, 8), 65535, np.uint16)),
    }
    out = {name: load_image(_save(img, tmp_path / name)) for name, img in cases.items()}
    for arr in out.values():
        assert arr.dtype == np.uint8 and arr.shape == (8, 8, 3)
    assert (out["gray.png"] == 128).all()
    assert abs(int(out["cmyk.jpg"][..., 0].mean()) - 200) < 8
    assert (out["palette.png"][..., 0] == 200).all()
    assert (out["rgba.png"] == 255).all(), "fully transparent pixels composite onto white"
    assert (out["gray16.png"] == 255).all(), "16-bit white stays white"


def test_imagefolder_with_a_corrupt_file(tmp_path):
    for cls, value in (("cat", 10), ("dog", 240)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _save(Image.fromarray(np.full((40, 50, 3), value, np.uint8)), tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_image_folder(tmp_path, RESIZE)
    assert any("skipped 1 unreadable" in str(w.message) for w in caught)
    assert data.classes == ["cat", "dog"] and data.skipped == 1
    assert data.images.shape == (6, 3, 32, 32)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(2):
        _save(Image.fromarray(np.full((20, 20), 99, np.uint8)), tmp_path / f"{i}.png")
    data = load_dataset(tmp_path, RESIZE)
    assert len(data) == 2 and not data.labelled


def test_empty_missing_and_unreadable_sets(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        load_image_folder(tmp_path, RESIZE)
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nope", RESIZE)
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be read"):
        load_image_folder(tmp_path, RESIZE)


def test_idx_reader(tmp_path):
    body = np.arange(2 * 3 * 4, dtype=np.uint8)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 3, 4) + body.tobytes())
    assert (read_idx(path) == body.reshape(2, 3, 4)).all()
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)


def test_fashion_mnist_from_debian_package():
    from edge_crossformer.data import find_fashion_mnist

    if find_fashion_mnist() is None:
        pytest.skip("Debian package dataset-fashion-mnist is not installed (.ci/run installs it)")
    data = load_dataset(None, RESIZE, split="test", limit=100)
    assert data.images.shape == (100, 3, 32, 32) and data.labelled and len(data.classes) == 10
