"""ONNX as a format: torch.onnx export (dynamo) without the exporting machine's source paths, and graph facts.
Shared by the targets that go through ONNX (ONNX itself; OpenVINO for a range of sizes)."""

from __future__ import annotations

import torch

from .base import require

# 20: GELU is one `Gelu` node (ONNX Runtime runs it as one kernel) instead of Div / Erf / Add / Mul / Mul.
OPSET = 20

# Node metadata torch.onnx records: the Python stack (file paths and line numbers of the exporting checkout).
SOURCE_METADATA = ("pkg.torch.onnx.stack_trace",)


def without_source_paths(model):
    """The model without the exporting machine's source paths and line numbers in its node metadata: the same model
    exported from another checkout or machine gives the same bytes, and the file does not carry local paths."""
    for node in model.graph.node:
        kept = [prop for prop in node.metadata_props if prop.key not in SOURCE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def to_onnx(module, example, dynamic, names: list[str], path):
    """torch.onnx (dynamo) export to `path`, without source paths; returns the loaded ModelProto."""
    onnx = require("onnx", "onnx")
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, input_names=["image"],
                                    output_names=names, dynamic_shapes=dynamic, verbose=False, optimize=True)
    program.save(str(path))
    return without_source_paths(onnx.load(str(path)))


def max_rank(model) -> int:
    """Highest tensor rank in the graph after ONNX shape inference (symbolic sizes count as dims)."""
    onnx = require("onnx", "onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return max(len(v.type.tensor_type.shape.dim) for v in values if v.type.HasField("tensor_type"))
