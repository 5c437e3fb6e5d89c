"""Hyper-parameters of every registered CrossFormer / CrossFormer++ variant.

Values follow upstream's `configs/crossformer/*.yaml` and `configs/crossformer_pp/*.yaml` (main branch), with the
defaults those files inherit from upstream's `config.py` (interval [8, 4, 2, 1], MLP ratio 4, qkv bias).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Cross-scale embedding: four kernels sharing stride 4 in the stem; two kernels sharing stride 2 at each merge.
PATCH_SIZES: tuple[int, ...] = (4, 8, 16, 32)
MERGE_SIZES: tuple[tuple[int, ...], ...] = ((2, 4), (2, 4), (2, 4))


@dataclass(frozen=True)
class CrossFormerConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    # G per stage: one group holds G x G tokens (SDA: adjacent; LDA: sampled every `interval` tokens).
    group_size: tuple[int, ...]
    # I per stage: LDA stride. main keeps it fixed and pads the token grid to a multiple of G * I.
    interval: tuple[int, ...] = (8, 4, 2, 1)
    patch_size: tuple[int, ...] = PATCH_SIZES
    merge_size: tuple[tuple[int, ...], ...] = MERGE_SIZES
    # CrossFormer++ activation cooling layer: depthwise 3x3 conv + LayerNorm after every third block.
    use_acl: bool = False
    mlp_ratio: float = 4.0
    in_chans: int = 3
    family: str = "crossformer"
    # Where a variant ships its own weights (the bundled model); None for upstream variants.
    bundled_checkpoint: str | None = None
    default_img_size: int = 224
    default_num_classes: int = 1000
    labels_file: str | None = None
    resize: dict = field(default_factory=lambda: {"size": 256, "crop": 224, "interpolation": "bicubic"})
    # Group sizes and intervals of the detection / segmentation backbone where they differ from the classifier's:
    # upstream's CrossFormer++ backbones (detection/ and segmentation/ configs) use G 7 and I (8, 4, 2, 1).
    backbone_group_size: tuple[int, ...] | None = None
    backbone_interval: tuple[int, ...] | None = None

    def with_(self, **changes) -> "CrossFormerConfig":
        return replace(self, **changes)

    def backbone(self) -> "CrossFormerConfig":
        """This variant as a detection / segmentation backbone (same parameters, possibly other groups)."""
        return replace(self, group_size=self.backbone_group_size or self.group_size,
                       interval=self.backbone_interval or self.interval)

    def resize_for(self, img_size: int | None = None) -> dict:
        """How a photo is resized before it enters the model at `img_size` (the crop ratio is kept)."""
        spec = dict(self.resize)
        if img_size is not None and spec["crop"] != img_size:
            ratio = spec["crop"] / spec["size"]
            spec = {**spec, "size": int(round(img_size / ratio)), "crop": img_size}
        return spec


_CF = dict(group_size=(7, 7, 7, 7), family="crossformer")
_CFPP = dict(group_size=(4, 4, 14, 7), interval=(4, 2, 1, 1), use_acl=True, family="crossformer++",
             backbone_group_size=(7, 7, 7, 7), backbone_interval=(8, 4, 2, 1))

VARIANTS: dict[str, CrossFormerConfig] = {
    "crossformer-t": CrossFormerConfig(64, (1, 1, 8, 6), (2, 4, 8, 16), **_CF),
    "crossformer-s": CrossFormerConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), **_CF),
    "crossformer-b": CrossFormerConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), **_CF),
    "crossformer-l": CrossFormerConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), **_CF),
    "crossformerpp-s": CrossFormerConfig(64, (2, 2, 18, 2), (2, 4, 8, 16), **_CFPP),
    "crossformerpp-b": CrossFormerConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), **_CFPP),
    "crossformerpp-l": CrossFormerConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), **_CFPP),
    "crossformerpp-h": CrossFormerConfig(128, (6, 6, 18, 2), (4, 8, 16, 32), **_CFPP),
    # Bundled model trained on Fashion-MNIST (28x28 gray, resized to 32x32 RGB). 8x8 tokens in stage 1 with
    # G=4, I=2 and 4x4 in stage 2 with G=2, I=2, so short- and long-distance attention are both active there.
    # Small enough (1.7 M parameters) to ship in the repository as an FP16 safetensors file.
    "crossformer-fmnist": CrossFormerConfig(
        embed_dim=32, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), group_size=(4, 2, 2, 1), interval=(2, 2, 1, 1),
        family="crossformer", bundled_checkpoint="crossformer_fmnist.safetensors", default_img_size=32,
        default_num_classes=10, labels_file="crossformer_fmnist_labels.txt",
        resize={"size": 32, "crop": 32, "interpolation": "bilinear"},
    ),
}
