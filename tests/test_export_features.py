"""python -m export --task features: backbone artifacts for every target, one ONNX / OpenVINO artifact for a range of
sizes (checked at 10 sizes against the faithful backbone), the manifest's outputs, and bad requests."""

import onnx
import openvino as ov
import pytest

from conftest import load_manifest, run_cli
from edge_crossformer.targets import get as _target

FMNIST = ("--model", "crossformer-fmnist", "--task", "features")


def _check_maps(art: dict, sizes: int) -> None:
    p = art["parity"]
    assert p["status"] == "pass", p
    assert p["sizes_checked"] == sizes and len(p["per_size"]) == sizes
    for size in p["per_size"]:
        assert [row["output"] for row in size["outputs"]] == ["stage1", "stage2", "stage3", "stage4"]
        assert size["status"] == "pass"
    if art["precision"] == "fp32":
        assert p["rel_max"] <= _target(art["target"]).fp32_gate
    else:
        assert p["psnr_db"] >= 60
    assert all(check["ok"] for check in art["checks"]), art["checks"]


def test_one_artifact_serves_a_range(tmp_path):
    out = tmp_path / "range"
    assert run_cli("--target", "onnx,openvino", *FMNIST, "--dynamic-size", "64", "256", "--parity-samples", "2",
                   "--output", out) == 0
    manifest = load_manifest(out)
    assert manifest["task"] == "features" and manifest["status"] == "pass"
    assert manifest["sizes"] == {"kind": "range", "min": 64, "max": 256, "multiple_of": 32, "non_square": True}
    assert [(o["name"], o["stride"], o["channels"]) for o in manifest["outputs"]] == [
        ("stage1", 4, 32), ("stage2", 8, 64), ("stage3", 16, 128), ("stage4", 32, 256)]
    assert manifest["input"]["shape"] == [1, 3, "H", "W"]
    assert not (out / "labels.txt").exists()
    onnx_art, ov_art = manifest["artifacts"]
    for art in (onnx_art, ov_art):
        _check_maps(art, 10)
        assert art["info"]["max_rank"] <= 4 and art["info"]["gather_ops"] == 0
        sizes = {tuple(s["size"]) for s in art["parity"]["per_size"]}
        assert {(64, 64), (256, 256), (64, 256), (256, 64)} <= sizes  # both ends, both non-square extremes
    graph = onnx.load(out / onnx_art["file"]).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == [1, 3] and all(isinstance(d, str) for d in dims[2:]), dims
    assert [o.name for o in graph.output] == ["stage1", "stage2", "stage3", "stage4"]
    assert not [n for n in graph.node if n.op_type.startswith("Gather")]
    model = ov.Core().read_model(out / ov_art["file"])
    assert model.inputs[0].get_partial_shape().is_dynamic
    assert not [op for op in model.get_ordered_ops() if op.get_type_name().startswith("Gather")]


