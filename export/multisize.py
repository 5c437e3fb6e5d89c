"""One artifact, several input sizes, for detection / segmentation backbones (issue #16): an ExecuTorch `.pte` with one
method per size, and a Core ML multifunction `.mlpackage` with one function per size.

Why one program per size rather than one dynamic program (measured in docs/multisize.md):
- XNNPACK: the dynamic-size backbone (padding and mask computed from the input's shape) lowers into 133 delegate
  pieces with 235 ops left outside (views, slices, `full` and the shape arithmetic between them), while each
  fixed-size program lowers whole into one delegate. ExecuTorch's multi-method `.pte` stores the weights once, so three
  sizes cost 2.4 % more bytes than one.
- Core ML: `save_multifunction` keeps one copy of weights the functions share (3 sizes: 3.9 MB against 3 x 3.8 MB),
  and each function is a static-shape program, what the Neural Engine wants (rank <= 4, no gather).

Names: a size's method / function is `method_name(h, w)`, e.g. `forward_64x96`.
"""

from __future__ import annotations

import shutil
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from . import coreml_mil
from .base import require
from .coreml_mil_ops import ConstCache, uncovered
from .coreml_target import mil_structure
from .executorch_target import delegate_count, outside_delegate

Size = tuple[int, int]
WEIGHTS_DIR = ("Data", "com.apple.CoreML", "weights")


def method_name(h: int, w: int) -> str:
    """The ExecuTorch method / Core ML function serving [1, 3, h, w]."""
    return f"forward_{h}x{w}"


def fixed_backbone(model: str, size: Size, spelling, checkpoint=None) -> torch.nn.Module:
    """The export-friendly backbone at one size, taking [1, 3, H, W] in [0, 1] (normalization inside)."""
    from edge_crossformer import Normalized, create_model
    from edge_crossformer.export_friendly import strip_position_mlp

    net = create_model(model, checkpoint=checkpoint, features_only=True, export_friendly=True, img_size=size,
                       spelling=spelling)
    return Normalized(strip_position_mlp(net)).eval()


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


# --- ExecuTorch XNNPACK -----------------------------------------------------------------------------------------

def lower_xnnpack_sizes(modules_or_programs: Sequence, sizes: Sequence[Size]):
    """One edge program manager with a method per size, every method lowered to XNNPACK.
    `.to_executorch().buffer` is the `.pte`; ExecuTorch stores constants once, so the weights are shared."""
    exir = require("executorch.exir", "executorch")
    partition = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
    programs = export_sizes(modules_or_programs, sizes)
    return exir.to_edge_transform_and_lower(programs, partitioner=[partition.XnnpackPartitioner()])


