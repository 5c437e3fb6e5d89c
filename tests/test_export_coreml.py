"""Core ML target: ML program, iOS 17, image input, labels in metadata, rank <= 4, no gathers.

Prediction needs the Core ML runtime (macOS); elsewhere parity runs the saved program through the MIL evaluator
(export/coreml_mil.py) and the manifest names it as the runtime. Structural checks run on the converted program.
"""

import json
import sys

import coremltools as ct

from conftest import load_manifest, run_cli


def _export(checkpoint, out, *extra):
    assert run_cli("--target", "coreml", "--checkpoint", checkpoint, "--output", out, *extra) == 0
    (art,) = load_manifest(out)["artifacts"]
    return art


def test_small_model(checkpoints, tmp_path):
    out = tmp_path / "out"
    art = _export(checkpoints("crossformer-fmnist"), out, "--model", "crossformer-fmnist")
    assert art["file"] == "crossformer-fmnist_coreml_fp16.mlpackage"
    assert art["info"]["max_rank"] <= 4 and art["info"]["gather_ops"] == 0
    assert all(c["ok"] for c in art["checks"])
    spec = ct.utils.load_spec(str(out / art["file"]))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion >= 8  # iOS 17 / macOS 14
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    labels = json.loads(spec.description.metadata.userDefined["labels"])
    assert len(labels) == 10
    p = art["parity"]
    assert p["status"] == "pass" and p["psnr_db"] >= 60 and p["top1_agreement"] == 1.0, p
    if sys.platform == "darwin":  # Core ML judges; the MIL evaluator's parity is recorded beside it
        assert p["runtime"].startswith("Core ML") and p["cross_checks"]
    else:
        assert p["runtime"] == "MIL evaluator (numpy, fp16-emulated)"


def test_fp32_compute(checkpoints, tmp_path):
    art = _export(checkpoints("crossformer-fmnist"), tmp_path / "fp32", "--model", "crossformer-fmnist",
                  "--precision", "fp32")
    assert art["precision"] == "fp32" and "fp16" not in art["info"]["value_dtypes"]
    assert art["parity"]["status"] == "pass" and art["parity"]["rel_max"] <= 1e-3


def test_full_size_crossformer_t(checkpoints, tmp_path):
    art = _export(checkpoints("crossformer-t", 1000), tmp_path / "t224", "--model", "crossformer-t")
    assert art["info"]["max_rank"] <= 4 and art["info"]["gather_ops"] == 0
    # Issue #19: FP16 Core ML reaches the 60 dB bar by numbers, here too (the evaluator off macOS).
    assert art["parity"]["status"] == "pass" and art["parity"]["psnr_db"] >= 60, art["parity"]
