"""Weight compression (--precision w8 / w4 / palette4 / palette6, edge_crossformer.compression): refusals before any
work, and (per target offering a scheme) exports whose weights really are compressed, gated and recorded."""

from __future__ import annotations

import pytest

from conftest import run_cli
from edge_crossformer import get_config, targets
from edge_crossformer.compression import (GROUP_SIZES, WEIGHT_SCHEMES, is_compressed, linear_in_features,
                                          weight_scheme)


def offering(precision: str) -> list[str]:
    return list(targets.names(lambda t: t.supports(precision)))


def not_offering(precision: str) -> list[str]:
    return [name for name in targets.names() if not targets.get(name).supports(precision)]


def refused(tmp_path, capsys, *args) -> str:
    """Run the command line, expecting exit 2 and nothing written; its message."""
    out = tmp_path / "out"
    assert run_cli(*args, "--output", out) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_every_scheme_is_described_once():
    for name, scheme in WEIGHT_SCHEMES.items():
        assert name in targets.PRECISIONS and weight_scheme(name) is scheme
        assert 0 < scheme.max_drop_pp <= 1.0 and 0.9 < scheme.min_top1_agreement <= 1.0
        assert 0.9 < scheme.min_cosine < 1.0
        assert scheme.kind in ("linear", "palette") and 2 <= scheme.bits <= 8
        assert weight_scheme(f"int8+{name}") in (None, scheme)
    assert not any(is_compressed(p) for p in ("fp32", "fp16", "int8"))


@pytest.mark.parametrize("precision", [p for p in targets.PRECISIONS if is_compressed(p)])
def test_a_precision_a_target_does_not_offer_is_refused(precision, tmp_path, capsys):
    """Each compressed precision, on each target that does not offer it: exit 2, the targets that do named."""
    for name in not_offering(precision):
        err = refused(tmp_path, capsys, "--target", name, "--precision", precision)
        assert f"--precision {precision}" in err and name in err, err
        able = offering(precision)
        assert (f"available for: {', '.join(able)}" if able else "no target offers it yet") in err, err


def test_palettization_is_core_ml_only(tmp_path, capsys):
    for name in not_offering("palette4"):
        if name != "coreml":
            assert "palettization" in refused(tmp_path, capsys, "--target", name, "--precision", "palette4")


def test_int8_with_compressed_weights_is_refused_where_a_target_cannot_do_both(tmp_path, capsys):
    for name in not_offering("int8+w4"):
        err = refused(tmp_path, capsys, "--target", name, "--precision", "int8+w4")
        assert "does not run both together" in err, err


def test_int8_only_flags_stay_refused_for_compressed_weights(tmp_path, capsys):
    """INT8's flags do nothing for compressed weights; --max-accuracy-drop only for weights below 8 bits (8-bit
    weights have no 8-bit fallback to trade: test_compression_search.py)."""
    for precision in ("w8", "w4"):
        for name in offering(precision):
            for flag in (["--calib-size", "50"], ["--smooth-quant-alpha", "0.5"], ["--int8-activations", "static"],
                         ["--parity-samples", "4"]) + ((["--max-accuracy-drop", "1"],) if precision == "w8" else ()):
                err = refused(tmp_path, capsys, "--target", name, "--precision", precision, *flag)
                assert flag[0] in err, err


def test_group_size_refusals(tmp_path, capsys):
    """--group-size: only where a grouped scheme is exported, a power of two, dividing every 4-bit layer's input
    channels."""
    assert "--group-size" in refused(tmp_path, capsys, "--target", "onnx", "--precision", "fp32",
                                     "--group-size", "32")
    grouped = offering("w4")
    if not grouped:
        pytest.skip("no target offers w4 yet")
    assert "--group-size" in refused(tmp_path, capsys, "--target", grouped[0], "--precision", "w8",
                                     "--group-size", "32")
    assert "one of" in refused(tmp_path, capsys, "--target", grouped[0], "--precision", "w4", "--group-size", "24")
    # crossformer-fmnist's 4-bit layers have 32 input channels in stage 1 (or 64 in stage 2): 256 divides neither.
    channels = linear_in_features(get_config("crossformer-fmnist"), WEIGHT_SCHEMES["w4"].keep_8bit)
    too_big = next(g for g in GROUP_SIZES if any(c % g for c in channels.values()))
    err = refused(tmp_path, capsys, "--target", grouped[0], "--precision", "w4", "--group-size", str(too_big))
    assert "does not divide" in err and "channels" in err, err


