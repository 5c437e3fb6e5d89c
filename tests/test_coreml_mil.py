"""The Core ML program evaluator (export/coreml_mil.py): it matches torch on converted models, its own numpy ops
match coremltools' semantics, broken programs fail the parity gate, and the Quickstart's artifact passes through it."""

import shutil
import sys

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from torch import nn

from export import coreml_mil, parity
from export.coreml_mil_ops import DECODERS, NUMPY_OPS

from conftest import load_manifest, run_cli


class Tiny(nn.Module):
    """The op kinds CrossFormer's programs hold: strided conv, layer norm, attention (matmul, softmax), GELU."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, kernel_size=4, stride=4, padding=1)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.mlp = nn.Linear(8, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = (x - 0.45) / 0.25
        t = self.norm(self.embed(x).flatten(2).transpose(1, 2))  # [1, 16, 8]
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        t = t + torch.softmax(q @ k.transpose(1, 2) * 8 ** -0.5, dim=-1) @ v
        return self.head(F.gelu(self.mlp(t)).mean(1))


def convert(model, path, precision="fp32", color="RGB", size=16):
    torch.manual_seed(0)
    example = torch.rand(1, 3, size, size)
    program = torch.export.export(model.eval(), (example,)).run_decompositions({})
    mlmodel = ct.convert(program, inputs=[ct.ImageType(name="image", shape=(1, 3, size, size), scale=1 / 255,
                                                       color_layout=getattr(ct.colorlayout, color))],
                         outputs=[ct.TensorType(name="logits", dtype=np.float32)], convert_to="mlprogram",
                         minimum_deployment_target=ct.target.iOS17,
                         compute_precision=getattr(ct.precision, "FLOAT32" if precision == "fp32" else "FLOAT16"))
    mlmodel.save(str(path))
    return path


def images(n=3, size=16, seed=0):
    return parity.eight_bit(np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return Tiny().eval()


@pytest.mark.parametrize("precision,rel", [("fp32", 1e-5), ("fp16", 1e-2)])
def test_matches_torch(tiny, tmp_path, precision, rel):
    x = images()
    got = coreml_mil.evaluate(convert(tiny, tmp_path / "t.mlpackage", precision), x)
    with torch.no_grad():
        expected = tiny(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= rel * np.abs(expected).max()


def test_bgr_input_is_fed_in_the_descriptions_channel_order(tiny, tmp_path):
    """Core ML hands a BGR model's program B, G, R: the evaluator takes RGB images and must do the same."""
    x = images()
    got = coreml_mil.evaluate(convert(tiny, tmp_path / "bgr.mlpackage", color="BGR"), x)
    with torch.no_grad():
        expected = tiny(torch.from_numpy(np.ascontiguousarray(x[:, ::-1]))).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_fp16_overflow_is_emulated(tmp_path):
    """x * 512 -> * 512 exceeds FP16's 65504 on its way to a finite answer: FP32 programs get it, FP16 gives inf."""

    class Scale(nn.Module):
        def forward(self, x):
            return ((x * 512.0) * 512.0).mean(dim=(2, 3)) / 262144.0

    x = images(1)
    fp32 = coreml_mil.evaluate(convert(Scale(), tmp_path / "a.mlpackage", "fp32"), x)
    fp16 = coreml_mil.evaluate(convert(Scale(), tmp_path / "b.mlpackage", "fp16"), x)
    assert np.isfinite(fp32).all() and np.allclose(fp32, x.mean(axis=(2, 3)), rtol=1e-5)
    assert not np.isfinite(fp16).all()


def _one_op(op, x, **kwargs):
    """A MIL function with one op on input x, evaluated by the evaluator; also the program (for coremltools' own
    constant-folded value where there is one)."""
    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(inp):
        return getattr(mb, op)(x=inp, **kwargs)

    function = prog.functions["main"]
    return coreml_mil.run_function(function, {"inp": x})[function.outputs[0].name]


@pytest.mark.parametrize("stride,pad_type,pad,dilation,groups", [
    (4, "valid", None, 1, 1), (4, "custom", [2, 2, 2, 2], 1, 1), (2, "custom", [1, 0, 3, 2], 1, 2),
    (1, "same", None, 1, 1), (2, "same", None, 1, 1), (2, "same_lower", None, 1, 1), (1, "valid", None, 2, 1)])
