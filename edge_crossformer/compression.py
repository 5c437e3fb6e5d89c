"""Weight compression schemes (`--precision w8 / w4 / palette4 / palette6`): one description of each, read by the
command line's help, validation, every target that runs it, the parity gate and the manifest.

A scheme says what happens to the weights only; which targets run it is the registry's (`Target.precisions`,
edge_crossformer.targets), and how each runtime spells it is the target module's (e.g. NNCF `compress_weights` for
OpenVINO, ONNX Runtime's MatMulNBits for ONNX). Layers are named by *role*: a regular expression over the
export-friendly model's module paths (`layers.2.blocks.0.mlp.fc1`), which each target maps onto its own node names.

Importing this module imports nothing else of the project (the registry reads it from below).
"""

from __future__ import annotations

from dataclasses import dataclass

# Layer roles, as regular expressions over module paths of the export-friendly model (edge_crossformer.export_friendly;
# the deployable folds the position-bias MLPs into constants, so only these weights remain). "{last}" is the index
# of the last stage.
ROLES: dict[str, str] = {
    "patch_embed": r"^patch_embed\.",       # the cross-scale stem: 3 input channels, kernels up to 32x32
    "merges": r"^layers\.\d+\.downsample\.",  # the cross-scale patch merging convolutions between stages
    "first_stage": r"^layers\.0\.blocks\.",
    "last_stage": r"^layers\.{last}\.blocks\.",
    "head": r"^head$",
}


@dataclass(frozen=True)
class WeightScheme:
    # The --precision value.
    name: str
    bits: int
    # "linear": integers with a scale (and zero point) per channel or group; "palette": each weight an index into a
    # look-up table of 2**bits values (k-means), Core ML only.
    kind: str
    # How many weights share a scale (linear) or a table (palette), in words.
    granularity: str
    # Input channels per scale for grouped linear schemes (--group-size overrides it); None: per output channel.
    group_size: int | None
    # Roles (ROLES) kept at 8-bit weights by default, and why (by measurement: docs/compression.md).
    keep_8bit: tuple[str, ...]
    keep_8bit_why: str
    # What is never compressed, whatever the scheme: why it stays float.
    stays_float: str
    # The parity gate (docs/parity.md): most top-1 points lost on labelled held-out images, and the least top-1
    # agreement with the FP32 reference (issue 30's targets: 8-bit weights <= 0.2 pp, 4-bit <= 1 pp).
    max_drop_pp: float
    min_top1_agreement: float
    # For a model without labelled images of its own, judged on the parity inputs: the lowest cosine of its logits
    # with the FP32 reference's (top-1 agreement is recorded there, not gated: near-tied logits flip). It catches a
    # broken compression (cosine far below), not a fine drop: seeded random CrossFormer-T weights, 4-bit, measured
    # 0.971 and 0.987 (docs/parity.md).
    min_cosine: float
    # One line for --help.
    summary: str

    @property
    def help(self) -> str:
        return self.summary.format(group_size=self.group_size)

    @property
    def grouped(self) -> bool:
        return self.group_size is not None

    def record(self, group_size: int | None = None) -> dict:
        """The scheme as the manifest records it (a target adds what it compressed and kept: compression.layers)."""
        return {"scheme": self.name, "bits": self.bits, "kind": self.kind, "granularity": self.granularity,
                "group_size": group_size if self.grouped and group_size else self.group_size,
                "kept_8bit_roles": list(self.keep_8bit), "kept_8bit_why": self.keep_8bit_why,
                "stays_float": self.stays_float}


FLOAT_PARTS = ("biases, LayerNorm parameters, the folded position biases and activations: a few thousand values that "
               "every output depends on, and (activations) computed in float by weight-only runtimes")

