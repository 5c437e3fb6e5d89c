"""Shared test helpers: seeded, perturbed weights so no parameter is trivially 0 or 1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, torch.get_num_threads()))


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter (LayerNorm weights leave 1, biases leave 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest |reference| logit (docs/parity.md's measure)."""
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def seeded_input():
    def make(size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return make


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Upstream-format checkpoints with seeded, perturbed weights, written once per session."""
    from edge_crossformer import build_model

    root = tmp_path_factory.mktemp("ckpt")
    made = {}

    def get(name: str, num_classes: int = 10) -> Path:
        key = (name, num_classes)
        if key not in made:
            model = perturb(build_model(name, num_classes=num_classes), seed=5)
            made[key] = root / f"{name}_{num_classes}.pth"
            torch.save({"model": model.state_dict()}, made[key])
        return made[key]

    return get


def run_cli(*args: str) -> int:
    """python -m export in-process; its exit code (argparse refusals included)."""
    from export.__main__ import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def load_manifest(out: Path) -> dict:
    import json

    return json.loads((out / "manifest.json").read_text())