def test_numpy_conv_matches_mil_semantics(stride, pad_type, pad, dilation, groups):
    """MIL's conv is a cross-correlation like torch's; same pads (k - 1) evenly with the odd one after
    (same_lower: before), as coremltools' own pad computation (spec_utils / TF's SAME)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 11, 11)).astype(np.float32)
    w = rng.standard_normal((6, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    got = _one_op("conv", x, weight=w, bias=b, strides=[stride, stride], pad_type=pad_type, dilations=[dilation] * 2,
                  groups=groups, **({"pad": pad} if pad else {}))
    if pad_type == "custom":
        padded = np.pad(x, [(0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])])
    elif pad_type.startswith("same"):
        total = max((-(-11 // stride) - 1) * stride + 3 - 11, 0)
        small, large = total // 2, total - total // 2
        before, after = (small, large) if pad_type == "same" else (large, small)
        padded = np.pad(x, [(0, 0), (0, 0), (before, after), (before, after)])
    else:
        padded = x
    expected = F.conv2d(torch.from_numpy(padded), torch.from_numpy(w), torch.from_numpy(b), stride=stride,
                        dilation=dilation, groups=groups).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # coremltools' own shape inference agrees on the output size.
    assert got.shape == _conv_shape(x, w, stride, pad_type, pad, dilation, groups)


def _conv_shape(x, w, stride, pad_type, pad, dilation, groups):
    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(inp):
        return mb.conv(x=inp, weight=w, strides=[stride] * 2, pad_type=pad_type, dilations=[dilation] * 2,
                       groups=groups, **({"pad": pad} if pad else {}))
    return tuple(prog.functions["main"].outputs[0].shape)


def test_numpy_gelu_matches_coremltools_value_inference():
    """coremltools' exact GELU folds constants element by element; ours is vectorized: same values."""
    x = np.linspace(-8, 8, 2001, dtype=np.float32).reshape(1, -1)
    folded = mb_program_const_gelu(x)
    got = _one_op("gelu", x, mode="EXACT")
    np.testing.assert_allclose(got, folded, rtol=1e-6, atol=1e-6)
    # a new one needs its own test here (the weight decoders: test_weight_decoders_match_coremltools)
    assert set(NUMPY_OPS) == {"conv", "gelu", *DECODERS}
    assert {case.split()[0] for case in DECODER_CASES} == {"lut", "affine", "blockwise"} and len(DECODERS) == 3


# --- compressed weights: the evaluator's own decoders against coremltools' definitions -------------------------

_RNG = np.random.default_rng(3)


def _lut16(nbits):
    """iOS 16: one table, indices packed LSB first (coremltools' packer); (5, 7): 35 indices, so 6-bit ones
    straddle bytes and the last byte is partly padding."""
    from coremltools.optimize._utils import pack_elements_into_bits

    indices = _RNG.integers(0, 2 ** nbits, 35).astype(np.uint8)
    return mb.constexpr_lut_to_dense(indices=pack_elements_into_bits(indices, nbits),
                                     lut=_RNG.standard_normal(2 ** nbits).astype(np.float32),
                                     shape=np.array([5, 7], np.uint32))


def _lut18(nbits, groups, vector=1, vector_axis=None):
    """iOS 18: sub-byte indices of the output's shape, a table per block of (rows / groups[0], cols / groups[1])."""
    dtype = getattr(types, f"np_uint{nbits}_dtype")
    indices = _RNG.integers(0, 2 ** nbits, (8, 6)).astype(dtype)
    lut = _RNG.standard_normal((*groups, 2 ** nbits, vector)).astype(np.float32)
    return mb.constexpr_lut_to_dense(indices=indices, lut=lut,
                                     **({"vector_axis": np.int32(vector_axis)} if vector > 1 else {}))


def _affine(axis, per_axis):
    data = _RNG.integers(-128, 128, (6, 4)).astype(np.int8)
    n = data.shape[axis] if per_axis else 1
    return mb.constexpr_affine_dequantize(quantized_data=data, axis=np.int32(axis),
                                          zero_point=_RNG.integers(-3, 3, n).astype(np.int8).reshape(-1)[:n]
                                          if per_axis else np.int8(2),
                                          scale=(_RNG.random(n) + 0.1).astype(np.float32) if per_axis
                                          else np.float32(0.05))


