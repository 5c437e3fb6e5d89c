"""Which layers low-bit weights hurt (quantize.weights, `python -m quantize sensitivity --precision w4`) and
`--max-accuracy-drop` with compressed weights: the units the search keeps at 8 bits reach the exported file, and
the drop is measured on it."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import load_manifest, run_cli
from edge_crossformer import create_model, deployable, targets
from edge_crossformer.compression import SEARCHABLE_WEIGHTS, WEIGHT_SCHEMES
from edge_crossformer.data import find_fashion_mnist, load_dataset

needs_fmnist = pytest.mark.skipif(find_fashion_mnist() is None,
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_linear_levels_store_bits_per_group():
    from quantize.weights import linear_levels

    weight = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    for bits, group in ((4, 32), (4, 16), (8, None)):
        stored = linear_levels(weight, bits, group)
        groups = stored.reshape(6, -1, group or 64)
        scale = weight.reshape(6, -1, group or 64).abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        levels = groups / scale
        assert torch.allclose(levels, levels.round(), atol=1e-4), (bits, group)
        assert levels.abs().max() <= 2 ** (bits - 1) - 1 + 1e-4
        assert (stored - weight).abs().max() <= scale.max() / 2 + 1e-6
    conv = torch.randn(8, 4, 2, 2)  # grouped over input channels x kernel, as the runtimes flatten it
    assert linear_levels(conv, 4, 16).shape == conv.shape


def test_palette_has_at_most_a_table_of_values():
    from quantize.weights import palette

    weight = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    for bits in (4, 6):
        stored = palette(weight, bits)
        assert len(stored.unique()) <= 2 ** bits
        # k-means: a better table than evenly spaced levels over the same range
        even = torch.linspace(weight.min().item(), weight.max().item(), 2 ** bits)
        naive = even[(weight.reshape(-1, 1) - even).abs().argmin(1)].reshape(weight.shape)
        assert (stored - weight).pow(2).mean() < (naive - weight).pow(2).mean()


@pytest.fixture(scope="module")
def sensitivity():
    from quantize.weights import WeightSensitivity

    spec_images = load_dataset(None, {"size": 32, "crop": 32, "interpolation": "bilinear"}, split="test", limit=300)
    model = deployable(create_model("crossformer-fmnist"))
    return WeightSensitivity(model, WEIGHT_SCHEMES["w4"], 32, spec_images.images, spec_images.labels.numpy(), 100)


@needs_fmnist
def test_units_and_evaluation_leave_the_model_float(sensitivity):
    units = sensitivity.units
    assert units[0] == "patch_embed" and units[-1] == "head"
    assert "layers.0.downsample" in units and "layers.3.blocks.0" in units
    before = {name: w.detach().clone() for name, w in sensitivity.weights.items()}
    every = sensitivity.evaluate(set(units))
    none = sensitivity.evaluate(set())
    assert all(torch.equal(before[name], w) for name, w in sensitivity.weights.items())
    assert none["agreement"] == 100.0 and none["kl"] < 1e-9
    assert every["kl"] > 1e-6  # 4-bit weights change the logits


@needs_fmnist
def test_search_keeps_the_fewest_units_at_8_bits(sensitivity):
    from quantize.weights import search_keep_8bit

    default = {"patch_embed", "head"}
    loose = search_keep_8bit(sensitivity, default, 50.0)
    assert loose.met and loose.kept_8bit == [] and len(loose.tried) == 1
    # Stricter than every unit at 4 bits: some units go to 8 bits, and the drop the search found holds.
    strict = loose.default_drop_pp - 0.01
    found = search_keep_8bit(sensitivity, default, strict)
    if found.met:
        assert found.kept_8bit and found.drop_pp <= strict
        assert not default & set(found.kept_8bit)
    impossible = search_keep_8bit(sensitivity, default, -100.0)
    assert not impossible.met and set(impossible.kept_8bit) == set(sensitivity.units) - default


def _w4_target() -> str:
    """A fast target that runs w4 here (ONNX Runtime), else any that does."""
    able = targets.names(lambda t: t.supports("w4") and t.runtime is not None)
    return "onnx" if "onnx" in able else able[0]


@needs_fmnist
def test_max_accuracy_drop_keeps_units_at_8_bits_in_the_file(tmp_path):
    """A drop of 0 pp is stricter than the defaults (0.1 pp simulated on crossformer-fmnist): the searched units
    reach the plan the target compresses by, the file holds more 8-bit layers, and the drop is measured on it."""
    name = _w4_target()
    out = tmp_path / "o"
    code = run_cli("--target", name, "--precision", "w4", "--max-accuracy-drop", "0", "--output", out)
    entry = load_manifest(out)["artifacts"][0]
    control = entry["info"]["accuracy_control"]
    assert control["max_drop_pp"] == 0.0 and control["units"] == 12
    assert {"measured_drop_pp", "simulated_drop_pp", "tried", "met"} <= set(control)
    assert control["measured_on"] != "simulation only (the runtime cannot run here)"
    check = next(c for c in entry["checks"] if "--max-accuracy-drop" in c["check"])
    assert check["ok"] == control["met"] and (code == 0) == (entry["parity"]["status"] == "pass" and check["ok"])
    patterns = entry["compression"]["kept_8bit_patterns"]
    for unit in control["kept_8bit"]:
        assert any(re.search(p, f"{unit}.attn.qkv") or re.search(p, unit) for p in patterns), unit
    assert control["kept_8bit"] or control["default_simulated_drop_pp"] <= 0.0
    if control["kept_8bit"]:
        plain = tmp_path / "plain"
        assert run_cli("--target", name, "--precision", "w4", "--output", plain) == 0
        default = load_manifest(plain)["artifacts"][0]["compression"]
        assert entry["compression"]["layers_kept_8bit"] > default["layers_kept_8bit"]
        assert entry["bytes"] > load_manifest(plain)["artifacts"][0]["bytes"]


@pytest.mark.parametrize("args, words", [
    (["--precision", "w8", "--max-accuracy-drop", "0.5"], "--max-accuracy-drop"),
    (["--precision", "w4", "--max-accuracy-drop", "-0.5"], "[0, 100) percentage points"),
    (["--precision", "w4", "--max-accuracy-drop", "0.5", "--reference-model"], "--reference-model"),
])
def test_weight_search_bad_input(tmp_path, capsys, args, words):
    out = tmp_path / "o"
    assert run_cli("--target", _w4_target(), *args, "--output", out) == 2
    assert words in capsys.readouterr().err and not out.exists()


def test_weight_search_needs_the_models_own_labelled_images(tmp_path, capsys, checkpoints):
    out = tmp_path / "o"
    assert run_cli("--target", _w4_target(), "--model", "crossformer-t", "--checkpoint",
                   str(checkpoints("crossformer-t")), "--img-size", "64", "--precision", "w4",
                   "--max-accuracy-drop", "1", "--output", out) == 2
    err = capsys.readouterr().err
    assert "labelled images" in err and "--max-accuracy-drop" in err and not out.exists()


@needs_fmnist
def test_sensitivity_cli_for_weights(tmp_path):
    from quantize.__main__ import main

    out = tmp_path / "sens"
    assert main(["sensitivity", "--precision", "w4", "--group-size", "16", "--limit", "100", "--output",
                 str(out)]) == 0
    report = json.loads((out / "sensitivity.json").read_text())
    assert report["precision"] == "w4" and report["group_size"] == 16 and report["calibration"] is None
    assert len(report["layers"]) == len(report["ranking"]) == 12
    row = report["layers"][0]
    assert {"unit", "kind", "only_compressed", "kept_8bit"} <= set(row)
    kls = [r["only_compressed"]["kl"] for r in report["layers"]]
    assert kls == sorted(kls, reverse=True) and report["ranking"][0] == row["unit"]
    assert set(report["kept_8bit_by_default"]) >= {"patch_embed", "head"}
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_cli_weight_flags_bad_input(tmp_path, capsys):
    from quantize.__main__ import main

    out = tmp_path / "s"
    assert main(["sensitivity", "--precision", "w4", "--calib-size", "50", "--output", str(out)]) == 2
    assert "needs no calibration" in capsys.readouterr().err
    assert main(["sensitivity", "--group-size", "32", "--output", str(out)]) == 2
    assert "--group-size applies to grouped weights (w4)" in capsys.readouterr().err
    assert main(["sensitivity", "--precision", "w4", "--group-size", "64", "--output", str(out)]) == 2
    assert "does not divide the input channels" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["sensitivity", "--precision", "w3", "--output", str(out)])
    assert refused.value.code == 2 and "--precision" in capsys.readouterr().err
    assert not out.exists()


def test_every_searchable_scheme_has_fewer_than_8_bits():
    assert SEARCHABLE_WEIGHTS and all(WEIGHT_SCHEMES[p].bits < 8 for p in SEARCHABLE_WEIGHTS)
    assert "w8" not in SEARCHABLE_WEIGHTS


def test_diagnose_refuses_a_weight_sensitivity_report(tmp_path):
    from export.diagnose.run import DiagnoseError, read_sensitivity

    report = tmp_path / "sensitivity.json"
    report.write_text(json.dumps({"model": "crossformer-fmnist", "precision": "w4", "layers": [
        {"unit": "head", "only_compressed": {"kl": 1e-4}}]}))
    with pytest.raises(DiagnoseError, match="w4 weights"):
        read_sensitivity(report, {"model": "crossformer-fmnist"}, [{"precision": "int8"}], brief=False)


def test_a_search_that_needs_every_unit_at_8_bits_fails_and_says_so():
    """Where even every unit at 8 bits loses more than asked in simulation, the scheme buys nothing: the check
    fails whatever the file measures, and says why."""
    from pathlib import Path

    from export.base import Artifact
    from export.pipeline import _accuracy_control

    control = {"max_drop_pp": 0.0, "kept_8bit": ["layers.0.blocks.1"], "simulated_drop_pp": 0.05,
               "met_in_simulation": False, "images": "2000 search images"}
    art = Artifact("coreml", None, "palette4", Path("x.mlpackage"), None, info={"accuracy_control": control})
    met, why = _accuracy_control(art, source=None)
    assert not met and control["met"] is False
    assert "every layer kept at 8 bits it still lost 0.05 pp" in why and "palette4 buys nothing" in why, why
    assert "--precision w8" in why