def lower_xnnpack_dynamic(module: torch.nn.Module, low: int, high: int):
    """The route not taken, kept to re-measure it: one program for every side in [low, high] (multiples of 32)."""
    exir = require("executorch.exir", "executorch")
    partition = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
    h32 = torch.export.Dim("h32", min=low // 32, max=high // 32)
    w32 = torch.export.Dim("w32", min=low // 32, max=high // 32)
    with torch.no_grad():
        program = torch.export.export(module, (torch.rand(1, 3, low, low),),
                                      dynamic_shapes=({2: 32 * h32, 3: 32 * w32},))
    return exir.to_edge_transform_and_lower(program, partitioner=[partition.XnnpackPartitioner()])


def delegation(edge) -> dict[str, dict]:
    """Per method: XNNPACK delegate pieces and the histogram of compute ops left outside them."""
    report = {}
    for name in edge.methods:
        program = edge.exported_program(name)
        report[name] = {"delegates": delegate_count(program), "outside": outside_delegate(program)}
    return report


def save_pte(edge, path: str | Path) -> int:
    """Write the `.pte`; its size in bytes."""
    data = edge.to_executorch().buffer
    Path(path).write_bytes(data)
    return len(data)


def pte_runner(path: str | Path, method: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """One method of a `.pte` on ExecuTorch's runtime: [1, 3, H, W] float32 in [0, 1] -> the stage maps."""
    runtime = require("executorch.runtime", "executorch")
    from edge_crossformer.util import captured_native_stderr

    with captured_native_stderr():  # the C++ runtime's cpuinfo chatter on fd 2
        program = runtime.Runtime.get().load_program(str(path))
    if method not in program.method_names:
        raise KeyError(f"{Path(path).name} has no method {method!r}; it has {sorted(program.method_names)}")
    loaded = program.load_method(method)

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [out.numpy() for out in loaded.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])]

    return run


# --- Core ML ------------------------------------------------------------------------------------------------------

def convert_coreml(module_or_program, size: Size, precision: str = "fp16", names: Sequence[str] | None = None):
    """One size as an ML program: RGB image input `image` (scale 1/255), outputs `names` (default stage1..stageN),
    iOS 17."""
    ct = require("coremltools", "coreml")
    (program,) = export_sizes([module_or_program], [size]).values()
    names = list(names or [f"stage{i + 1}" for i in range(len(program.graph_signature.user_outputs))])
    return ct.convert(
        program.run_decompositions({}),
        inputs=[ct.ImageType(name="image", shape=(1, 3, *size), scale=1.0 / 255.0, color_layout=ct.colorlayout.RGB)],
        outputs=[ct.TensorType(name=name, dtype=np.float32) for name in names],
        convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)


def save_coreml_multifunction(models: Mapping[str, object], path: str | Path, work_dir: str | Path) -> Path:
    """{function name: MLModel} -> one `.mlpackage`, the first function the default. coremltools combines saved
    packages (written to `work_dir`) and stores weights the functions share once. The package's spec is version 9:
    multifunction models load on iOS 18 / macOS 15 and later, whatever each function's own target."""
    ct = require("coremltools", "coreml")
    desc = ct.utils.MultiFunctionDescriptor()
    for name, mlmodel in models.items():
        single = Path(work_dir) / f"{name}.mlpackage"
        mlmodel.save(str(single))
        desc.add_function(str(single), src_function_name="main", target_function_name=name)
    desc.default_function_name = next(iter(models))
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    ct.utils.save_multifunction(desc, str(path))
    return path


def coreml_functions(path: str | Path) -> dict[str, object]:
    """{function name: MIL function} read back from the saved package (spec + weight blob), as coreml_mil.load does
    for single-function packages."""
    ct = require("coremltools", "coreml")
    from coremltools.converters.mil.frontend.milproto import load as milproto

    spec = ct.utils.load_spec(str(path))
    program = milproto.load(spec, spec.specificationVersion, str(Path(path).joinpath(*WEIGHTS_DIR)))
    return dict(program.functions)


def coreml_structure(path: str | Path) -> dict[str, dict]:
    """mil_structure (op histogram, max rank, gather ops) of each function of a saved package."""
    # mil_structure walks `mlmodel._mil_program.functions`; hand it one function at a time.
    return {name: mil_structure(types.SimpleNamespace(_mil_program=types.SimpleNamespace(functions={name: fn})))
            for name, fn in coreml_functions(path).items()}


def coreml_runner(path: str | Path, function: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """One function of a saved package through the MIL evaluator (export/coreml_mil.py): [1, 3, H, W] float32 in
    [0, 1] -> the stage maps, fed as the 8-bit RGB image Core ML would hand the program."""
    functions = coreml_functions(path)
    if function not in functions:
        raise KeyError(f"{Path(path).name} has no function {function!r}; it has {sorted(functions)}")
    program, consts = functions[function], ConstCache()
    missing = uncovered([op for op in program.operations if op.op_type not in coreml_mil.CONST_OPS])
    if missing:
        raise NotImplementedError(f"the MIL evaluator has no numpy definition for MIL op(s) {', '.join(missing)}")
    (image,) = program.inputs

    def run(x: np.ndarray) -> list[np.ndarray]:
        outs = coreml_mil.run_function(program, {image: coreml_mil.pixels(x, "RGB")}, consts)
        return [np.asarray(outs[var.name], np.float32) for var in program.outputs]

    return run