def _blockwise(dtype, low, high, scale_shape, offset):
    data = _RNG.integers(low, high, (8, 6)).astype(dtype)
    kwargs = {"offset": _RNG.integers(low, high, scale_shape).astype(dtype)} if offset else {}
    return mb.constexpr_blockwise_shift_scale(data=data, scale=(_RNG.random(scale_shape) + 0.1).astype(np.float32),
                                              **kwargs)


DECODER_CASES = {
    "lut iOS16 2-bit": (ct.target.iOS16, (5, 7), lambda: _lut16(2)),
    "lut iOS16 4-bit": (ct.target.iOS16, (5, 7), lambda: _lut16(4)),
    "lut iOS16 6-bit": (ct.target.iOS16, (5, 7), lambda: _lut16(6)),
    "lut iOS18 4-bit per tensor": (ct.target.iOS18, (8, 6), lambda: _lut18(4, (1, 1))),
    "lut iOS18 4-bit grouped channels": (ct.target.iOS18, (8, 6), lambda: _lut18(4, (4, 1))),
    "lut iOS18 6-bit 2-D blocks": (ct.target.iOS18, (8, 6), lambda: _lut18(6, (2, 3))),
    "lut iOS18 2-bit vectors": (ct.target.iOS18, (8, 12), lambda: _lut18(2, (2, 1), 2, 1)),
    "affine iOS16 per channel": (ct.target.iOS16, (6, 4), lambda: _affine(0, True)),
    "affine iOS16 axis 1": (ct.target.iOS16, (6, 4), lambda: _affine(1, True)),
    "affine iOS16 per tensor": (ct.target.iOS16, (6, 4), lambda: _affine(1, False)),
    "blockwise iOS18 int4 blocks, offset": (ct.target.iOS18, (8, 6),
                                            lambda: _blockwise(types.np_int4_dtype, -8, 8, (8, 2), True)),
    "blockwise iOS18 uint4 blocks": (ct.target.iOS18, (8, 6),
                                     lambda: _blockwise(types.np_uint4_dtype, 0, 16, (4, 3), True)),
    "blockwise iOS18 int8 per channel": (ct.target.iOS18, (8, 6),
                                         lambda: _blockwise(np.int8, -128, 128, (8, 1), False)),
}


@pytest.mark.parametrize("case", DECODER_CASES)
def test_weight_decoders_match_coremltools(case, tmp_path, monkeypatch):
    """Each compressed-weight op, saved in a package and read back: the evaluator's own decoder (not coremltools')
    gives what coremltools' definition of the op (materialized_val_inference) gives, exactly."""
    import export.coreml_mil_ops as ops

    opset, shape, make = DECODER_CASES[case]

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=opset)
    def prog(x):
        return mb.add(x=x, y=make())

    (op,) = [o for o in prog.functions["main"].operations if o.op_type.startswith("constexpr_")]
    expected = np.asarray(op.materialized_val_inference(), np.float32)
    path = tmp_path / "w.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset,
               compute_precision=ct.precision.FLOAT32).save(str(path))
    loaded = coreml_mil.load(path)
    calls = []
    decoder = ops.NUMPY_OPS[op.op_type]
    monkeypatch.setitem(ops.NUMPY_OPS, op.op_type, lambda o, v: calls.append(o.op_type) or decoder(o, v))
    monkeypatch.setattr(type(op), "materialized_val_inference", None)  # coremltools' own may not be used
    got = coreml_mil.run_function(loaded.function, {loaded.input_name: np.zeros(shape, np.float32)})
    assert calls == [op.op_type]
    np.testing.assert_array_equal(got[loaded.output_name], expected)


def mb_program_const_gelu(x):
    @mb.program(input_specs=[], opset_version=ct.target.iOS17)
    def prog():
        return mb.gelu(x=x, mode="EXACT")
    return prog.functions["main"].outputs[0].val


