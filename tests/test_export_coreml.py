"""Core ML target: ML program, iOS 17, image input, labels in metadata, rank <= 4, no gathers.

Prediction needs the Core ML runtime (macOS); elsewhere the manifest records it as skipped with the reason and
the structural checks run on the converted program.
"""

import json
import sys

import coremltools as ct
import pytest

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
    if sys.platform == "darwin":
        assert art["parity"]["status"] == "pass"
    else:
        assert art["parity"]["status"] == "skipped" and "macOS" in art["parity"]["reason"]
        pytest.skip("Core ML prediction needs macOS: structural checks passed, prediction not run")


def test_fp32_compute(checkpoints, tmp_path):
    art = _export(checkpoints("crossformer-fmnist"), tmp_path / "fp32", "--model", "crossformer-fmnist",
                  "--precision", "fp32")
    assert art["precision"] == "fp32" and "fp16" not in art["info"]["value_dtypes"]


def test_full_size_crossformer_t(checkpoints, tmp_path):
    art = _export(checkpoints("crossformer-t", 1000), tmp_path / "t224", "--model", "crossformer-t")
    assert art["info"]["max_rank"] <= 4 and art["info"]["gather_ops"] == 0