def test_apple_and_executorch_serve_a_list_of_sizes(tmp_path):
    """One Core ML multifunction package and one .pte with a method per size (export/coreml_target.py, export/executorch_target.py)."""
    out = tmp_path / "sizes"
    sizes = [(64, 64), (64, 96), (128, 96)]
    assert run_cli("--target", "coreml,executorch", *FMNIST, "--sizes", *(f"{h}x{w}" for h, w in sizes),
                   "--out-indices", "1", "2", "3", "--parity-samples", "2", "--output", out) == 0
    manifest = load_manifest(out)
    names = [f"forward_{h}x{w}" for h, w in sizes]
    assert manifest["sizes"]["kind"] == "list" and manifest["sizes"]["entry_points"] == names
    assert [o["name"] for o in manifest["outputs"]] == ["stage2", "stage3", "stage4"]
    arts = {a["target"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"coreml", "executorch"}
    assert arts["executorch"]["info"]["methods"] == names
    assert arts["executorch"]["info"]["ops_outside_delegate"] == 0
    assert all(m["delegates"] == 1 for m in arts["executorch"]["info"]["delegation_by_method"].values())
    assert arts["coreml"]["info"]["functions"] == names
    assert arts["coreml"]["info"]["max_rank"] <= 4 and arts["coreml"]["info"]["gather_ops"] == 0
    for art in arts.values():
        assert art["file"].startswith("crossformer-fmnist-features_")
        p = art["parity"]
        assert p["status"] == "pass" and [tuple(s["size"]) for s in p["per_size"]] == sizes, p
        assert [row["output"] for row in p["per_size"][0]["outputs"]] == ["stage2", "stage3", "stage4"]


def test_int8_backbones_both_schemes(tmp_path):
    """XNNPACK's scheme (ExecuTorch) and NNCF's (ONNX), calibrated on Fashion-MNIST resized to 64 x 96, judged per
    map against the FP32 reference on held-out real images."""
    out = tmp_path / "int8"
    assert run_cli("--target", "executorch,onnx", *FMNIST, "--img-size", "64", "96", "--precision", "int8",
                   "--calib-size", "64", "--output", out) == 0
    manifest = load_manifest(out)
    for art in manifest["artifacts"]:
        p = art["parity"]
        assert art["precision"] == "int8" and p["status"] == "pass", p
        assert "fashion-mnist" in p["images"] and p["samples"] == 32
        rows = p["per_size"][0]["outputs"]
        assert all(row["cosine"] >= 0.97 and row["sqnr_db"] > 10 for row in rows), rows
        assert all(check["ok"] for check in art["checks"]), art["checks"]
    assert manifest["artifacts"][0]["info"]["ops_outside_delegate"] == 0


def test_one_classifier_serves_a_range(tmp_path):
    out = tmp_path / "cls"
    assert run_cli("--target", "onnx", "--dynamic-size", "64", "256", "--parity-samples", "4", "--output", out) == 0
    manifest = load_manifest(out)
    assert manifest["sizes"]["kind"] == "range" and manifest["input"]["shape"] == [1, 3, "H", "W"]
    (art,) = manifest["artifacts"]
    p = art["parity"]
    assert p["status"] == "pass" and p["sizes_checked"] == 10 and p["top1_agreement"] == 1.0
    assert p["rel_max"] <= _target("onnx").fp32_gate and all(s["status"] == "pass" for s in p["per_size"])
    assert art["info"]["gather_ops"] == 0 and art["info"]["max_rank"] <= 4
    assert (out / "labels.txt").exists()


def test_one_size_artifact_refuses_other_sizes():
    import numpy as np

    from export.sizes import size_dispatch

    run = size_dispatch({(64, 64): lambda x: "a", (64, 96): lambda x: "b"})
    assert run(np.zeros((1, 3, 64, 96), np.float32)) == "b"
    with pytest.raises(ValueError, match="96x64 is not one of the artifact's sizes \\(64x64, 64x96\\)"):
        run(np.zeros((1, 3, 96, 64), np.float32))


@pytest.mark.parametrize("args, message", [
    (("--target", "coreml", "--dynamic-size", "64", "256"), "made for onnx, openvino"),
    (("--target", "coreml", "--task", "classify", "--dynamic-size", "64", "256"), "one classifier for a range"),
    (("--target", "onnx", "--sizes", "64x64", "96x96"), "export them with --dynamic-size MIN MAX"),
    (("--target", "coreml", "--sizes", "64x64"), "--sizes takes 2 to 8 sizes"),
    (("--target", "coreml", "--sizes", "64x64", "64"), "--sizes repeats a size"),
    (("--target", "onnx", "--dynamic-size", "32", "256"), "only for sides >= 64"),
    (("--target", "onnx", "--dynamic-size", "128", "128"), "is one size: use --img-size 128 128"),
    (("--target", "onnx", "--img-size", "64", "96", "--dynamic-size", "64", "256"), "--img-size and --dynamic-size both"),
    (("--target", "onnx", "--task", "classify", "--img-size", "64", "--dynamic-size", "64", "256"),
     "--img-size and --dynamic-size both"),
    (("--target", "coreml", "--img-size", "64", "--sizes", "64x64", "64x96"), "--img-size and --sizes both"),
    (("--target", "onnx", "--out-indices", "0", "4"), "out_indices must be distinct stage indices in 0..3"),
    (("--target", "onnx", "--num-classes", "5"), "--num-classes applies to the classifier"),
    (("--target", "coreml", "--precision", "int8", "--sizes", "64x64", "64x96"), "INT8 with --sizes is not supported yet"),
])
def test_bad_feature_requests(args, message, tmp_path, capsys):
    out = tmp_path / "o"
    assert run_cli(*FMNIST, *args, "--output", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_sizes_that_are_not_multiples_of_32(tmp_path, capsys):
    assert run_cli("--target", "onnx", *FMNIST, "--img-size", "64", "100", "--output", tmp_path / "o") == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert run_cli("--target", "onnx", *FMNIST, "--dynamic-size", "64", "250", "--output", tmp_path / "o") == 2
    assert "multiple of 32" in capsys.readouterr().err
    # The classifier is square.
    assert run_cli("--target", "onnx", "--img-size", "64", "96", "--output", tmp_path / "o") == 2
    assert "the classifier takes a square input" in capsys.readouterr().err
    assert run_cli("--target", "onnx", "--out-indices", "1", "--output", tmp_path / "o") == 2
    assert "add --task features" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_detection_checkpoint_to_classifier_export(tmp_path, capsys):
    import torch

    from edge_crossformer import create_model

    state = create_model("crossformer-fmnist", features_only=True).state_dict()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "det.pth")
    assert run_cli("--target", "onnx", "--checkpoint", tmp_path / "det.pth", "--output", tmp_path / "o") == 2
    assert "export its backbone with --task features" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