# --- the bundled model through the pipeline, and faults injected into its saved program -----------------------


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`python -m export --target coreml` (the Quickstart), once for this module."""
    out = tmp_path_factory.mktemp("quickstart") / "out"
    code = run_cli("--target", "coreml", "--output", out)
    return code, out, load_manifest(out)


def test_quickstart_gets_numeric_parity(quickstart):
    code, out, manifest = quickstart
    (art,) = manifest["artifacts"]
    p = art["parity"]
    assert code == 0 and manifest["status"] == "pass"
    if sys.platform == "darwin":
        assert p["runtime"].startswith("Core ML") and "MIL evaluator (numpy, fp16-emulated)" in p["cross_checks"]
    else:
        assert p["runtime"] == art["info"]["runtime"] == "MIL evaluator (numpy, fp16-emulated)"
    assert p["status"] == "pass" and p["psnr_db"] >= 60 and p["top1_agreement"] == 1.0, p


def _reference(out):
    """The FP32 reference logits on the parity images, as the pipeline makes them."""
    from edge_crossformer import Normalized, create_model
    from export.prepare import SAMPLES

    m = load_manifest(out)
    inputs = parity.eight_bit(parity.parity_inputs(m["img_size"], m["input"]["resize"], 8, SAMPLES))
    reference = Normalized(create_model(m["model"], img_size=m["img_size"])).eval()
    return inputs, parity.reference_logits(reference, inputs)[0]


def _broken_copy(out, tmp_path, edit):
    """A copy of the Quickstart's package with `edit(ops_by_output_name, ops)` applied to its saved program."""
    (art,) = load_manifest(out)["artifacts"]
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(out / art["file"], broken)
    spec_file = broken / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = ct.utils.load_spec(str(broken))
    function = spec.mlProgram.functions["main"]
    ops = function.block_specializations[function.opset].operations
    edit({o.outputs[0].name: o for o in ops}, ops)
    spec_file.write_bytes(spec.SerializeToString())
    return broken


def _swap_transpose_axes(by_name, ops):
    """A transpose with two output axes of the same size gets them swapped: shapes still fit, values are wrong
    (the kind of slip a rewrite's Core ML spelling can make)."""
    for op in ops:
        if op.type != "transpose":
            continue
        dims = [d.constant.size for d in op.outputs[0].type.tensorType.dimensions]
        pairs = [(i, j) for i in range(len(dims)) for j in range(i + 1, len(dims)) if dims[i] == dims[j] > 1]
        perm = by_name[op.inputs["perm"].arguments[0].name].attributes["val"].immediateValue.tensor.ints.values
        if pairs:
            i, j = pairs[0]
            perm[i], perm[j] = perm[j], perm[i]
            return
    raise AssertionError("no transpose with two equal output axes in the program")


def _overflow_fp16(by_name, ops):
    """The image scale 1/255 becomes 30000/255: the normalized input leaves FP16's range (65504) and turns inf."""
    scale = by_name["image__scaled__"].inputs["y"].arguments[0].name
    values = by_name[scale].attributes["val"].immediateValue.tensor.floats.values
    values[0] = values[0] * 30000.0


@pytest.mark.parametrize("fault", [_swap_transpose_axes, _overflow_fp16])
def test_injected_fault_fails_the_gate(quickstart, tmp_path, fault):
    _, out, _ = quickstart
    inputs, expected = _reference(out)
    good = coreml_mil.evaluate(out / load_manifest(out)["artifacts"][0]["file"], inputs)
    assert parity.gate("coreml", "fp16", parity.compare(good, expected))[0] == "pass"
    bad = coreml_mil.evaluate(_broken_copy(out, tmp_path, fault), inputs)
    result = parity.compare(bad, expected)
    assert parity.gate("coreml", "fp16", result)[0] == "fail", result
    if fault is _overflow_fp16:
        assert not np.isfinite(bad).all()


def test_unknown_op_is_named_not_guessed(tmp_path, monkeypatch):
    """An op nobody defines: the artifact's parity says which op, instead of a crash or a silent pass."""
    import export.coreml_mil_ops as ops

    path = convert(Tiny(), tmp_path / "t.mlpackage")
    first = coreml_mil.load(path).compute_ops[0]
    assert first.op_type not in NUMPY_OPS
    undefined = type(first).value_inference  # pretend coremltools had left this one's value undefined
    monkeypatch.setattr(ops, "_base_value_inference", lambda: undefined)
    runner, reason = coreml_mil.runner(path)
    assert runner is None and first.op_type in reason and "NUMPY_OPS" in reason


def test_pte_with_ops_outside_the_delegate_says_why(tmp_path):
    """The evaluator runs a Core ML-delegate .pte only when the delegate is the whole program."""
    runner, reason = coreml_mil.pte_runner(tmp_path / "unread.pte", ops_outside=3)
    assert runner is None and "3 op(s) run outside the Core ML delegate" in reason
