"""Which kind of work a profiled node is (GEMM, attention, norm, ...): the one grouping every runtime's per-node
profile goes through, so that an OpenVINO, an ONNX Runtime and an ExecuTorch profile stack up the same way."""

from __future__ import annotations

# In plotting order (bottom of the stacked bar first).
KINDS = ("gemm", "attention", "norm", "activation", "elementwise", "reorder", "transpose", "other")
LABELS = {"gemm": "GEMM (linear, conv)", "attention": "attention (q@k, softmax, @v)", "norm": "norm",
          "activation": "activation", "elementwise": "elementwise (residual add, mul)",
          "reorder": "reorder / (re)quantize / convert", "transpose": "transpose / data movement",
          "other": "other"}

# Op types per kind: OpenVINO CPU plugin node types (PERF_COUNT's node_type), ONNX Runtime op names (its profiler's
# op_name, after its own fusions) and ExecuTorch operator / delegate names. MatMul is decided by its operands (below).
_TYPES = {
    "gemm": {"FullyConnected", "FullyConnectedQuantizedLegacy", "FullyConnectedQuantized", "Convolution", "GroupConvolution", "Deconvolution", "Gemm", "QGemm", "FusedGemm",
             "Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcConv", "QLinearMatMul", "MatMulInteger",
             "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedMatMul", "MatMulNBits",
             "aten.linear.default", "aten.convolution.default", "aten.addmm.default", "aten.mm.default"},
    "attention": {"ScaledDotProductAttention", "Softmax", "SoftmaxCrossEntropy", "Attention", "MultiHeadAttention",
                  "QAttention", "aten._softmax.default", "aten.bmm.default"},
    "norm": {"MVN", "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
             "SkipSimplifiedLayerNormalization", "BatchNormalization", "NormalizeL2", "RMS", "RMSNorm",
             "aten.native_layer_norm.default"},
    "activation": {"Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf", "Relu", "Sigmoid", "Tanh", "Swish", "HSwish",
                   "Clamp", "aten.gelu.default"},
    "elementwise": {"Eltwise", "Add", "Mul", "Sub", "Div", "Pow", "Sqrt", "Where", "QLinearAdd",
                    "QLinearMul", "aten.add.Tensor", "aten.mul.Tensor"},
    "reorder": {"Reorder", "Convert", "Cast", "FakeQuantize", "QuantizeLinear", "DequantizeLinear",
                "DynamicQuantizeLinear", "MemoryCopy", "quantized_decomposed.quantize_per_tensor.default",
                "quantized_decomposed.dequantize_per_tensor.default"},
    "transpose": {"Transpose", "Concatenation", "Concat", "Split", "VariadicSplit", "Slice", "StridedSlice", "Pad",
                  "Gather", "GatherElements", "Roll", "DepthToSpace", "SpaceToDepth", "Tile", "Broadcast",
                  "Expand", "Interpolate", "aten.permute_copy.default", "aten.cat.default",
                  "aten.slice_copy.Tensor", "aten.constant_pad_nd.default", "aten.clone.default"},
}
_KIND_OF = {op: kind for kind, ops in _TYPES.items() for op in ops}
# XNNPACK operator names as ExecuTorch's ETDump reports them ("Fully Connected (NC, QD8, F32, QC8W) GEMM #12"): the
# words before the parenthesis. LayerNorm reaches XNNPACK decomposed (mean, subtract, mean of squares, rsqrt, multiply,
# add): the reductions and the rsqrt count as norm, its subtract / multiply / add as elementwise.
_XNNPACK = {"Fully Connected": "gemm", "Convolution": "gemm", "Deconvolution": "gemm",
            "Dynamic Fully Connected": "gemm",
            "Batch Matrix Multiply": "attention", "Softmax": "attention", "GELU": "activation", "Tanh": "activation",
            "Sigmoid": "activation", "Clamp": "activation", "Add": "elementwise", "Multiply": "elementwise",
            "Subtract": "elementwise", "Divide": "elementwise", "Mean": "norm", "Mean Squared": "norm",
            "Reciprocal Square Root": "norm", "Square Root": "norm", "Convert": "reorder", "Copy": "transpose",
            "Slice": "transpose", "Transpose": "transpose", "Concatenate": "transpose", "Constant Pad": "transpose",
            "Even Split": "transpose"}
# Reshapes and shape arithmetic cost nothing on the CPU runtimes; they fall in "other" with anything unnamed.


def kind_of(op_type: str, weight_operand: bool | None = None, name: str = "") -> str:
    """The kind of one profiled node. `weight_operand`: for a MatMul, whether its second operand is a constant weight
    (a linear layer, GEMM) or an activation (attention's q @ k^T and @ v); None when the profile cannot tell (then
    GEMM: the runtimes turn the linears, the bulk of the MACs, into MatMul when they do not call them
    FullyConnected / Gemm). `name`: OpenVINO's fused `Subgraph` (snippets) is attention when the plugin fused an
    attention block into it (it is named after a matmul, a softmax or a node of an attention module), elementwise
    otherwise."""
    if op_type in ("MatMul", "aten.matmul.default"):
        return "attention" if weight_operand is False else "gemm"
    if op_type == "Subgraph":
        lowered = name.lower()
        return "attention" if any(k in lowered for k in ("matmul", "softmax", "attn", "attention")) else "elementwise"
    if op_type in _KIND_OF:
        return _KIND_OF[op_type]
    return _XNNPACK.get(op_type.split(" (")[0].strip(), "other")


def xnnpack_kernel(event: str) -> str:
    """An XNNPACK operator event without its instance number: 'Fully Connected (NC, QD8, F32, QC8W) GEMM'."""
    head, _, tail = event.rpartition(" #")
    return head if head and tail.isdigit() else event


def by_kind(nodes: list[dict]) -> dict[str, float]:
    """Node milliseconds summed per kind, every kind present (0.0 where none ran), in KINDS order."""
    out = dict.fromkeys(KINDS, 0.0)
    for node in nodes:
        out[node["kind"]] += node["ms"]
    return {k: round(v, 4) for k, v in out.items()}


def by_kernel(nodes: list[dict], top: int = 12) -> list[dict]:
    """The kernels the runtime picked, heaviest first: [{kernel, kind, ms, nodes}] (kernel = the runtime's own name,
    e.g. OpenVINO's exec type `brgemm_avx512_I8`; ONNX Runtime reports its op, not the MLAS routine)."""
    totals: dict[tuple[str, str], list[float]] = {}
    for node in nodes:
        entry = totals.setdefault((node["kernel"], node["kind"]), [0.0, 0])
        entry[0] += node["ms"]
        entry[1] += 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"kernel": k, "kind": kind, "ms": round(ms, 4), "nodes": n} for (k, kind), (ms, n) in ranked]
