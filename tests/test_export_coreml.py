"""Core ML target: ML program, iOS 17, image input, labels in metadata, rank <= 4, no gathers.

Prediction needs the Core ML runtime (macOS); elsewhere parity runs the saved program through the MIL evaluator
(export/coreml_mil.py) and the manifest names it as the runtime. Structural checks run on the converted program.
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


# --- compressed weights (issue 30): coremltools.optimize on the ML program, decoded by the MIL evaluator ----------

# Each scheme's compressed-weight op, and the iOS it needs (export/coreml_compress.py).
COMPRESSED = {"palette4": ("constexpr_lut_to_dense", "iOS17"), "palette6": ("constexpr_lut_to_dense", "iOS17"),
              "w8": ("constexpr_affine_dequantize", "iOS17"), "w4": ("constexpr_blockwise_shift_scale", "iOS18")}


@pytest.mark.parametrize("precision", list(COMPRESSED))
def test_compressed_weights(precision, tmp_path, monkeypatch):
    """Each Core ML scheme on crossformer-fmnist: the saved program stores the weights in the scheme's op at its
    bits (fewer bytes than FP16, by about the bits), the MIL evaluator decodes them with its own decoder (counted)
    for parity on held-out Fashion-MNIST images, and the manifest records the scheme and the iOS it needs."""
    import export.coreml_mil_ops as ops
    from edge_crossformer.compression import WEIGHT_SCHEMES

    op_kind, ios = COMPRESSED[precision]
    decoded = []
    decoder = ops.NUMPY_OPS[op_kind]
    monkeypatch.setitem(ops.NUMPY_OPS, op_kind, lambda op, value_of: decoded.append(op.name) or decoder(op, value_of))
    out = tmp_path / precision
    assert run_cli("--target", "coreml", "--precision", precision, "--output", out) == 0
    (art,) = load_manifest(out)["artifacts"]
    scheme, c = WEIGHT_SCHEMES[precision], art["compression"]
    assert art["file"] == f"crossformer-fmnist_coreml_{precision}.mlpackage"
    assert c["scheme"] == precision and c["bits"] == scheme.bits and c["minimum_ios"] == ios
    assert art["info"]["minimum_deployment_target"].startswith(ios)
    spec = ct.utils.load_spec(str(out / art["file"]))
    assert spec.specificationVersion == (9 if ios == "iOS18" else 8)  # the program's own deployment target
    # Really compressed: every conv / linear weight in the scheme's op, most at the scheme's bits, and the file
    # smaller than the FP16 weights by nearly the bits (tables, scales and 8-bit kept layers cost the rest).
    assert c["weight_ops"] == {op_kind: c["layers_compressed"] + c["layers_kept_8bit"]} and c["float_weights"] == 0
    assert c["layers_compressed"] > c["layers_kept_8bit"]
    fp16_bytes = c["fp32_weight_bytes"] / 2
    assert c["bytes"] < fp16_bytes * (scheme.bits / 16 + 0.2), c
    # Decoded by the evaluator's own decoders, once per compressed weight (constexpr values are kept per program).
    assert len(set(decoded)) == c["layers_compressed"] + c["layers_kept_8bit"]
    p = art["parity"]
    assert p["status"] == "pass" and p["runtime"] == "MIL evaluator (numpy, fp16-emulated)", p
    # Judged on labelled held-out images by the scheme's gate (the status above: drop and agreement).
    assert "top1_drop_pp" in p and f"{scheme.max_drop_pp} pp" in p["gate"], p


@pytest.mark.heavy
def test_crossformer_t_palette4_is_a_sixth_of_fp32(checkpoints, tmp_path):
    """Issue 30's bar: CrossFormer-T 224 palettized to 4 bits is at most 1/6 of its FP32 weights' size, nearly every
    weight at 4 bits. Size only: with seeded random weights the parity gate (cosine of near-tied logits) says little
    about accuracy, which is measured on crossformer-fmnist (docs/compression.md)."""
    out = tmp_path / "t224"
    run_cli("--target", "coreml", "--checkpoint", checkpoints("crossformer-t", 1000), "--output", out,
            "--model", "crossformer-t", "--precision", "palette4")
    (art,) = load_manifest(out)["artifacts"]
    c = art["compression"]
    assert c["ratio_vs_fp32"] >= 6 and c["weights_by_bits"]["4"] > 10 * c["weights_by_bits"]["8"], c
    assert art["parity"]["runtime"] == "MIL evaluator (numpy, fp16-emulated)" or sys.platform == "darwin"
