"""x86 INT8 saturation: the static check's rule against an emulation of the kernels it reasons about, the check on
hand-built ONNX / OpenVINO graphs, and the exported artifacts (default 7-bit weights pass, full range is flagged).

Nothing here depends on the CPU running it: the check reads files, the emulation is numpy.
"""

import numpy as np
import pytest

from edge_crossformer.data import find_fashion_mnist
from edge_crossformer.host import host_isa, int8_dot_product
from export.saturation import check_onnx, check_openvino, pairs_at_risk, reduction_rows

from conftest import load_manifest, run_cli


def pmaddubsw_dot(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """u8 [K] x s8 [rows, K] as x86 without VNNI computes it: adjacent products summed into a saturating int16
    (pmaddubsw), then widened and accumulated in int32 (pmaddwd with ones)."""
    x = np.asarray(x, np.int64)
    w = np.asarray(w, np.int64)
    if w.shape[-1] % 2:
        x, w = np.append(x, 0), np.concatenate([w, np.zeros((w.shape[0], 1), np.int64)], axis=1)
    pairs = x[0::2] * w[:, 0::2] + x[1::2] * w[:, 1::2]
    return np.clip(pairs, -32768, 32767).sum(axis=1)


def worst_inputs(w: np.ndarray) -> list[np.ndarray]:
    """u8 inputs that push one row's pair sums furthest up and down: 255 where the weight has that sign."""
    return [np.where(w > 0, 255, 0), np.where(w < 0, 255, 0)]


@pytest.mark.parametrize("bits", [7, 8])
def test_rule_is_exactly_the_pmaddubsw_overflow(bits):
    """Rows the rule passes give the exact (VNNI) result for every input, including the worst case; rows it flags
    give a wrong one for their worst-case input. 7-bit weights (|w| <= 64) never get flagged."""
    rng = np.random.default_rng(bits)
    hi = 64 if bits == 7 else 127
    for _ in range(300):
        k = int(rng.integers(1, 40))
        w = rng.integers(-hi, hi + 1, size=(1, k))
        risky, _ = pairs_at_risk(w)
        inputs = worst_inputs(w[0]) + [rng.integers(0, 256, size=k) for _ in range(3)]
        exact = [int((x.astype(np.int64) * w[0]).sum()) for x in inputs]
        emulated = [int(pmaddubsw_dot(x, w)[0]) for x in inputs]
        if risky == 0:
            assert emulated == exact, (w, inputs)
        else:
            assert emulated[:2] != exact[:2], w
        if bits == 7:
            assert risky == 0


def test_rule_edges():
    assert pairs_at_risk(np.array([[64, 64]])) == (0, 128)      # 128 x 255 = 32640 <= 32767
    assert pairs_at_risk(np.array([[64, 65]])) == (1, 129)
    assert pairs_at_risk(np.array([[-64, -64]])) == (0, 128)
    assert pairs_at_risk(np.array([[127, -127]])) == (0, 127)   # opposite signs never overflow
    assert pairs_at_risk(np.array([[0, 127, 127, 0]])) == (0, 127)  # pairs are (0, 1) and (2, 3): kernel order
    assert pairs_at_risk(np.array([[127, 127, 0]])) == (1, 254)     # odd K: the last weight pairs with padding


def test_reduction_order():
    w = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)  # conv [O, I, kh, kw]: channels innermost
    rows = reduction_rows(w, "conv")
    assert rows.shape == (2, 12) and list(rows[0, :3]) == [0, 4, 8]
    m = np.arange(6).reshape(2, 3)  # MatMul weight [K, N]: pairs run down K
    assert list(reduction_rows(m, "matmul", k_axis=-2)[0]) == [0, 3]


def test_int8_dot_product_by_isa():
    assert "pmaddubsw" in int8_dot_product(["avx2", "fma"], "x86_64")
    assert "pmaddubsw" in int8_dot_product(["avx512f", "avx512bw"], "x86_64")
    assert "VNNI" in int8_dot_product(["avx2", "avx512f", "avx512_vnni"], "x86_64")
    assert "VNNI" in int8_dot_product(["avx2", "avx_vnni"], "x86_64")
    assert "AMX" in int8_dot_product(["amx_int8", "avx512_vnni"], "x86_64")
    assert "Arm dot product" in int8_dot_product(["asimd", "asimddp"], "aarch64")
    host = host_isa()
    assert host["arch"] and isinstance(host["isa"], list)
    print(f"this host: {host['cpu']}: {host['int8_dot_product']} ({', '.join(host['isa'])})")


