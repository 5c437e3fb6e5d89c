"""The layers a diagnosis compares, and their values on the torch side.

A "point" is a module of the exported model whose output is compared: the stem, every block and its parts (norm1,
attn, norm2, mlp, CrossFormer++'s ex_conv / ex_ln), every merge, the final norm and the head, then the logits. Paths
are the module paths of the deployable model (`model.layers.1.blocks.0.mlp`), which are the faithful reference's
paths too (same parameter names), and which the converters keep in their own ways (ONNX name scopes, OpenVINO
friendly names, torch.export's nn_module_stack).

Expected values come from forward hooks on the deployable model (the export-friendly model in the target's spelling:
exactly what was exported, same layouts as the artifact's tensors); the faithful reference is hooked too and compared
where both hold the same [B, L, C] tensor (the "rewrite" column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

# Module paths compared, relative to the deployable's root (Normalized wraps the network as `model`).
POINT = re.compile(r"^model\.(patch_embed|norm|head|layers\.\d+\.downsample|layers\.\d+\.blocks\.\d+"
                   r"(\.(norm1|attn|norm2|mlp|ex_conv|ex_ln))?)$")
OUTPUT = "output"
# Where the rewrite keeps the reference's layout (the tokens between blocks): compared with the faithful model.
SHARED_LAYOUT = re.compile(r"^model\.(patch_embed|norm|head|layers\.\d+\.downsample|layers\.\d+\.blocks\.\d+)$")


def display(path: str) -> str:
    """'model.layers.1.blocks.0.mlp' -> 'layers.1.blocks.0.mlp' (what reports show)."""
    return path[len("model."):] if path.startswith("model.") else path


def block_of(path: str) -> str | None:
    """The block (or stem / merge / norm / head) a point belongs to: 'layers.1.blocks.0' for its parts."""
    m = re.match(r"^(model\.)?(layers\.\d+\.blocks\.\d+|layers\.\d+\.downsample|patch_embed|norm|head)", path)
    return m.group(2) if m else None


@dataclass
class Capture:
    """Per point (in the order the forward pass produced them): one array per input, batch 1 each."""
    order: list[str]
    values: dict[str, list[np.ndarray]]
    # Who called each module (module path -> caller's path): a child called from outside its parent's forward (the
    # OpenVINO spelling projects attention after the merge) does not belong to the parent's output.
    caller: dict[str, str] = field(default_factory=dict)

    def stacked(self, path: str) -> np.ndarray:
        return np.stack(self.values[path])


@torch.no_grad()
def capture(model: nn.Module, inputs: np.ndarray) -> Capture:
    """Run `model` on each input (batch 1, as artifacts run) with hooks on every point."""
    names = {id(m): name for name, m in model.named_modules()}
    points = [(name, m) for name, m in model.named_modules() if POINT.match(name)]
    values: dict[str, list[np.ndarray]] = {}
    order: list[str] = []
    caller: dict[str, str] = {}
    stack: list[str] = []

    def pre(module, args):
        name = names[id(module)]
        if stack and name not in caller:
            caller[name] = stack[-1]
        stack.append(name)

    def post(module, args, out):
        stack.pop()

    def record(name):
        def hook(module, args, out):
            if name not in values:
                values[name] = []
                order.append(name)
            values[name].append(out.detach().float().cpu().numpy().copy())
        return hook

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    handles += [m.register_forward_hook(record(name)) for name, m in points]
    try:
        model.eval()
        outputs = [model(torch.from_numpy(inputs[i:i + 1])).float().numpy() for i in range(len(inputs))]
    finally:
        for h in handles:
            h.remove()
    values[OUTPUT] = outputs
    order.append(OUTPUT)
    return Capture(order, values, caller)


def owns(capture: Capture, point: str, path: str) -> bool:
    """Whether an op recorded under module `path` computes part of `point`'s output: `path` is the point or a
    module that the point's forward called (directly or further down)."""
    while path:
        if path == point:
            return True
        path = capture.caller.get(path, "")
    return False


@dataclass
class Metrics:
    rel: float      # max |got - ref| / max |ref|, over every input
    cosine: float   # lowest per-input cosine
    max_abs: float

    def as_dict(self) -> dict:
        return {"rel": self.rel, "cosine": self.cosine, "max_abs": self.max_abs}


def aligned(got: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """`got` in `ref`'s shape when it holds the same values in the same order (views, squeezed batch dims), else
    None. Layout changes that reorder values (NHWC vs NCHW) are not guessed here: the taps pick the op whose
    output is in the module's own layout."""
    got = np.asarray(got)
    if got.shape == ref.shape:
        return got
    if got.size == ref.size:
        return got.reshape(ref.shape)
    return None


def compare(got: list[np.ndarray], ref: list[np.ndarray]) -> Metrics:
    """Per-point error over every input (each pair already aligned)."""
    g = np.concatenate([np.asarray(x, np.float64).ravel() for x in got])
    r = np.concatenate([np.asarray(x, np.float64).ravel() for x in ref])
    peak = float(np.abs(r).max()) if r.size else 0.0
    max_abs = float(np.abs(g - r).max()) if r.size else 0.0
    if not np.isfinite(g).all():
        max_abs = float("inf")
    cosines = []
    for a, b in zip(got, ref):
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cosines.append(float(a @ b / denom) if denom > 0 and np.isfinite(denom) else (1.0 if not a.any() and
                                                                                        not b.any() else 0.0))
    return Metrics(max_abs / peak if peak else max_abs, min(cosines), max_abs)
