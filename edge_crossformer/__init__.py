"""edge-crossformer: CrossFormer / CrossFormer++ from a PyTorch checkpoint to phones and edge CPUs."""

from .checkpoint import CheckpointError, LoadReport
from .config import VARIANTS, CrossFormerConfig
from .export_friendly import ExportFriendlyCrossFormer, Spelling, fold_position_bias, strip_position_mlp
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Normalized
from .reference import CrossFormer
from .registry import ModelConfigError, build_model, create_model, deployable, get_config, list_models

__all__ = [
    "CheckpointError", "CrossFormer", "CrossFormerConfig", "ExportFriendlyCrossFormer", "IMAGENET_MEAN",
    "IMAGENET_STD", "LoadReport", "ModelConfigError", "Normalized", "Spelling", "VARIANTS", "build_model", "create_model",
    "deployable",
    "fold_position_bias", "get_config", "list_models", "strip_position_mlp",
]
__version__ = "0.1.0"
