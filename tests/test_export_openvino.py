"""OpenVINO target: IR xml + bin, FP16 compression for fp16, CPU parity with the f32 hint."""

import openvino as ov
import pytest

from conftest import load_manifest, run_cli
from edge_crossformer.targets import get as _target

GATE = _target("openvino").fp32_gate  # docs/parity.md


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_small_model(precision, checkpoints, tmp_path):
    out = tmp_path / precision
    assert run_cli("--target", "openvino", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--precision", precision, "--output", out) == 0
    (art,) = load_manifest(out)["artifacts"]
    assert art["file"] == f"crossformer-fmnist_openvino_{precision}.xml"
    assert (out / art["extra_files"][0]["file"]).exists()
    model = ov.Core().read_model(out / art["file"])
    weight_types = {op.get_output_element_type(0).get_type_name() for op in model.get_ordered_ops()
                    if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() >= 2}
    assert ("f16" in weight_types) == (precision == "fp16")
    p = art["parity"]
    assert p["status"] == "pass"
    if precision == "fp32":
        assert p["rel_max"] <= GATE and p["top1_agreement"] == 1.0
    else:
        assert p["psnr_db"] >= 60 and p["top1_agreement"] >= 0.99


def test_full_size_crossformer_t(checkpoints, tmp_path):
    out = tmp_path / "t224"
    assert run_cli("--target", "openvino", "--model", "crossformer-t", "--checkpoint",
                   checkpoints("crossformer-t", 1000), "--output", out) == 0
    p = load_manifest(out)["artifacts"][0]["parity"]
    assert p["rel_max"] <= GATE and p["top1_agreement"] == 1.0
