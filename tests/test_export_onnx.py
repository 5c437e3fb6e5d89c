"""ONNX target: opset >= 17, onnx.checker, batch 1 (or dynamic), ONNX Runtime parity within 1e-4."""

from pathlib import Path

import onnx
import onnxruntime as ort
import numpy as np
import pytest

from conftest import load_manifest, run_cli
from edge_crossformer.targets import get as _target

GATE = _target("onnx").fp32_gate  # docs/parity.md


def test_small_model(checkpoints, tmp_path):
    out = tmp_path / "out"
    assert run_cli("--target", "onnx", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--output", out) == 0
    m = load_manifest(out)
    (art,) = m["artifacts"]
    assert art["file"] == "crossformer-fmnist_onnx_fp32.onnx"
    model = onnx.load(out / art["file"])
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert art["info"]["gather_ops"] == 0
    # No trace of the exporting checkout: the same export from another path or machine gives the same bytes.
    source_dir = str(Path(__file__).resolve().parents[1]).encode()
    assert source_dir not in (out / art["file"]).read_bytes()
    p = art["parity"]
    assert p["status"] == "pass" and p["rel_max"] <= GATE and p["top1_agreement"] == 1.0
    import torch

    assert p["reference_device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")


def test_dynamic_batch(checkpoints, tmp_path):
    out = tmp_path / "dyn"
    assert run_cli("--target", "onnx", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--output", out, "--dynamic-batch") == 0
    session = ort.InferenceSession(str(out / "crossformer-fmnist_onnx_fp32.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    batched = session.run(None, {"image": x})[0]
    single = np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_full_size_crossformer_t(checkpoints, tmp_path):
    out = tmp_path / "t224"
    assert run_cli("--target", "onnx", "--model", "crossformer-t", "--checkpoint",
                   checkpoints("crossformer-t", 1000), "--output", out) == 0
    p = load_manifest(out)["artifacts"][0]["parity"]
    assert p["rel_max"] <= GATE and p["top1_agreement"] == 1.0