def test_compressed_weights_are_for_the_classifier_at_one_size(tmp_path, capsys):
    # A target that serves a range of sizes: elsewhere --dynamic-size is refused before (for the size, not w4).
    grouped = [name for name in offering("w4") if targets.get(name).serves("range")]
    if not grouped:
        pytest.skip("no target offers w4 and a range of sizes")
    for extra in (["--task", "features"], ["--dynamic-size", "64", "128"]):
        assert "classifier at one size" in refused(tmp_path, capsys, "--target", grouped[0], "--precision", "w4",
                                                   *extra)


def test_group_size_reaches_the_plan(tmp_path):
    from export.compression import plan_for
    from export.request import ExportRequest
    from export.validate import validate

    name = offering("w4")[0]
    group = next(g for g in GROUP_SIZES if g != WEIGHT_SCHEMES["w4"].group_size
                 and g in (targets.get(name).group_sizes or GROUP_SIZES))
    req = validate(ExportRequest(targets=(name,), precision="w4", group_size=group, output=tmp_path / "o"))
    plan = plan_for(req, "w4", len(get_config(req.model).depths))
    assert plan.group_size == group and plan.kept("head") and not plan.kept("layers.2.blocks.0.mlp.fc1")
    assert plan_for(req, "w8", 4).group_size is None and plan_for(req, "int8", 4) is None


# The targets whose compressed exports this file runs (ExecuTorch / Core ML test theirs in their own files).
RUNS_HERE = [t for t in ("openvino", "onnx") if "w4" in targets.get(t).precisions]


@pytest.fixture(scope="module", params=["w8", "w4"])
def exported(request, tmp_path_factory):
    """crossformer-fmnist exported with one compressed precision for every target here that offers it."""
    from conftest import load_manifest

    precision = request.param
    names = [t for t in RUNS_HERE if targets.get(t).supports(precision)]
    if not names:
        pytest.skip(f"no target here offers {precision}")
    out = tmp_path_factory.mktemp(precision) / "out"
    code = run_cli("--target", ",".join(names), "--precision", precision, "--output", out)
    return precision, out, code, load_manifest(out)


def test_compressed_exports_pass_their_gate_and_record_the_scheme(exported):
    precision, out, code, manifest = exported
    scheme = weight_scheme(precision)
    assert code == 0 and manifest["status"] == "pass" and not manifest["failures"], manifest["failures"]
    for art in manifest["artifacts"]:
        record, parity = art["compression"], art["parity"]
        assert record["scheme"] == precision and record["bits"] == scheme.bits
        assert record["group_size"] == scheme.group_size
        assert record["kept_8bit_roles"] == list(scheme.keep_8bit) and record["stays_float"]
        # Judged on the held-out Fashion-MNIST test images, with the scheme's own thresholds.
        assert "fashion-mnist" in parity["images"] and parity["top1_drop_pp"] <= scheme.max_drop_pp + 1e-9
        assert f"{scheme.min_top1_agreement:.0%}" in parity["gate"] and f"{scheme.max_drop_pp} pp" in parity["gate"]
        assert record["bytes"] == art["bytes"] and record["fp32_weight_bytes"] > 0


