"""ExecuTorch weight compression (`--precision w8 / w4`, export.compression): torchao's 8-bit dynamic activations with
4-bit grouped / 8-bit per-channel weights on the linears, lowered by XNNPACK to its qd8-f32-qb4w / qd8-f32-qc8w
GEMMs, and what the `.pte`'s XNNPACK graph really holds.

XNNPACK has no weight-only path: a compressed linear's input is quantized to INT8 per row at run time (the
"dynamic" INT8 scheme's activations). Convolutions (the cross-scale stem and merges) stay float: torchao's config
quantizes linears only. Which layers stay 8-bit is the scheme's (edge_crossformer.compression); what XNNPACK got
is read back from the delegate in the file, not from the quantizer (tests/test_compression_executorch.py).
"""

from __future__ import annotations

import collections
import copy
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from .base import TargetContext, require

# XNNPACK's datatypes as its kernel names spell them (qd8-f32-qb4w: dynamically quantized INT8 input, f32 output,
# 4-bit blockwise weights).
KERNEL_TYPES = {"xnn_datatype_fp32": "f32", "xnn_datatype_qdint8": "qd8", "xnn_datatype_qbint4": "qb4w",
                "xnn_datatype_qcint4": "qc4w", "xnn_datatype_qcint8": "qc8w", "xnn_datatype_qint8": "qs8"}
GEMMS = {"XNNFullyConnected": "fully_connected", "XNNConv2d": "convolution", "XNNDepthwiseConv2d": "convolution"}
# The deployable wraps the export-friendly model (normalization in front): the scheme's roles name its paths.
PREFIX = "model."


def linear_paths(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def quantize_linears(ctx: TargetContext) -> tuple[nn.Module, dict[str, int]]:
    """A copy of the deployable with every linear's weights at the plan's bits (4-bit grouped, or 8-bit per output
    channel where the plan keeps them), its input quantized per row at run time; {module path: bits}."""
    quantization = require("torchao.quantization", "executorch")
    granularity = require("torchao.quantization.granularity", "executorch")
    plan = ctx.weights
    # A copy: the cached deployable serves the other targets of the same run.
    module = copy.deepcopy(ctx.deployable())
    bits = {path: 8 if plan.scheme.bits == 8 or plan.kept(path.removeprefix(PREFIX)) else plan.scheme.bits
            for path in linear_paths(module)}
    for width in sorted(set(bits.values())):
        config = quantization.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=getattr(torch, f"int{width}"),
            weight_granularity=(granularity.PerAxis(0) if width == 8 else granularity.PerGroup(plan.group_size)))
        quantization.quantize_(module, config, filter_fn=lambda m, path, w=width: bits.get(path) == w)
    return module, bits


def compressed_program(ctx: TargetContext, example: torch.Tensor):
    """The torch.export program of the compressed deployable; {module path: bits} of its linears."""
    module, bits = quantize_linears(ctx)
    with torch.no_grad():
        return torch.export.export(module, (example,)), bits


def xnnpack_graphs(pte: bytes) -> list[dict]:
    """Each XNNPACK delegate's graph in a `.pte`, as flatc decodes it against XNNPACK's schema. ExecuTorch has no
    public reader for it: these are its own serializer's helpers (private, pinned with executorch==1.5.1)."""
    program = require("executorch.exir._serialize._program", "executorch")
    flatbuffer = require("executorch.exir._serialize._flatbuffer", "executorch")
    serialize = require("executorch.backends.xnnpack.serialization.xnnpack_graph_serialize", "executorch")
    decoded = program.deserialize_pte_binary(pte).program
    plan = decoded.execution_plan[0]
    graphs = []
    for delegate in plan.delegates:
        if delegate.id != "XnnpackBackend":
            continue
        blob = bytes(decoded.backend_delegate_data[delegate.processed.index].data)
        header = serialize.XNNHeader.from_bytes(blob[:serialize.XNNHeader.EXPECTED_LENGTH])
        start = header.flatbuffer_offset
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "schema.fbs").write_bytes(serialize._get_schema_bytes())
            Path(tmp, "graph.bin").write_bytes(blob[start:start + header.flatbuffer_size])
            flatbuffer._flatc_decompile(tmp, str(Path(tmp, "schema.fbs")), str(Path(tmp, "graph.bin")))
            graphs.append(json.loads(Path(tmp, "graph.json").read_text()))
    return graphs


def xnnpack_gemms(pte: bytes) -> dict[str, int]:
    """The GEMMs XNNPACK runs, by kernel kind: `fully_connected qd8-f32-qb4w`, `convolution f32`, ... (input, output,
    weight datatypes, as XNNPACK names its microkernels), counted over every XNNPACK delegate in the file."""
    found: collections.Counter = collections.Counter()
    for graph in xnnpack_graphs(pte):
        types = {}
        for value in graph["xvalues"]:
            tensor = value["xvalue_union"].get("tensor_value", value["xvalue_union"])
            types[tensor["id_out"]] = KERNEL_TYPES.get(tensor["datatype"], tensor["datatype"])
        for node in graph["xnodes"]:
            op = GEMMS.get(node["xnode_union_type"])
            if op:
                fields = node["xnode_union"]
                kinds = [types[fields[key]] for key in ("input1_id", "output_id", "filter_id")]
                kind = "f32" if set(kinds) == {"f32"} else "-".join(kinds)
                found[f"{op} {kind}"] += 1
    return dict(sorted(found.items()))


def record(ctx: TargetContext, bits: dict[str, int], pte: bytes) -> dict:
    """The manifest's `compression` for the `.pte`: the plan's, with what XNNPACK's graph in the file holds."""
    plan = ctx.weights
    gemms = xnnpack_gemms(pte)
    low = f"fully_connected qd8-f32-{'qb4w' if plan.scheme.bits == 4 else 'qc8w'}"
    eight = "fully_connected qd8-f32-qc8w"
    return plan.record(gemms.get(low, 0), gemms.get(eight, 0) if plan.scheme.bits != 8 else 0,
                       xnnpack_gemms=gemms, activations="INT8, per row at run time (XNNPACK has no weight-only path)",
                       linears_kept_8bit=sorted(p.removeprefix(PREFIX) for p, b in bits.items()
                                                if b == 8 and plan.scheme.bits != 8),
                       float_weights=[name.removeprefix(PREFIX) for name, m in ctx.deployable().named_modules()
                                      if isinstance(m, nn.Conv2d)],
                       float_weights_why="convolutions (stem, merges): torchao's config quantizes linears only")
