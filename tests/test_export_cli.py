"""python -m export: argument errors, atomic output, byte-identical re-export."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

import export.onnx_target
from export.request import ExportError

from conftest import ROOT, load_manifest, run_cli


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_unknown_target_and_model(capsys, tmp_path):
    assert run_cli("--target", "tflite", "--output", tmp_path / "o") == 2
    assert "unknown target 'tflite'" in _err(capsys)
    assert run_cli("--target", "onnx", "--model", "crossformer-z", "--output", tmp_path / "o") == 2
    err = _err(capsys)
    assert "unknown model 'crossformer-z'" in err and "crossformer-t" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_problems(capsys, tmp_path, checkpoints):
    assert run_cli("--target", "onnx", "--model", "crossformer-t", "--output", tmp_path / "o") == 2
    assert "has no bundled weights; pass --checkpoint" in _err(capsys)
    junk = tmp_path / "junk.pth"
    junk.write_text("nope")
    assert run_cli("--target", "onnx", "--model", "crossformer-t", "--checkpoint", junk,
                   "--output", tmp_path / "o") == 2
    assert "not a PyTorch checkpoint" in _err(capsys)
    # A CrossFormer++ checkpoint given to CrossFormer: the error names the right variant.
    assert run_cli("--target", "onnx", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-t"), "--output", tmp_path / "o") == 2
    assert "try --model crossformer-t" in _err(capsys)
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")], "no staging left behind"


def test_labels_with_wrong_line_count(capsys, tmp_path, checkpoints):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert run_cli("--target", "onnx", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--labels", labels, "--output", tmp_path / "o") == 2
    assert "has 3 lines but the model has 10 classes" in _err(capsys)


def test_output_is_a_file_or_under_a_file(capsys, tmp_path, checkpoints):
    afile = tmp_path / "taken"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        assert run_cli("--target", "onnx", "--model", "crossformer-fmnist", "--checkpoint",
                       checkpoints("crossformer-fmnist"), "--output", out) == 2
        assert "is a file" in _err(capsys)
    assert afile.read_text() == "x"


def test_unsupported_precision(capsys, tmp_path):
    assert run_cli("--target", "onnx", "--precision", "fp16", "--output", tmp_path / "o") == 2
    err = _err(capsys)
    assert "--precision fp16 is not supported for target onnx" in err and "openvino" in err


def test_missing_backend_is_named_with_install_hint(capsys, tmp_path, checkpoints, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert run_cli("--target", "openvino", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--output", tmp_path / "o") == 2
    assert "pip install 'edge-crossformer[openvino]'" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite_and_survives_a_failed_export(capsys, tmp_path, checkpoints, monkeypatch):
    out = tmp_path / "o"
    args = ("--target", "onnx", "--model", "crossformer-fmnist", "--checkpoint", checkpoints("crossformer-fmnist"),
            "--output", out)
    assert run_cli(*args) == 0
    before = (out / "manifest.json").read_bytes()
    assert run_cli(*args) == 2
    assert "--overwrite" in _err(capsys)

    def explode(ctx):
        (ctx.staging / "half-written.onnx").write_bytes(b"partial")
        raise ExportError("simulated crash in the middle of an export")

    monkeypatch.setattr(export.onnx_target, "export", explode)
    assert run_cli(*args, "--overwrite") == 2
    assert (out / "manifest.json").read_bytes() == before, "old output must stay intact"
    assert not (out / "half-written.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"], "no staging or trash directories left"


UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_reexport_is_byte_identical(tmp_path, checkpoints):
    shas = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run_cli("--target", "all", "--model", "crossformer-fmnist", "--checkpoint",
                       checkpoints("crossformer-fmnist"), "--output", out) == 0
        m = load_manifest(out)
        shas.append({a["file"]: (a["sha256"], [f["sha256"] for f in a.get("extra_files", [])])
                     for a in m["artifacts"] if a["target"] in ("onnx", "openvino") or a["delegate"] == "xnnpack"})
    assert len(shas[0]) == 3
    assert shas[0] == shas[1]
    # The Core ML delegate embeds random identifiers (uuid4 in executorch's coreml_preprocess and in the
    # .mlpackage manifest, whose entries are ordered by them; the device uses them as cache keys): not
    # byte-identical by construction, but the same program.
    coreml = "crossformer-fmnist_executorch-coreml_fp16.pte"
    a, b = ((tmp_path / d / coreml).read_bytes() for d in ("a", "b"))
    assert len(a) == len(b) and sorted(UUID.sub(b"-", a)) == sorted(UUID.sub(b"-", b))


def test_manifest_contract(tmp_path, checkpoints):
    out = tmp_path / "m"
    assert run_cli("--target", "onnx", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--output", out) == 0
    m = load_manifest(out)
    for key in ("model", "img_size", "num_classes", "input", "output", "labels", "artifacts", "tools"):
        assert key in m
    inp = m["input"]
    assert inp["shape"] == [1, 3, 32, 32] and inp["layout"] == "NCHW" and inp["range"] == [0.0, 1.0]
    assert inp["color"] == "RGB" and inp["normalization"]["applied"] == "in_model"
    assert set(inp["resize"]) == {"size", "crop", "interpolation"}
    assert m["output"] == {"name": "logits", "shape": [1, 10], "activation": "none (apply softmax)"}
    art = m["artifacts"][0]
    for key in ("target", "delegate", "precision", "file", "sha256", "bytes", "parity"):
        assert key in art
    for key in ("reference_device", "max_abs", "cosine", "psnr_db", "top1_agreement", "status"):
        assert key in art["parity"]
    assert (out / "labels.txt").read_text().splitlines() == m["labels"]


def test_module_entry_point_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "export", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "--target" in result.stdout