def test_compression_really_happened(exported):
    """Read back from the files, not from the record: a compression that silently did nothing fails here."""
    precision, out, _, manifest = exported
    bits = weight_scheme(precision).bits
    for art in manifest["artifacts"]:
        record = art["compression"]
        # FP32 files are about 1x the FP32 weights; 8-bit weights more than 3x smaller, 4-bit with the 8-bit layers
        # (stem, merges, first stage, head) more than 4x on crossformer-fmnist.
        assert record["ratio_vs_fp32"] > (2.5 if bits == 8 else 3.5), record
        assert record["layers_compressed"] > 0 and not record["float_weights"]
        found = _stored_bits(art["target"], out / art["file"])
        assert found.get(bits, 0) == record["layers_compressed"], (found, record)
        if bits < 8:
            assert found.get(8, 0) == record["layers_kept_8bit"] > 0, (found, record)
        if art["target"] == "openvino":  # the CPU plugin runs the linears' weights compressed, not expanded
            matmuls = found.get(f"MatMul {bits}", 0)
            # All but the head (one row of 256 -> 10): the plugin expands that one to f32 at load time.
            assert record["runtime_weights"].get(f"FullyConnected i{bits}", 0) >= matmuls - 1 > 0, record
        if art["target"] == "onnx":
            ops = art["info"]["op_histogram"]
            assert "Gemm" not in ops and ops["MatMulNBits"] == record["linears_found"] > 0


def _stored_bits(target: str, path) -> dict:
    """{bits: weighted layers stored at that width} (OpenVINO also {"MatMul bits": linears}), read from the file."""
    found: dict = {}
    if target == "openvino":
        import openvino as ov

        from export.openvino_weights import weight_type, weighted_ops

        widths = {"i4": 4, "u4": 4, "i8": 8, "u8": 8}
        for op in weighted_ops(ov.Core().read_model(str(path))):
            width = widths.get(weight_type(op), 32)
            found[width] = found.get(width, 0) + 1
            if op.get_type_name() == "MatMul":
                found[f"MatMul {width}"] = found.get(f"MatMul {width}", 0) + 1
    else:
        import onnx
        from onnx import helper

        model = onnx.load(str(path))
        for node in model.graph.node:
            if node.op_type == "MatMulNBits":
                b = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "bits")
                found[b] = found.get(b, 0) + 1
            if node.op_type == "DequantizeLinear" and node.name.endswith("_weight_dq"):
                found[8] = found.get(8, 0) + 1
    return found


@pytest.mark.heavy
def test_crossformer_t_openvino_int4_is_a_quarter_of_fp32(checkpoints, tmp_path):
    """Issue 30's done-when: CrossFormer-T 224 with OpenVINO INT4 weights <= 1/4 of its FP32 size, parity recorded
    (seeded weights, no labelled images of its own: the cosine gate)."""
    from conftest import load_manifest

    out = tmp_path / "out"
    assert run_cli("--target", "openvino", "--model", "crossformer-t", "--img-size", "224", "--checkpoint",
                   checkpoints("crossformer-t", 1000), "--precision", "w4", "--output", out) == 0
    art = load_manifest(out)["artifacts"][0]
    assert art["compression"]["ratio_vs_fp32"] >= 4.0 and art["parity"]["status"] == "pass", art["compression"]
    assert "cosine" in art["parity"]["gate"]


def test_without_labelled_images_the_gate_is_the_logits_cosine():
    """A model with no images of its own (a user's checkpoint, random weights): near-tied logits flip top-1 under
    any weight noise, so the parity inputs gate on cosine and only record agreement."""
    import numpy as np
    from types import SimpleNamespace

    from export.parity import classifier_parity

    rng = np.random.default_rng(0)
    expected = rng.normal(size=(8, 1000)).astype(np.float32) * 0.01
    scheme = WEIGHT_SCHEMES["w4"]
    for noise, status in ((0.02, "pass"), (1.0, "fail")):
        got = expected + noise * rng.normal(size=expected.shape).astype(np.float32) * 0.01
        # Input i is filled with i: the runner answers row i, however often it is called.
        inputs = np.arange(8, dtype=np.float32).reshape(8, 1, 1, 1) * np.ones((1, 3, 32, 32), np.float32)
        art = SimpleNamespace(target="openvino", precision="w4", cross_checks={},
                              runner=lambda x, got=got: got[int(x[0, 0, 0, 0])][None])
        result = classifier_parity(art, inputs, expected, "cpu", None)
        assert result["status"] == status and f"cosine of the logits" in result["gate"], result
        assert (result["cosine"] >= scheme.min_cosine) == (status == "pass")
