"""Per-layer INT8 sensitivity (python -m quantize sensitivity) and accuracy-controlled INT8 (--max-accuracy-drop)."""

import json

import numpy as np
import pytest
import torch

from edge_crossformer import Spelling
from edge_crossformer.data import find_fashion_mnist

from conftest import load_manifest, run_cli

needs_fmnist = pytest.mark.skipif(find_fashion_mnist() is None,
                                  reason="Debian package dataset-fashion-mnist is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def fmnist_graph():
    from edge_crossformer import Normalized, create_model, strip_position_mlp
    from quantize import QuantOptions
    from quantize.sensitivity import calibrated_graph

    model = create_model("crossformer-fmnist", spelling=Spelling(decompose_layernorm=True))
    model = Normalized(strip_position_mlp(model)).eval()
    calibration = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, calibrated_graph(model, calibration, QuantOptions(subset_size=16))


def test_switching_every_unit_to_float_gives_the_float_model(fmnist_graph):
    """The per-layer switch is exact: every unit float reproduces the FP32 model bit for bit, none float is the
    calibrated INT8 graph, and one unit float changes the output."""
    from quantize.sensitivity import logits_of, units, with_float_units

    model, graph = fmnist_graph
    found = units(graph)
    kinds = set(found.values())
    assert {"linear", "conv", "residual add"} <= kinds and len(found) > 40, found
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fp32, int8 = logits_of(model, x, 3), logits_of(graph, x, 3)
    assert np.array_equal(logits_of(with_float_units(graph, model, set(found)), x, 3), fp32)
    assert np.abs(int8 - fp32).max() > 1e-3
    one = logits_of(with_float_units(graph, model, {"model.head"}), x, 3)
    assert not np.array_equal(one, int8) and not np.array_equal(one, fp32)


def test_search_keeps_float_until_the_drop_holds(fmnist_graph):
    """Labels chosen so that INT8 'loses' images: the search keeps layers float, most helpful first, until the
    drop holds; a drop that only all-float meets is reported as not met, with every layer listed."""
    from quantize.sensitivity import Sensitivity, logits_of, search_keep_float, units

    model, graph = fmnist_graph
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fp32 = logits_of(model, x, 8)
    rows = [{"unit": u, "kind": k, "kept_float": {"kl": i, "drop_pp": 0.0}} for i, (u, k) in enumerate(units(graph).items())]
    sens = Sensitivity(graph, model, 8, x, fp32, fp32.argmax(1), {}, rows)  # a made-up ranking: graph order
    sens.all_int8 = sens.evaluate(set())
    assert sens.ranking()[0] == rows[0]["unit"]
    loose = search_keep_float(sens, 100.0)
    assert loose.met and loose.kept_float == []
    if sens.all_int8["drop_pp"] > 0:  # random weights and inputs: INT8 flips some argmaxes
        impossible = search_keep_float(sens, -1.0)
        assert not impossible.met and len(impossible.kept_float) == len(rows)


@needs_fmnist
def test_sensitivity_cli_writes_table_and_plot(tmp_path):
    from quantize.__main__ import main

    out = tmp_path / "sens"
    assert main(["sensitivity", "--limit", "120", "--calib-size", "32", "--output", str(out)]) == 0
    report = json.loads((out / "sensitivity.json").read_text())
    assert report["images"] == 120 and report["criterion"].startswith("top-1")
    assert len(report["layers"]) == len(report["ranking"]) > 40
    row = report["layers"][0]
    assert {"unit", "kind", "only_int8", "kept_float"} <= set(row) and {"kl", "drop_pp", "agreement"} <= set(
        row["only_int8"])
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_cli_bad_input(tmp_path, capsys, checkpoints):
    from quantize.__main__ import main

    out = tmp_path / "s"
    assert main(["sensitivity", "--model", "crossformer-t", "--checkpoint", str(checkpoints("crossformer-t")),
                 "--num-classes", "10", "--output", str(out)]) == 2
    assert "no calibration images for crossformer-t: pass --calib-data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["sensitivity", "--limit", "1", "--output", str(out)])
    assert refused.value.code == 2 and "--limit: must be in [2, 10000000], got 1" in capsys.readouterr().err
    assert main(["sensitivity", "--model", "crossformer-q"]) == 2
    assert not out.exists()
    assert main(["--help"]) == 0
    assert main(["nonsense"]) == 2


def test_max_accuracy_drop_bad_input(tmp_path, capsys):
    out = tmp_path / "o"
    cases = [
        (["--target", "onnx", "--precision", "int8", "--max-accuracy-drop", "-1"], "[0, 100)"),
        (["--target", "onnx", "--precision", "int8", "--max-accuracy-drop", "nan"], "[0, 100)"),
        (["--target", "onnx", "--max-accuracy-drop", "0.1"], "applies to INT8 and to weights below 8 bits: add --precision int8"),
        (["--target", "executorch", "--precision", "int8", "--int8-activations", "dynamic",
          "--max-accuracy-drop", "0.1"], "drop --int8-activations dynamic"),
        (["--target", "coreml", "--precision", "int8", "--smooth-quant-alpha", "0.5", "--max-accuracy-drop", "0.1"],
         "needs SmoothQuant off"),
    ]
    for args, message in cases:
        assert run_cli(*args, "--output", out) == 2, args
        assert message in capsys.readouterr().err, args
    assert not out.exists()


@needs_fmnist
def test_max_accuracy_drop_every_target(tmp_path, monkeypatch):
    """One export, four targets: OpenVINO / ONNX through NNCF's accuracy control, ExecuTorch / Core ML through the
    keep-float search; the drop is measured on each artifact's runtime (Core ML off macOS: the MIL evaluator) on
    images outside the calibration set, and the manifest says what stayed float. A generous drop: CI measures the
    mechanism, README the 0.1 pp run."""
    import export.int8

    monkeypatch.setattr(export.int8, "SEARCH_IMAGES", 300)  # the mechanism, not the statistics (README: 2000)
    out = tmp_path / "ac"
    code = run_cli("--target", "onnx,openvino,executorch,coreml", "--precision", "int8", "--max-accuracy-drop", "1.0",
                   "--calib-size", "64", "--output", out)
    m = load_manifest(out)
    int8 = [a for a in m["artifacts"] if a["precision"] == "int8"]
    assert {a["target"] for a in int8} == {"onnx", "openvino", "executorch", "coreml"} and not m["failures"]
    for art in int8:
        control = art["info"]["accuracy_control"]
        assert control["max_drop_pp"] == 1.0 and control["criterion"].startswith("top-1")
        assert "300 images outside the calibration set" in control["images"]
        assert isinstance(control["kept_float"], list) and control["met"], control
        if art["info"].get("runtime") or art["target"] != "coreml":  # Core ML off macOS: the MIL evaluator
            assert control["measured_on"] == (art["info"].get("runtime") or f"{art['target']} runtime")
            assert control["measured_drop_pp"] <= 1.0
        else:
            assert control["measured_on"].startswith("simulation")
    assert code == 0


def test_keep_float_reaches_concatenations():
    """ExecuTorch's cat annotator ignores the quantizer's filter; ours applies it, so keeping the patch embedding
    float leaves its concatenation (and what the annotation used to propagate to) unquantized."""
    from edge_crossformer import Normalized, create_model
    from quantize import QuantOptions, calibration_list, quantize_pt2e

    model = Normalized(create_model("crossformer-fmnist", spelling=Spelling(decompose_layernorm=True))).eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def quantized_cats(keep_float):
        graph = quantize_pt2e(model, images[:1], calibration_list(images), QuantOptions(subset_size=4,
                                                                                          keep_float=keep_float))
        cats = [n for n in graph.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.cat.default]
        return sum(any("quantize_per" in str(u.target) for u in n.users) for n in cats), len(cats)

    everything, cats = quantized_cats(())
    assert everything == cats == 4  # patch embedding + three merges
    assert quantized_cats((r"^model\.patch_embed$",)) == (3, 4)