WEIGHT_SCHEMES: dict[str, WeightScheme] = {s.name: s for s in (
    WeightScheme("w8", 8, "linear", "per output channel, symmetric", None, (), "nothing needs more than 8 bits",
                 FLOAT_PARTS, max_drop_pp=0.2, min_top1_agreement=0.99, min_cosine=0.999,
                 summary="8-bit weights (per output channel), float activations (ExecuTorch: INT8 per row at run "
                         "time, XNNPACK has no weight-only path)"),
    WeightScheme("w4", 4, "linear", "per group of input channels, symmetric", 32,
                 ("patch_embed", "merges", "first_stage", "head"),
                 "the stem and merges are convolutions (no runtime here runs 4-bit convolutions: NNCF and ONNX "
                 "Runtime keep them 8-bit anyway); the first stage at 8 bits raised top-1 agreement with FP32 on "
                 "crossformer-fmnist from 99.35 % to 99.76 % for 1 % more bytes, and the head is one layer "
                 "(docs/compression.md)",
                 FLOAT_PARTS, max_drop_pp=1.0, min_top1_agreement=0.97, min_cosine=0.95,
                 summary="4-bit weights in groups of --group-size input channels (default {group_size}), stem / merges / "
                         "first stage / head at 8 bits, float activations (ExecuTorch: INT8 per row at run time; its "
                         "convolutions stay float)"),
    WeightScheme("palette6", 6, "palette", "one 64-entry table per weight tensor", None, (), "",
                 FLOAT_PARTS, max_drop_pp=0.5, min_top1_agreement=0.98, min_cosine=0.98,
                 summary="Core ML: 6-bit palettized weights (64-entry k-means table per tensor)"),
    WeightScheme("palette4", 4, "palette", "one 16-entry table per weight tensor", None, ("patch_embed", "head"),
                 "a 16-value table is coarse for the stem's wide kernels and the head",
                 FLOAT_PARTS, max_drop_pp=1.0, min_top1_agreement=0.97, min_cosine=0.95,
                 summary="Core ML: 4-bit palettized weights (16-entry k-means table per tensor)"),
)}
WEIGHT_PRECISIONS = tuple(WEIGHT_SCHEMES)
# --max-accuracy-drop with compressed weights keeps the units 4 bits hurt most at 8 bits (quantize.weights): what a
# scheme below 8 bits can trade. 8-bit weights have nothing left to trade but float, which their runtimes' weight
# formats do not mix in.
SEARCHABLE_WEIGHTS = tuple(name for name, s in WEIGHT_SCHEMES.items() if s.bits < 8)
# --precision int8+SCHEME: static INT8 activations with compressed weights, where a target can do both.
COMBINED_PRECISIONS = tuple(f"int8+{name}" for name, s in WEIGHT_SCHEMES.items() if s.bits < 8)
# --group-size: powers of two in this range (ONNX Runtime's MatMulNBits takes powers of two >= 16).
GROUP_SIZES = tuple(2 ** i for i in range(4, 9))


def weight_scheme(precision: str) -> WeightScheme | None:
    """The weight scheme a precision compresses with (`w4`, `int8+w4` -> w4), or None (fp32 / fp16 / int8)."""
    return WEIGHT_SCHEMES.get(precision.removeprefix("int8+"))


def is_compressed(precision: str) -> bool:
    return weight_scheme(precision) is not None


def role_patterns(roles: tuple[str, ...], stages: int) -> tuple[str, ...]:
    """The module-path regular expressions of `roles` for a model with `stages` stages."""
    return tuple(ROLES[role].replace("{last}", str(stages - 1)) for role in roles)


def linear_in_features(cfg, roles_kept: tuple[str, ...]) -> dict[str, int]:
    """Input channels of each stage's token linears (qkv / proj / fc1: the stage's width; fc2: the MLP's), for the
    stages whose blocks a grouped scheme compresses: what --group-size must divide."""
    stages = len(cfg.depths)
    skipped = {0} if "first_stage" in roles_kept else set()
    skipped |= {stages - 1} if "last_stage" in roles_kept else set()
    found = {}
    for i in range(stages):
        if i not in skipped:
            width = cfg.embed_dim * 2 ** i
            found[f"stage {i + 1} qkv / proj / fc1"] = width
            found[f"stage {i + 1} fc2"] = int(width * cfg.mlp_ratio)
    return found