def _onnx_linear(tmp_path, weight: np.ndarray, quantized_weight: bool):
    """x -> Q/DQ -> MatMul(weight) -> Q/DQ -> y, the weight either a QDQ INT8 constant or a float initializer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
    if quantized_weight:
        inits += [numpy_helper.from_array(weight.astype(np.int8), "wq"),
                  numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.zeros(n, np.int8), "wz")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1))
    else:
        inits.append(numpy_helper.from_array(weight.astype(np.float32) * 0.01, "w"))
    nodes += [helper.make_node("MatMul", ["xd", "w"], ["y0"], name="linear"),
              helper.make_node("QuantizeLinear", ["y0", "s", "z"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
    path = tmp_path / f"linear_{quantized_weight}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def test_check_onnx_graphs(tmp_path):
    rng = np.random.default_rng(0)
    safe = rng.integers(-64, 65, size=(16, 8))
    full = safe.copy()
    full[0:2, 3] = 120  # one pair along K (rows 0 and 1 of column 3) at 240
    ok = check_onnx(_onnx_linear(tmp_path, safe, True))
    assert ok["saturation_safe"] and ok["int8_weight_layers"] == 1 and ok["layers_at_risk"] == 0
    bad = check_onnx(_onnx_linear(tmp_path, full, True))
    assert not bad["saturation_safe"] and bad["layers_at_risk"] == 1 and bad["pairs_at_risk"] == 1
    assert bad["at_risk"][0]["layer"] == "linear" and bad["max_pair_sum"] == 240
    # A float weight between quantized activations: ONNX Runtime quantizes it itself at load time (full range).
    float_w = check_onnx(_onnx_linear(tmp_path, safe, False))
    assert not float_w["saturation_safe"] and float_w["unchecked"] == ["linear"]


def test_check_openvino_graph(tmp_path):
    import openvino as ov
    import openvino.opset13 as ops

    def model(weight):
        x = ops.parameter([1, weight.shape[1]], np.float32, name="x")
        w = ops.multiply(ops.convert(ops.constant(weight.astype(np.int8)), np.float32),
                         ops.constant(np.full((weight.shape[0], 1), 0.01, np.float32)))
        path = tmp_path / f"m{int(np.abs(weight).max())}.xml"
        ov.save_model(ov.Model([ops.matmul(x, w, False, True)], [x]), str(path), compress_to_fp16=False)
        return path

    rng = np.random.default_rng(1)
    safe = rng.integers(-64, 65, size=(8, 16))  # [N, K], transpose_b
    full = safe.copy()
    full[2, 4:6] = -100
    assert check_openvino(model(safe))["saturation_safe"]
    bad = check_openvino(model(full))
    assert not bad["saturation_safe"] and bad["pairs_at_risk"] == 1 and bad["max_pair_sum"] == 200


@pytest.mark.skipif(find_fashion_mnist() is None,
                    reason="Debian package dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_full_range_weights_are_flagged(tmp_path, capsys):
    """The opt-out writes full-range weights: the manifest's check flags both x86 artifacts (and records, not
    gates, it). The default's side of this is asserted in test_quantize.py::test_ptq_every_target."""
    out = tmp_path / "full"
    code = run_cli("--target", "onnx,openvino", "--precision", "int8", "--full-range-int8-weights",
                   "--calib-size", "64", "--output", out)
    m = load_manifest(out)
    assert {a["target"] for a in m["artifacts"]} == {"onnx", "openvino"}
    for art in m["artifacts"]:
        sat = art["info"]["saturation_check"]
        assert art["saturation_safe"] is False and sat["layers_at_risk"] > 0 and sat["max_pair_sum"] > 128, sat
        assert art["info"]["int8_weights"].startswith("full")
        host = art["parity"]["runtime_host"]
        # Agreement legitimately differs by ISA here (full-range weights saturate without VNNI): print, not assert.
        print(f"{art['target']} full-range INT8 on {host['int8_dot_product']}: "
              f"agreement {art['parity']['top1_agreement']:.2%}")
    assert code in (0, 1)
    assert run_cli("--target", "executorch", "--precision", "int8", "--full-range-int8-weights",
                   "--output", tmp_path / "x") == 2
    assert "applies to INT8 OpenVINO / ONNX artifacts only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
