"""Nothing the user gave is dropped without a word: unreadable calibration files are counted (and refused past a
bound), a labelled set with other classes than the model's is refused unless the user maps them by order, labels
are split on newlines only and given once; a failed gate names its check on the console. No export runs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from conftest import run_cli
from export.int8 import load_int8_data
from export.pipeline import _summary
from export.request import ExportError, ExportRequest
from export.sizes import resize_spec
from export.validate import validate


def _images(folder, count: int, corrupt: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i:03d}.png"
        if i < corrupt:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(path)


def _int8_data(tmp_path, calib, **fields):
    req = validate(ExportRequest(targets=("onnx",), precision="int8", calib_data=calib, output=tmp_path / "out",
                                 calib_size=8, **fields))
    return load_int8_data(req, resize_spec(req))


def test_unreadable_calibration_files_are_counted(tmp_path):
    _images(tmp_path / "calib", 20, corrupt=1)
    data = _int8_data(tmp_path, tmp_path / "calib")
    assert data.report["skipped_files"] == 1 and data.report["images_read"] == 19
    assert "000.png" in data.report["examples"][0]


def test_too_many_unreadable_calibration_files_are_refused(tmp_path):
    _images(tmp_path / "calib", 20, corrupt=3)
    with pytest.raises(ExportError, match=r"3 of 20 image files .* cannot be read \(more than 10%"):
        _int8_data(tmp_path, tmp_path / "calib")


def test_labelled_set_with_other_classes_is_refused_unless_mapped(tmp_path):
    calib = tmp_path / "calib"
    for name in ("tops", "trousers", "pullovers", "dresses", "coats", "sandals", "shirts", "sneakers", "bags",
                 "boots"):
        _images(calib / name, 2)
    with pytest.raises(ExportError, match="other class names than the model's labels.*--labels-map-by-order"):
        _int8_data(tmp_path, calib)
    data = _int8_data(tmp_path, calib, labels_map_by_order=True)
    assert "--labels-map-by-order" in data.report["labels"] and data.report["set_classes"][0] == "bags"
    (calib / "extra").mkdir()
    _images(calib / "extra", 2)
    with pytest.raises(ExportError, match="has 11 classes but the model has 10"):
        _int8_data(tmp_path, calib, labels_map_by_order=True)


def test_labelled_set_with_the_model_classes_is_ground_truth(tmp_path, checkpoints):
    labels = tmp_path / "labels.txt"
    names = [f"kind{i}" for i in range(10)]
    labels.write_text("\n".join(names) + "\n")
    for name in names:
        _images(tmp_path / "calib" / name, 2)
    data = _int8_data(tmp_path, tmp_path / "calib", checkpoint=checkpoints("crossformer-fmnist"),
                      labels_source=str(labels))
    assert data.report["labels"] == "class names match the model's labels"
    assert (data.parity_labels >= 0).all()


@pytest.mark.parametrize("text, refusal", [
    ("".join(f"c{i}\n" for i in range(9)) + "c3\n", "names 'c3' twice (lines 4 and 10)"),
    # U+2028 and U+0085 inside a label: one line each, as every editor shows them.
    ("c0\u2028still c0\n" + "".join(f"c{i}\n" for i in range(1, 9)) + "c9\x85x\n", None),
    ("".join(f"c{i}\r\n" for i in range(10)), None),
])
def test_labels_file_lines(text, refusal, tmp_path, checkpoints, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(text.encode())
    req = ExportRequest(targets=("onnx",), checkpoint=checkpoints("crossformer-fmnist"), labels_source=str(labels),
                        output=tmp_path / "out")
    if refusal is None:
        assert len(validate(req).labels) == 10
        return
    assert run_cli("--target", "onnx", "--checkpoint", checkpoints("crossformer-fmnist"), "--labels", labels,
                   "--output", tmp_path / "out") == 2
    assert refusal in capsys.readouterr().err


def _manifest(artifact: dict) -> dict:
    return {"img_size": 32, "model": "crossformer-fmnist", "artifacts": [artifact], "failures": [], "status": "fail"}


def _console_of(manifest: dict, tmp_path) -> str:
    buffer = io.StringIO()
    _summary(Console(file=buffer, width=250), manifest, tmp_path, 1.0)
    return buffer.getvalue()


def test_a_failed_parity_gate_is_named_with_its_measured_values(tmp_path):
    art = {"file": "m_onnx_fp32.onnx", "bytes": 1, "precision": "fp32", "info": {}, "checks": [],
           "parity": {"status": "fail", "gate_status": "fail", "rel_max": 3e-3, "top1_agreement": 1.0,
                      "gate": "max_abs <= 0.0001 x max|ref| and same top-1"}}
    text = _console_of(_manifest(art), tmp_path)
    assert "m_onnx_fp32.onnx failed: parity: max_abs <= 0.0001 x max|ref| and same top-1" in text
    assert "rel_max 0.003" in text


def test_a_failed_structural_check_is_named(tmp_path):
    art = {"file": "m_executorch-xnnpack_fp32.pte", "bytes": 1, "precision": "fp32", "info": {},
           "checks": [{"check": "no compute op outside the xnnpack delegate", "value": 3, "ok": False},
                      {"check": "tensor rank <= 4", "value": 4, "ok": True}],
           "parity": {"status": "fail", "gate_status": "pass", "rel_max": 1e-6, "top1_agreement": 1.0,
                      "gate": "max_abs <= 0.001 x max|ref| and same top-1"}}
    text = _console_of(_manifest(art), tmp_path)
    assert "failed: no compute op outside the xnnpack delegate (found: 3)" in text
    assert "tensor rank" not in text and "failed: parity" not in text
