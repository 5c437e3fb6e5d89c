"""The input contract shared by the model, the exporters' manifests, the apps' golden file and the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """Wraps a model so it takes RGB float NCHW in [0, 1] and normalizes inside the graph (every artifact's input)."""

    def __init__(self, model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) * self.inv_std)


def input_contract(resize: dict, img_size: int) -> dict:
    """What every artifact takes, as the manifest states it to apps: an RGB float32 NCHW image in [0, 1] of
    img_size x img_size, resized and cropped as `resize` says (`CrossFormerConfig.resize_for`), normalized inside
    the model."""
    return {
        "name": "image", "shape": [1, 3, img_size, img_size], "layout": "NCHW", "dtype": "float32",
        "range": [0.0, 1.0], "color": "RGB",
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "applied": "in_model"},
        "resize": resize,
    }
