"""One MIL op on concrete values: coremltools' own numpy definition where it has one, a small numpy one where not.

coremltools' `value_inference` (and `materialized_val_inference` for constexpr_* / dequantize) reads its inputs as
`var.val`; for the duration of one call the input vars are given the values of this evaluation, then restored, so
the loaded program is left as it was. `NUMPY_OPS` holds the ops coremltools defines no usable numpy value for (conv
has none; its exact GELU is a per-element Python loop, minutes on CrossFormer-T); tests/test_coreml_mil.py compares
each with coremltools' semantics.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ValueOf = Callable[[object], np.ndarray]
# Ops whose numpy value coremltools computes in materialized_val_inference (not value_inference).
MATERIALIZED = ("dequantize",)


class _Held:
    """Stands in for a var's builtin value object: `var.val` / `var.sym_val` read `.val` from it."""
    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


class ConstCache:
    """Constant inputs as the evaluator computes with them: FP16 constants widened to float32 once (their values are
    exactly representable), so each use does not convert again."""

    def __init__(self):
        self._values: dict[int, np.ndarray] = {}
        self._folded: dict[int, tuple] = {}

    def folded(self, op, compute: Callable[[object], tuple]) -> tuple:
        """An op that reads constants only (constexpr_*: weights stored compressed), computed once."""
        if id(op) not in self._folded:
            self._folded[id(op)] = compute(op)
        return self._folded[id(op)]

    def get(self, var) -> np.ndarray:
        key = id(var)
        if key not in self._values:
            value = var.val
            if value is None:
                raise ValueError(f"the evaluator has no value for {var.name!r} (not a constant, not computed yet)")
            if isinstance(value, (np.bool_, bool)) or (isinstance(value, np.ndarray) and value.shape == ()
                                                      and value.dtype == np.bool_):
                value = bool(value)  # numpy 2 refuses np.bool_ where coremltools passes flags on (keepdims=)
            # Strings and Python scalars stay as coremltools gave them (its definitions expect that).
            is_fp16 = isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16
            self._values[key] = np.asarray(value, dtype=np.float32) if is_fp16 else value
        return self._values[key]


def run_op(op, value_of: ValueOf) -> tuple:
    """The op's output values (a tuple, one per output)."""
    own = NUMPY_OPS.get(op.op_type)
    if own is not None:
        out = own(op, value_of)
        if out is not NotImplemented:
            return out if isinstance(out, tuple) else (out,)
    if op.op_type.startswith("constexpr_") or op.op_type in MATERIALIZED:
        infer = op.materialized_val_inference
    elif type(op).value_inference is _base_value_inference():
        raise NotImplementedError(f"MIL op {op.op_type!r} ({op.name}) has no numpy definition in coremltools and "
                                  "none in export/coreml_mil_ops.py NUMPY_OPS; add one there, with a test")
    else:
        infer = op.value_inference
    with _values_held(op, value_of):
        out = infer()
    if out is None:
        raise ValueError(f"coremltools gave no value for MIL op {op.op_type!r} ({op.name})")
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def uncovered(ops) -> list[str]:
    """Op types among `ops` that neither coremltools nor NUMPY_OPS can compute."""
    return sorted({op.op_type for op in ops if op.op_type not in NUMPY_OPS and not op.op_type.startswith("constexpr_")
                   and op.op_type not in MATERIALIZED and type(op).value_inference is _base_value_inference()})


def _base_value_inference():
    from coremltools.converters.mil.mil.operation import Operation

    return Operation.value_inference


@contextlib.contextmanager
def _values_held(op, value_of: ValueOf):
    """Give the op's input vars this evaluation's values for one call, then put back what the program had."""
    saved = []
    try:
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else [value]:
                saved.append((var, var._sym_val))
                var._sym_val = _Held(value_of(var))
        yield
    finally:
        for var, original in reversed(saved):
            var._sym_val = original


def _opt(op, name: str, default):
    var = getattr(op, name, None)
    return default if var is None else var.val


def conv(op, value_of: ValueOf) -> np.ndarray:
    """2-D convolution with MIL's conv inputs (strides, pad_type valid/custom/same/same_lower, dilations, groups);
    cross-correlation like every framework's conv."""
    x, w = value_of(op.x), value_of(op.weight)
    if x.ndim != 4:
        raise NotImplementedError(f"conv {op.name}: the evaluator handles 2-D convolutions, got input rank {x.ndim}")
    strides = tuple(int(s) for s in _opt(op, "strides", (1, 1)))
    dilations = tuple(int(d) for d in _opt(op, "dilations", (1, 1)))
    groups = int(_opt(op, "groups", 1))
    reach = [d * (k - 1) + 1 for d, k in zip(dilations, w.shape[2:])]
    pads = conv_pads(str(_opt(op, "pad_type", "valid")), _opt(op, "pad", None), x.shape[2:], strides, reach)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    windows = sliding_window_view(x, reach, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]  # [N, C, Ho, Wo, kh, kw]
    cin, cout = w.shape[1], w.shape[0] // groups
    parts = [np.tensordot(windows[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout], axes=([1, 4, 5], [1, 2, 3]))
             for g in range(groups)]  # each [N, Ho, Wo, Cout / groups]
    out = np.concatenate(parts, axis=-1).transpose(0, 3, 1, 2)
    bias = getattr(op, "bias", None)
    return out + value_of(bias).reshape(1, -1, 1, 1) if bias is not None else out


