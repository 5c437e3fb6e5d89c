"""LiteRT target: a .tflite from litert-torch, run on the ai-edge-litert interpreter (XNNPACK CPU): FP32 within 1e-4,
FP16 weights, INT8 on real Fashion-MNIST images, a backbone at one size, the static GPU-delegate check, and bad
requests (no extra installed, size modes LiteRT does not serve)."""

import importlib.util

import numpy as np
import pytest
import torch

from edge_crossformer import build_model
from edge_crossformer.data import find_fashion_mnist

from conftest import load_manifest, run_cli
from edge_crossformer.targets import get as _target

pytest.importorskip("litert_torch", reason="LiteRT's extra is not installed: pip install 'edge-crossformer[litert]'")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from export import litert_target  # noqa: E402

GATE = _target("litert").fp32_gate  # docs/parity.md
FMNIST = ("--target", "litert", "--model", "crossformer-fmnist")
needs_fmnist = pytest.mark.skipif(find_fashion_mnist() is None,
                                  reason="Debian package dataset-fashion-mnist is not installed (.ci/run installs it)")


def _only(out) -> dict:
    (art,) = load_manifest(out)["artifacts"]
    return art


def _gpu_checked(art: dict) -> None:
    info = art["info"]
    assert info["gpu_delegate_unsupported_ops"] == [] and info["gpu_delegate_all_ops"], info
    assert info["max_tensor_rank"] <= 4 and "GATHER" not in info["op_histogram"]


def test_small_model(checkpoints, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*FMNIST, "--checkpoint", checkpoints("crossformer-fmnist"), "--output", out) == 0
    art = _only(out)
    assert art["file"] == "crossformer-fmnist_litert_fp32.tflite" and art["delegate"] is None
    p = art["parity"]
    assert p["status"] == "pass" and p["rel_max"] <= GATE and p["top1_agreement"] == 1.0, p
    _gpu_checked(art)
    assert art["info"]["op_histogram"]["FULLY_CONNECTED"] >= 20 and "QUANTIZE" not in art["info"]["op_histogram"]
    # The file runs on the interpreter as an app would load it, and matches the faithful model on a fresh input.
    state = torch.load(checkpoints("crossformer-fmnist"), weights_only=True)["model"]
    reference = build_model("crossformer-fmnist")
    reference.load_state_dict(state)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    interpreter = Interpreter(model_path=str(out / art["file"]))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.eval()((x - mean) / std).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() <= GATE


def test_fp16_weights(tmp_path):
    out = tmp_path / "fp16"
    assert run_cli(*FMNIST, "--precision", "fp16", "--output", out) == 0
    art = _only(out)
    p = art["parity"]
    assert art["file"].endswith("_litert_fp16.tflite") and p["status"] == "pass", p
    assert p["psnr_db"] >= 60 and p["top1_agreement"] >= 0.99
    _gpu_checked(art)
    assert art["info"]["op_histogram"]["DEQUANTIZE"] > 0  # the FP16 weights, widened where they are read
    fp32 = tmp_path / "fp32"
    assert run_cli(*FMNIST, "--output", fp32) == 0
    assert art["bytes"] < 0.6 * _only(fp32)["bytes"]


@needs_fmnist
def test_int8_on_real_images(tmp_path):
    out = tmp_path / "int8"
    assert run_cli(*FMNIST, "--precision", "int8", "--calib-size", "128", "--output", out) == 0
    art = _only(out)
    p = art["parity"]
    assert art["file"].endswith("_litert_int8.tflite") and p["status"] == "pass", p
    assert p["images"].startswith("fashion-mnist")
    assert p["top1_agreement"] >= 0.98 and p["top1_drop_pp"] <= 0.5, p
    info = art["info"]
    # Every linear and conv runs an INT8 kernel (not float with dequantized weights), but the head: it computes the
    # logits in float, so that the file returns logits, not int8 codes (docs/litert.md).
    assert info["int8_ops"]["FULLY_CONNECTED"] == info["op_histogram"]["FULLY_CONNECTED"] - 1, info
    logits = litert_target.load_runner(out / art["file"])(np.zeros((1, 3, 32, 32), np.float32))
    assert logits.dtype == np.float32 and logits.shape == (1, 10)
    assert info["int8_ops"]["CONV_2D"] == info["op_histogram"]["CONV_2D"], info
    assert info["quantize_ops"] > 0 and info["int8_ranges"] == "calibrated"
    _gpu_checked(art)


def test_backbone_at_one_size(tmp_path):
    out = tmp_path / "features"
    assert run_cli(*FMNIST, "--task", "features", "--img-size", "64", "96", "--parity-samples", "2",
                   "--output", out) == 0
    manifest = load_manifest(out)
    art = manifest["artifacts"][0]
    p = art["parity"]
    assert art["file"] == "crossformer-fmnist-features_litert_fp32.tflite" and p["status"] == "pass", p
    assert [row["output"] for row in p["per_size"][0]["outputs"]] == ["stage1", "stage2", "stage3", "stage4"]
    assert p["rel_max"] <= GATE
    shapes = [list(m.shape) for m in litert_target.load_runner(out / art["file"])(np.zeros((1, 3, 64, 96),
                                                                                          np.float32))]
    assert shapes == [[1, 32, 16, 24], [1, 64, 8, 12], [1, 128, 4, 6], [1, 256, 2, 3]]
    _gpu_checked(art)


def test_gpu_delegate_check_names_what_it_lacks():
    from collections import Counter

    ok = litert_target.gpu_delegate_info(Counter({"FULLY_CONNECTED": 3, "SOFTMAX": 1}), 4)
    assert ok["gpu_delegate_all_ops"] and ok["gpu_delegate_unsupported_ops"] == []
    bad = litert_target.gpu_delegate_info(Counter({"GATHER_ND": 1, "ADD": 2, "CUSTOM:Foo": 1}), 5)
    assert bad["gpu_delegate_unsupported_ops"] == ["CUSTOM:Foo", "GATHER_ND"]
    assert not bad["gpu_delegate_max_rank_ok"] and not bad["gpu_delegate_all_ops"]


def test_full_size_crossformer_t(checkpoints, tmp_path):
    out = tmp_path / "t224"
    assert run_cli("--target", "litert", "--model", "crossformer-t", "--checkpoint",
                   checkpoints("crossformer-t", 1000), "--output", out) == 0
    art = _only(out)
    p = art["parity"]
    assert p["rel_max"] <= GATE and p["top1_agreement"] == 1.0, p
    _gpu_checked(art)


# --- bad requests: one message, exit 2, nothing written -------------------------------------------------------

def test_without_its_extra(capsys, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "litert_torch" else real(name, *a))
    out = tmp_path / "o"
    assert run_cli(*FMNIST, "--output", out) == 2
    assert "pip install 'edge-crossformer[litert]'" in capsys.readouterr().err
    assert not out.exists()


ONE_SIZE = "export litert one size at a time (--img-size H W)"


@pytest.mark.parametrize("args, message", [
    (("--dynamic-size", "64", "256"), "export litert at one size"),
    (("--task", "features", "--dynamic-size", "64", "256"), ONE_SIZE),
    (("--task", "features", "--sizes", "64x64", "96x96"), ONE_SIZE),
    (("--dynamic-batch",), "--dynamic-batch applies to ONNX only"),
    (("--int8-activations", "dynamic", "--precision", "int8"), "--int8-activations dynamic is supported by"),
])
def test_what_litert_does_not_offer(args, message, capsys, tmp_path):
    out = tmp_path / "o"
    assert run_cli(*FMNIST, *args, "--output", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
