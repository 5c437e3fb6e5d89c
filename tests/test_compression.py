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
    for precision in ("w8", "w4"):
        for name in offering(precision):
            for flag in (["--calib-size", "50"], ["--smooth-quant-alpha", "0.5"], ["--int8-activations", "static"],
                         ["--max-accuracy-drop", "1"], ["--parity-samples", "4"]):
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
    grouped = offering("w4")
    if not grouped:
        pytest.skip("no target offers w4 yet")
    for extra in (["--task", "features"], ["--dynamic-size", "64", "128"]):
        assert "classifier at one size" in refused(tmp_path, capsys, "--target", grouped[0], "--precision", "w4",
                                                   *extra)