def conv_pads(pad_type: str, pad, size, strides, reach) -> list[tuple[int, int]]:
    """(before, after) per spatial dim, as MIL's conv defines pad_type."""
    if pad_type == "valid":
        return [(0, 0)] * len(size)
    if pad_type == "custom":
        pad = [int(p) for p in pad]
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(size))]
    if pad_type not in ("same", "same_lower"):
        raise NotImplementedError(f"conv pad_type {pad_type!r}")
    pads = []
    for n, s, k in zip(size, strides, reach):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if pad_type == "same" else (large, small))
    return pads


# Abramowitz & Stegun 7.1.26: erf to within 1.5e-7 (absolute), below float32's resolution of GELU's output.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    """numpy has no erf; this one is vectorized (and keeps torch's thread pool out of the evaluation)."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + _ERF_P * z)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-z * z))


def gelu(op, value_of: ValueOf):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), vectorized (coremltools' definition loops over elements in Python:
    minutes on CrossFormer-T). Approximate modes: coremltools' own definitions."""
    if str(op.mode.val) != "EXACT":
        return NotImplemented
    x = value_of(op.x)
    return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)


# --- compressed weights (coremltools.optimize.coreml): decoded here from what the saved program stores ----------
# The constexpr ops' documented semantics (coremltools.converters.mil.mil.ops.defs iOS16.constexpr_ops and
# iOS18.compression), written here rather than borrowed: coremltools' own lut_to_dense repeats the whole table once
# per weight (a 64-entry table over CrossFormer-T's 2.4M-weight fc layers is 300 MB), and the evaluator's claim is
# that it decodes what ships. tests/test_coreml_mil.py checks each against coremltools' materialized value.


def lut_to_dense(op, value_of: ValueOf) -> np.ndarray:
    """Palettized weights: each weight an index into a look-up table.

    iOS 16: one table `lut` [2**nbits] for the tensor, `indices` packed nbits per weight, least significant bit
    first, into a flat uint8 array, `shape` the output's. iOS 18: `indices` has the output's shape (the loader
    unpacks sub-byte storage), `lut` [G0, .., Gr-1, 2**nbits, V] holds one table per block of the indices (block
    size along axis k: indices.shape[k] / G_k) and V-element vectors filled along `vector_axis`."""
    lut, indices = value_of(op.lut), value_of(op.indices)
    if "shape" in op.inputs:  # iOS 16
        nbits, shape = int(np.log2(lut.size)), tuple(int(d) for d in value_of(op.shape))
        count = int(np.prod(shape))
        bits = np.unpackbits(np.asarray(indices, np.uint8), bitorder="little")[:count * nbits].reshape(count, nbits)
        return lut[bits.astype(np.int32) @ (1 << np.arange(nbits, dtype=np.int32))].reshape(shape)
    indices = np.asarray(indices).astype(np.int64)
    group = np.zeros(indices.shape, np.int64)  # the table each weight reads: its block's flat index
    for axis, (n, g) in enumerate(zip(indices.shape, lut.shape[:-2])):
        block = np.arange(n) // (n // g)
        group = group * g + block.reshape([-1 if a == axis else 1 for a in range(indices.ndim)])
    palettes, vector = lut.shape[-2:]
    out = lut.reshape(-1, palettes, vector)[group, indices]  # indices.shape + (V,)
    if vector == 1:
        return out[..., 0]
    axis = int(value_of(op.vector_axis)) % indices.ndim
    shape = [d * vector if a == axis else d for a, d in enumerate(indices.shape)]
    return np.moveaxis(out, -1, axis + 1).reshape(shape)


def affine_dequantize(op, value_of: ValueOf) -> np.ndarray:
    """iOS 16 linear weights: scale * (quantized_data - zero_point), scale and zero point scalars or vectors along
    `axis`; the output in the scale's dtype."""
    data, scale, zero = value_of(op.quantized_data), value_of(op.scale), value_of(op.zero_point)
    axis = int(value_of(op.axis)) % data.ndim
    along = [-1 if a == axis else 1 for a in range(data.ndim)]
    scale, zero = (np.asarray(v).reshape(along if np.size(v) > 1 else [1] * data.ndim) for v in (scale, zero))
    return (data.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)


def blockwise_shift_scale(op, value_of: ValueOf) -> np.ndarray:
    """iOS 18 linear weights (int4 / int8, per channel or per block): scale * (data - offset), where `scale` and
    `offset` have the data's rank and each entry covers a block of data.shape / scale.shape elements."""
    data, scale = value_of(op.data), value_of(op.scale)
    offset = value_of(op.offset) if op.offset is not None else None

    def spread(v):
        for axis, (n, s) in enumerate(zip(data.shape, v.shape)):
            v = np.repeat(v, n // s, axis=axis) if n != s else v
        return v.astype(np.float32)

    shifted = data.astype(np.float32) - spread(offset) if offset is not None else data.astype(np.float32)
    return shifted * spread(scale)


NUMPY_OPS: dict[str, Callable] = {"conv": conv, "gelu": gelu, "constexpr_lut_to_dense": lut_to_dense,
                                  "constexpr_affine_dequantize": affine_dequantize,
                                  "constexpr_blockwise_shift_scale": blockwise_shift_scale}
# The decoders above: the compressed weight formats the evaluator reads itself (others: coremltools' definitions).
DECODERS = ("constexpr_lut_to_dense", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
