"""ExecuTorch w8 / w4 (export/executorch_weights.py): torchao's INT8 dynamic activations with 8-bit per-channel /
4-bit grouped weights, the whole graph in one XNNPACK delegate, run on executorch.runtime and gated on held-out
Fashion-MNIST images; XNNPACK's own graph in the `.pte` says what the linears' weights really are."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from executorch.runtime import Runtime

from conftest import load_manifest, run_cli
from edge_crossformer import create_model, deployable, targets
from edge_crossformer.compression import WEIGHT_SCHEMES
from edge_crossformer.data import load_dataset
from export.executorch_weights import linear_paths, xnnpack_gemms
from export.parity import eight_bit

SPELLING = targets.get("executorch").spelling


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The bundled model exported at w8 and at w4: {precision: (manifest entry, .pte path)}."""
    made = {}
    for precision in ("w8", "w4"):
        out = tmp_path_factory.mktemp(precision)
        assert run_cli("--target", "executorch", "--model", "crossformer-fmnist", "--precision", precision,
                       "--output", out) == 0
        manifest = load_manifest(out)
        assert manifest["status"] == "pass"
        (entry,) = manifest["artifacts"]  # no Core ML delegate .pte: compressed weights on iOS are Core ML's
        made[precision] = entry, out / entry["file"]
    return made


def _linears() -> list[str]:
    return linear_paths(deployable(create_model("crossformer-fmnist", spelling=SPELLING)))


@pytest.mark.parametrize("precision", ["w8", "w4"])
def test_one_delegate_gated_and_recorded(exported, precision):
    entry, path = exported[precision]
    assert entry["delegate"] == "xnnpack" and entry["precision"] == precision
    assert entry["file"] == f"crossformer-fmnist_executorch-xnnpack_{precision}.pte"
    # Nothing may stay outside XNNPACK: not the dynamic quantize of a linear's input, not a weight's dequantize.
    assert entry["info"]["delegates"] == 1 and entry["info"]["ops_outside_delegate"] == 0, entry["info"]
    scheme = WEIGHT_SCHEMES[precision]
    parity = entry["parity"]
    assert parity["status"] == "pass" and "fashion-mnist" in parity["images"]
    # Points are multiples of 100 / images (0.2 pp is one image of 500).
    assert parity["top1_drop_pp"] <= scheme.max_drop_pp + 1e-9
    assert parity["top1_agreement"] >= scheme.min_top1_agreement
    record = entry["compression"]
    assert record["scheme"] == precision and record["bits"] == scheme.bits
    assert record["group_size"] == (32 if precision == "w4" else None)
    assert record["bytes"] == path.stat().st_size and record["ratio_vs_fp32"] > 2
    assert record["layers_compressed"] + record["layers_kept_8bit"] == len(_linears())
    # torchao's config quantizes linears only: the stem and merge convolutions stay float, and say so.
    assert record["float_weights"] and all(re.match(r"(patch_embed|layers\.\d+\.downsample)\.", name)
                                           for name in record["float_weights"]), record["float_weights"]


def test_weights_really_are_4_bit(exported):
    """XNNPACK's graph in each file: every linear a dynamically quantized GEMM with 4-bit blockwise (w4) or 8-bit
    per-channel (w8) weights, none left float; and 4 bits save what they should on disk."""
    w8, w8_path = exported["w8"]
    w4, w4_path = exported["w4"]
    linears = len(_linears())
    got8, got4 = xnnpack_gemms(w8_path.read_bytes()), xnnpack_gemms(w4_path.read_bytes())
    assert got8 == w8["compression"]["xnnpack_gemms"] and got4 == w4["compression"]["xnnpack_gemms"]
    assert got8["fully_connected qd8-f32-qc8w"] == linears and "fully_connected f32" not in got8
    kept = w4["compression"]["linears_kept_8bit"]
    assert "head" in kept
    assert got4["fully_connected qd8-f32-qb4w"] == linears - len(kept) > 0
    assert got4.get("fully_connected qd8-f32-qc8w", 0) == len(kept) and "fully_connected f32" not in got4
    # Every 4-bit weight saves at least 0.4 byte against 8 bits (half a byte, less its share of the group scales).
    model = deployable(create_model("crossformer-fmnist", spelling=SPELLING))
    four_bit = sum(m.weight.numel() for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.removeprefix("model.") not in kept)
    assert w8["bytes"] - w4["bytes"] >= 0.4 * four_bit, (w8["bytes"], w4["bytes"], four_bit)


def test_w4_runs_on_executorch_runtime(exported):
    """The .pte on executorch.runtime directly: it classifies real test images as the FP32 model does."""
    _, path = exported["w4"]
    data = load_dataset(None, {"size": 32, "crop": 32, "interpolation": "bilinear"}, split="test", limit=64)
    images = eight_bit(data.images.numpy())
    method = Runtime.get().load_program(str(path)).load_method("forward")
    got = np.concatenate([method.execute([torch.from_numpy(images[i:i + 1])])[0].numpy() for i in range(64)])
    reference = create_model("crossformer-fmnist")
    with torch.no_grad():
        expected = deployable(reference)(torch.from_numpy(images)).numpy()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert not np.allclose(got, expected, atol=1e-4), "4-bit weights cannot reproduce FP32 logits exactly"


def test_a_group_size_xnnpack_cannot_run_is_refused(tmp_path, capsys):
    """XNNPACK's 4-bit GEMMs take multiples of 32 input channels per scale: 16 (valid elsewhere) is refused before
    any work, with what to use."""
    out = tmp_path / "out"
    assert run_cli("--target", "executorch", "--model", "crossformer-fmnist", "--precision", "w4", "--group-size",
                   "16", "--output", out) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "--group-size 16" in err and "executorch" in err and "32" in err and "Traceback" not in err, err


def test_a_list_of_sizes_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("--target", "executorch", "--model", "crossformer-fmnist", "--task", "features", "--precision",
                   "w4", "--sizes", "64x64", "96x96", "--output", out) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "--precision w4" in err or "--sizes" in err, err


@pytest.mark.heavy
def test_crossformer_t_w4_is_a_quarter_of_fp32(checkpoints, tmp_path):
    """Issue 30's done-when: CrossFormer-T 224 with 4-bit linears in at most 1/4 of its FP32 bytes, 0 ops outside
    XNNPACK, parity recorded (seeded weights, no labelled images of its own: the cosine gate)."""
    out = tmp_path / "t224"
    assert run_cli("--target", "executorch", "--model", "crossformer-t", "--img-size", "224", "--checkpoint",
                   checkpoints("crossformer-t", 1000), "--precision", "w4", "--output", out) == 0
    (entry,) = load_manifest(out)["artifacts"]
    assert entry["info"]["ops_outside_delegate"] == 0 and entry["info"]["delegates"] == 1
    assert entry["compression"]["ratio_vs_fp32"] >= 4, entry["compression"]
    assert entry["compression"]["xnnpack_gemms"]["fully_connected qd8-f32-qb4w"] > 0
    assert entry["parity"]["status"] == "pass" and "cosine" in entry["parity"]["gate"], entry["parity"]
