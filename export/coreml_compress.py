"""Core ML's spelling of the weight schemes (edge_crossformer.compression): coremltools.optimize.coreml on the
converted ML program, and what the saved program then holds.

`palette4` / `palette6`: k-means look-up tables (`palettize_weights`), one table per weight tensor: the iOS 16 op
(constexpr_lut_to_dense); per-grouped-channel tables (iOS 18) measured no better on crossformer-fmnist
(docs/compression.md). `w8`: int8 per output channel (`linear_quantize_weights`, constexpr_affine_dequantize,
iOS 16). `w4`: int4 in blocks of `group_size` input channels (constexpr_blockwise_shift_scale, iOS 18). Layers the
plan keeps at 8 bits get the scheme kind's 8-bit form (a 256-entry table, or int8 per channel), so one coremltools
pass writes the whole program.

Which weights: those of the model's convolutions and linears, found by name (torch.export names a parameter
`p_<path with . as _>`; coremltools adds `_to_fp16` when it casts). Biases, LayerNorm parameters and the folded
position-bias constants are not module weights and stay float (WeightScheme.stays_float).

What was compressed is read back from the saved program (compressed_weights: the op that makes each conv / linear
weight), never taken from the request: a weight coremltools skipped (channels a block does not divide) shows up as
float.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from torch import nn

from .base import require
from .compression import WeightPlan

# (iOS, macOS) release each compressed weight op first loads on; a program is raised to the highest it holds.
OP_RELEASE = {"constexpr_lut_to_dense": ("iOS16", "macOS13"), "constexpr_affine_dequantize": ("iOS16", "macOS13"),
              "constexpr_blockwise_shift_scale": ("iOS18", "macOS15")}
# The project's Core ML baseline (export/coreml_target.convert): ML programs for iOS 17 / macOS 14.
BASELINE = ("iOS17", "macOS14")


@dataclass(frozen=True)
class CoreMLForm:
    """How Core ML writes one scheme: the coremltools pass, its config at the scheme's bits and at 8 bits, and the
    deployment target the program must be converted for."""
    release: tuple[str, str]
    palette: bool

    def configs(self, plan: WeightPlan):
        cto = require("coremltools.optimize.coreml", "coreml")
        bits = plan.scheme.bits
        if self.palette:
            return (cto.OpPalettizerConfig(nbits=bits, mode="kmeans", granularity="per_tensor", weight_threshold=0),
                    cto.OpPalettizerConfig(nbits=8, mode="kmeans", granularity="per_tensor", weight_threshold=0))
        int8 = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                           weight_threshold=0)
        if bits == 8:
            return int8, int8
        return (cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=f"int{bits}", granularity="per_block",
                                            block_size=plan.group_size, weight_threshold=0), int8)

    def words(self, plan: WeightPlan) -> str:
        """The coremltools call, for the manifest."""
        if self.palette:
            return f"palettize_weights, k-means, {plan.scheme.bits}-bit, one table per tensor (8-bit where kept)"
        if plan.scheme.bits == 8:
            return "linear_quantize_weights, int8 symmetric per output channel"
        return (f"linear_quantize_weights, int{plan.scheme.bits} symmetric per block of {plan.group_size} input "
                "channels (int8 per output channel where kept)")


def form(plan: WeightPlan) -> CoreMLForm:
    """Per-tensor palettes and int8 per channel run from iOS 16 (the iOS 17 baseline covers them); int4 blocks need
    iOS 18's constexpr_blockwise_shift_scale."""
    if plan.scheme.kind == "palette":
        return CoreMLForm(BASELINE, palette=True)
    return CoreMLForm(BASELINE if plan.scheme.bits == 8 else OP_RELEASE["constexpr_blockwise_shift_scale"], False)


def weight_names(model: nn.Module) -> dict[str, str]:
    """{name of the weight constant in the ML program: the export-friendly model's module path} for every conv and
    linear weight of the deployable (`model` is Normalized(...): its `model.` prefix is dropped from the path)."""
    names = {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            const = "p_" + f"{path}.weight".replace(".", "_")
            names[const] = names[f"{const}_to_fp16"] = path.removeprefix("model.")
    return names


def compress(mlmodel, plan: WeightPlan, model: nn.Module):
    """The converted ML program with its conv / linear weights compressed by `plan` (the plan's kept roles at 8
    bits), as a new MLModel."""
    cto = require("coremltools.optimize.coreml", "coreml")
    low, eight = form(plan).configs(plan)
    paths = weight_names(model)
    program = mlmodel.get_spec().mlProgram
    present = [op.outputs[0].name for f in program.functions.values() for block in f.block_specializations.values()
               for op in block.operations if op.type == "const" and op.outputs[0].name in paths]
    if not present:
        raise RuntimeError("no conv / linear weight of the model was found by name in the converted ML program; "
                           "export/coreml_compress.weight_names no longer matches coremltools' constant names")
    config = cto.OptimizationConfig(op_name_configs={name: eight if plan.kept(paths[name]) else low
                                                     for name in present})
    run = cto.palettize_weights if form(plan).palette else cto.linear_quantize_weights
    return run(mlmodel, config)


def weight_bits(op) -> int | None:
    """Bits per weight a compressed-weight op stores (None: not one)."""
    if op.op_type == "constexpr_lut_to_dense":
        return int(math.log2(op.lut.shape[-2] if "shape" not in op.inputs else op.lut.shape[0]))
    if op.op_type == "constexpr_affine_dequantize":
        return 8
    if op.op_type == "constexpr_blockwise_shift_scale":
        from coremltools.converters.mil.mil import types

        return int("".join(c for c in types.builtin_to_string(op.data.dtype) if c.isdigit()))  # int4 / uint8 ...
    return None


def compressed_weights(function) -> dict[str, collections.Counter]:
    """From a saved program's function: {"bits": conv / linear weights stored per bit width ("16": float), "ops":
    the compressed-weight op kinds that store them}, read from the op that makes each conv / linear weight."""
    bits, ops = collections.Counter(), collections.Counter()
    for op in function.operations:
        if op.op_type not in ("conv", "linear"):
            continue
        source = op.weight.op
        width = weight_bits(source) if source is not None else None
        bits[str(width or 16)] += 1
        if width:
            ops[source.op_type] += 1
    return {"bits": bits, "ops": ops}


def release(ops) -> tuple[str, str]:
    """The first (iOS, macOS) that loads every compressed-weight op kind in `ops` and the project's baseline."""
    found = [OP_RELEASE[op] for op in ops if op in OP_RELEASE] + [BASELINE]
    return max(found, key=lambda r: int(r[0].removeprefix("iOS")))
