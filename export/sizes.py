"""The sizes an artifact serves, and everything derived from them: entry-point names, the size torch.export traces
at, symbolic dims, the sizes parity checks, the size dispatch of a list artifact, output names and the images
INT8 calibrates on.

Size modes (edge_crossformer.targets.SIZE_MODES): one size (`--img-size`), every multiple of 32 in a range from one
graph (`--dynamic-size MIN MAX`: symbolic H and W) or a list with one entry point per size (`--sizes HxW ...`: one
ExecuTorch method / Core ML function each, docs/multisize.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edge_crossformer import get_config
from edge_crossformer.backbone import output_specs

from .request import ExportError, ExportRequest

Size = tuple[int, int]


def method_name(h: int, w: int) -> str:
    """The ExecuTorch method / Core ML function serving [1, 3, h, w]."""
    return f"forward_{h}x{w}"


def example_size(dynamic_size: tuple[int, int]) -> Size:
    """The size a range is traced at: non-square (so H and W stay two symbols) and inside the range."""
    low, high = dynamic_size
    if low == high:
        raise ExportError(f"--dynamic-size {low} {high} is one size: use --img-size {low} {high}")
    return low, low + 32


def dynamic_shapes(req: ExportRequest) -> tuple[dict, ...] | None:
    """torch.export's dims for the image's H and W: multiples of 32 within --dynamic-size, or None for one size."""
    if req.dynamic_size is None:
        return None
    low, high = req.dynamic_size
    h = torch.export.Dim("h_32", min=low // 32, max=high // 32)
    w = torch.export.Dim("w_32", min=low // 32, max=high // 32)
    return ({2: 32 * h, 3: 32 * w},)


def output_names(req: ExportRequest) -> list[str]:
    """The artifact's output names: `logits`, or a backbone's maps `stage1`..`stage4` (those asked for)."""
    if req.task == "classify":
        return ["logits"]
    return [spec["name"] for spec in output_specs(get_config(req.model).backbone(), req.out_indices, None)]


def parity_sizes(req: ExportRequest) -> list[Size]:
    """Where an artifact is checked: its one size, each of a list, or for a range its ends, squares, non-squares
    and sizes that need padding at every stage (at least 10 when the range has them)."""
    if req.sizes is not None:
        return list(req.sizes)
    if req.dynamic_size is None:
        return [tuple(req.img_hw)]
    low, high = req.dynamic_size
    mid = (low + high) // 64 * 32
    odd = [v for v in range(low, high + 1, 32) if (v // 32) % 2]  # odd stage-4 grids: padded everywhere
    picks = [(low, low), (high, high), (low, high), (high, low), (mid, mid), (low, mid), (mid, high),
             (low + 32, low), (high - 32, high)]
    picks += [(odd[0], odd[-1]), (odd[len(odd) // 2], odd[len(odd) // 2])] if odd else []
    inside = [(h, w) for h, w in picks if low <= h <= high and low <= w <= high]
    return list(dict.fromkeys(inside))


def size_dispatch(runners: dict[Size, Callable]) -> Callable:
    """One runner for an artifact with an entry point per size: picks it by the input's H x W."""
    def run(x: np.ndarray):
        hw = tuple(x.shape[-2:])
        if hw not in runners:
            raise ValueError(f"input {hw[0]}x{hw[1]} is not one of the artifact's sizes "
                             f"({', '.join(f'{h}x{w}' for h, w in runners)}); resize to one of them")
        return runners[hw](x)

    return run


def export_sizes(modules_or_programs: Sequence, sizes: Sequence[Size]) -> dict[str, torch.export.ExportedProgram]:
    """{method_name: ExportedProgram}, one per size; modules are exported at their size, programs kept as given."""
    if len(modules_or_programs) != len(sizes):
        raise ValueError(f"{len(modules_or_programs)} modules / programs for {len(sizes)} sizes: give one per size")
    if len(set(map(tuple, sizes))) != len(sizes):
        raise ValueError(f"sizes {list(sizes)} repeat a size; each size is one method, give each once")
    programs = {}
    for item, (h, w) in zip(modules_or_programs, sizes):
        if not isinstance(item, torch.export.ExportedProgram):
            with torch.no_grad():
                item = torch.export.export(item, (torch.rand(1, 3, h, w),))
        # A program exported at another size would run under a wrong name: its method must be its size.
        got = tuple(_image_input(item).shape[-2:])
        if got != (h, w):
            raise ValueError(f"the program for {method_name(h, w)} was exported at "
                             f"{got[0]}x{got[1]}, not {h}x{w}; pass modules and sizes in the same order")
        programs[method_name(h, w)] = item
    return programs


def _image_input(program: torch.export.ExportedProgram):
    """The example value of the program's one user input (the image)."""
    user = set(program.graph_signature.user_inputs)
    (node,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    return node.meta["val"]


def resize_spec(req: ExportRequest) -> dict:
    """How apps must resize a photo before it enters the model: the classifier's eval resize (upstream: bicubic,
    crop ratio 0.875); a backbone's images are resized to H x W without a crop, as detectors feed them."""
    if req.task == "classify":
        return get_config(req.model).resize_for(req.img_size)
    side = max(req.dynamic_size or req.img_hw)
    return {"size": side, "crop": side, "interpolation": "bilinear"}


def int8_images(images: torch.Tensor, hw: Size) -> torch.Tensor:
    """Calibration / held-out images (loaded square) resized to the backbone's H x W, 8-bit like every input."""
    resized = F.interpolate(images.float(), size=tuple(hw), mode="bilinear", align_corners=False).clamp(0, 1)
    return torch.round(resized * 255) / 255


def calibration_arrays(images: torch.Tensor, req: ExportRequest) -> list[np.ndarray]:
    """Batch-1 calibration arrays at the backbone's size; for a range, spread over `parity_sizes` (one graph
    serves them all: calibrated at one size only, the smallest lost most: docs/backbone.md)."""
    sizes = parity_sizes(req)
    return [int8_images(images[i:i + 1], sizes[i % len(sizes)]).numpy().astype(np.float32)
            for i in range(len(images))]
