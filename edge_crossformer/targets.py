"""The target registry: everything the tool knows about a target, in one `Target` entry each.

Every other table of targets (the command line's choices, precisions and defaults, the sizes each serves, the
spelling each use of the model takes, install hints, parity gates, benchmark runtimes, QAT schemes) is derived
from `TARGETS`. Adding a target means its module (`export(ctx)` and `load_runner(path, threads)`), one entry here,
its pip extra, its tests and README lines (README, "Adding a target"). Importing this module imports no converter
or runtime, and nothing of `quantize` or `export`: both read it from below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from .compression import COMBINED_PRECISIONS, GROUP_SIZES, WEIGHT_PRECISIONS
from .export_friendly import Spelling

# fp32 / fp16 / int8, the weight-compression schemes (edge_crossformer.compression: w8, w4, palette4, palette6) and
# INT8 activations with compressed weights (int8+w4, ...). A target offers those its `precisions` list.
PRECISIONS = ("fp32", "fp16", "int8", *WEIGHT_PRECISIONS, *COMBINED_PRECISIONS)
# How many sizes one artifact serves: one (fixed), every multiple of 32 in a range from one graph with symbolic H
# and W (range), or a list with one entry point per size (list: ExecuTorch methods, Core ML functions).
SIZE_MODES = ("fixed", "range", "list")
# The x86 CPU levels an INT8 export can be made for (`--cpu`; edge_crossformer.host.cpu_level): "avx2" (no VNNI:
# u8 x s8 products summed through pmaddubsw + pmaddwd) and "vnni" (AVX-512 VNNI / AVX-VNNI / AMX: 32-bit sums).
CPUS = ("avx2", "vnni")


@dataclass(frozen=True)
class Target:
    name: str
    # Its module: `export(ctx) -> [Artifact]` and `load_runner(path, threads=None) -> run(x) -> logits`.
    module: str
    # Packages the export imports (checked before any work) and the pip extra that installs them.
    packages: tuple[str, ...]
    extra: str
    pins: str
    # What it exports (PRECISIONS); a weight scheme or int8+scheme only where its runtime runs the weights compressed.
    precisions: tuple[str, ...]
    default_precision: str
    # How messages name it.
    title: str
    # FP32 parity gate: max |artifact - reference| / max |reference| (docs/parity.md).
    fp32_gate: float
    # How the export-friendly model spells its ops for this runtime, and how QAT spells it for this target's scheme
    # (same state dict: no inference-only folds).
    spelling: Spelling
    qat_spelling: Spelling
    # Its INT8 scheme (export/schemes.py), which QAT simulates too (quantize.qat): "nncf" (nncf.quantize on the
    # runtime's own graph) or "xnnpack" (NNCF's quantize_pt2e with XNNPACK's quantizer on the torch.export graph).
    int8_scheme: str
    # INT8 activation schemes: "static" (calibrated ranges) and, where the runtime has it, "dynamic" (per row at
    # run time).
    int8_activations: tuple[str, ...] = ("static",)
    # Packages a compressed-weight export imports besides `packages` (checked before any work).
    weight_packages: tuple[str, ...] = ()
    # Exports INT8 with the activation ranges an XNNPACK-scheme QAT run learned, when the checkpoint has them.
    uses_learned_ranges: bool = False
    # Can export a batch dimension chosen at run time (--dynamic-batch).
    dynamic_batch: bool = False
    # x86 INT8 kernels that sum u8 x s8 pairs in int16 on CPUs without VNNI (export/saturation.py).
    x86_pair_sums: bool = False
    # INT8 per x86 CPU level (`--cpu`, CPUS): (level, node-name patterns its INT8 keeps float there), for the layers
    # whose INT8 kernels on that level are slower than the runtime's FP32 ones (profiles: docs/performance/isa.md).
    # A level not listed gets INT8 everywhere; a target with none has one INT8 for every CPU.
    cpu_keep_float: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The runtime that runs its artifact here (benchmarks' key and display name), or None where none can (Core ML
    # needs macOS); the delegate of the artifact that runtime runs; the module that loads the runtime.
    runtime: str | None = None
    runtime_name: str = ""
    runtime_delegate: str | None = None
    runtime_module: str | None = None
    # The runtime computes an FP32 artifact in BF16 when told to (OpenVINO's precision hint, on CPUs with BF16):
    # parity uses f32, the latency benchmark times both.
    bf16_hint: bool = False
    # Files written per parameter, relative to one file (free-space check before an export).
    files_per_param: float = 1.0
    # The size modes its artifacts serve (SIZE_MODES).
    size_modes: tuple[str, ...] = ("fixed",)
    # The spelling for a range of sizes, where it differs from `spelling`.
    range_spelling: Spelling | None = None
    # Artifacts lowered to another runtime's delegate inside this one's program, and the spelling each delegate
    # takes (ExecuTorch's Core ML delegate runs Core ML: Core ML's spelling).
    delegate_spellings: tuple[tuple[str, Spelling], ...] = ()
    # --group-size values its runtime takes where it takes fewer than edge_crossformer.compression.GROUP_SIZES, and
    # why (refused before any work, export.compression).
    group_sizes: tuple[int, ...] = ()
    group_sizes_why: str = ""
    # FP16 top-1 agreement gate where it is stricter than export.parity's FP16_TOP1 (docs/parity.md).
    fp16_top1: float | None = None

    def backend(self) -> ModuleType:
        return importlib.import_module(self.module)

    def load_runner(self, path, threads: int | None = None, **options):
        """The artifact on its runtime, as `run(x: [1, 3, S, S] float32 in [0, 1]) -> logits` (parity, accuracy and
        latency all load through this); `options` are the runtime's own (OpenVINO: precision_hint)."""
        return self.backend().load_runner(path, threads, **options)

    @property
    def install_hint(self) -> str:
        return f"pip install 'edge-crossformer[{self.extra}]'  ({self.pins})"

    def supports(self, precision: str) -> bool:
        return precision in self.precisions

    def serves(self, size_mode: str) -> bool:
        return size_mode in self.size_modes

    def spelling_for(self, size_mode: str = "fixed") -> Spelling:
        """How the exported model spells its ops for this target at a size mode."""
        return self.range_spelling if size_mode == "range" and self.range_spelling else self.spelling

    def keep_float_on(self, cpu_level: str | None) -> tuple[str, ...]:
        """What this target's INT8 keeps float for an x86 CPU level (--cpu; CPUS); nothing without one."""
        return dict(self.cpu_keep_float).get(cpu_level, ()) if cpu_level else ()

    def spelling_for_delegate(self, delegate: str) -> Spelling:
        return dict(self.delegate_spellings)[delegate]


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("coreml", "export.coreml_target", ("coremltools",), "coreml", "coremltools==9.0",
           title="Core ML", precisions=("fp16", "fp32", "int8", "w8", "w4", "palette4", "palette6"),
           default_precision="fp16", fp32_gate=1e-3,
           spelling=Spelling(), qat_spelling=Spelling(decompose_layernorm=True), int8_scheme="xnnpack",
           runtime_name="Core ML", fp16_top1=1.0, size_modes=("fixed", "list")),
    Target("executorch", "export.executorch_target", ("executorch", "coremltools"), "executorch", "executorch==1.5.1",
           title="ExecuTorch", precisions=("fp32", "int8", "w8", "w4"), default_precision="fp32", fp32_gate=1e-3,
           group_sizes=tuple(g for g in GROUP_SIZES if g % 32 == 0),
           group_sizes_why="XNNPACK's 4-bit blockwise GEMMs need a multiple of 32 input channels per scale",
           spelling=Spelling(decompose_layernorm=True), qat_spelling=Spelling(decompose_layernorm=True),
           int8_scheme="xnnpack", int8_activations=("static", "dynamic"),
           uses_learned_ranges=True,
           runtime="executorch", runtime_name="ExecuTorch", runtime_delegate="xnnpack",
           runtime_module="executorch.runtime", files_per_param=1.5, size_modes=("fixed", "list"),
           delegate_spellings=(("xnnpack", Spelling(decompose_layernorm=True)), ("coreml", Spelling()))),
    Target("openvino", "export.openvino_target", ("openvino",), "openvino", "openvino, nncf",
           title="OpenVINO", precisions=("fp32", "fp16", "int8", "w8", "w4"), default_precision="fp32", fp32_gate=1e-3,
           weight_packages=("nncf",),
           # 4-D attention: the CPU plugin fuses it into one (INT8) attention kernel, CrossFormer-T 224 INT8 measured
           # 9% faster than the 3-D bmm spelling; LayerNorm affine folded into the next linears (README, Performance).
           spelling=Spelling(matmul_4d=True, fold_norms=True), qat_spelling=Spelling(), int8_scheme="nncf",
           x86_pair_sums=True, bf16_hint=True,
           # AVX2: oneDNN runs INT8 FullyConnected layers as jit_gemm_I8 (its brgemm INT8 kernels need VNNI), slower
           # than the FP32 FullyConnected kernels (MLAS, brgemm_avx2_f32): the linears stay float there.
           cpu_keep_float=(("avx2", (r".*/aten::linear/MatMul.*",)),),
           runtime="openvino", runtime_name="OpenVINO CPU", runtime_module="openvino", size_modes=("fixed", "range"),
           # 3-D attention for a range: with the 4-D spelling and symbolic sizes, the CPU plugin's fused attention
           # failed its broadcast shape inference on the in-graph mask (docs/backbone.md).
           range_spelling=Spelling(matmul_4d=False, fold_norms=True)),
    Target("onnx", "export.onnx_target", ("onnx", "onnxruntime", "onnxscript"), "onnx", "onnx, onnxruntime, onnxscript",
           title="ONNX", precisions=("fp32", "int8", "w8", "w4"), default_precision="fp32", fp32_gate=1e-4,
           spelling=Spelling(flat_linears=True), qat_spelling=Spelling(), int8_scheme="nncf", x86_pair_sums=True,
           dynamic_batch=True, size_modes=("fixed", "range"),
           runtime="onnxruntime", runtime_name="ONNX Runtime", runtime_module="onnxruntime"),
    Target("litert", "export.litert_target", ("litert_torch", "ai_edge_litert"), "litert",
           "litert-torch==0.10.0, ai-edge-litert==2.3.0",
           title="LiteRT", precisions=("fp32", "fp16", "int8"), default_precision="fp32", fp32_gate=1e-4,
           # The converter writes LayerNorm as MEAN / RSQRT ops whichever way it comes; decomposed here, the INT8
           # graph is ExecuTorch's (one calibration serves both) and the file has fewer ops (docs/litert.md).
           spelling=Spelling(decompose_layernorm=True), qat_spelling=Spelling(decompose_layernorm=True),
           int8_scheme="xnnpack",
           runtime="litert", runtime_name="LiteRT (XNNPACK CPU)", runtime_module="ai_edge_litert"),
)}
# The quantizer every INT8 export runs (not a target of its own).
QUANTIZER = ("nncf", "int8", "nncf")


def get(name: str) -> Target:
    """The target called `name`; an unknown name is a clear error listing the known ones."""
    if name not in TARGETS:
        raise KeyError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def spelling_for_scheme(scheme: str) -> Spelling:
    """The spelling an INT8 scheme's own tools (keep-float search, sensitivity) work on: that of the first target
    exporting with it whose runtime runs here (for "xnnpack", the graph ExecuTorch lowers)."""
    using = [t for t in TARGETS.values() if t.int8_scheme == scheme]
    if not using:
        raise KeyError(f"no target uses the INT8 scheme '{scheme}'")
    return next((t for t in using if t.runtime), using[0]).spelling


def schemes() -> tuple[str, ...]:
    """The INT8 schemes targets use, in registry order."""
    return tuple(dict.fromkeys(t.int8_scheme for t in TARGETS.values()))


def install_hint(package: str) -> str:
    """How to install a package a target (or INT8) imports."""
    if package == QUANTIZER[0]:
        return f"pip install 'edge-crossformer[{QUANTIZER[1]}]'  ({QUANTIZER[2]})"
    for target in TARGETS.values():
        if package in target.packages:
            return target.install_hint
    return f"pip install {package}"


def by_runtime(runtime: str) -> Target:
    """The target whose artifacts a benchmark runtime runs (e.g. 'onnxruntime' -> onnx)."""
    for target in TARGETS.values():
        if target.runtime == runtime:
            return target
    raise KeyError(f"no target runs on runtime '{runtime}'")


def runnable() -> tuple[Target, ...]:
    """Targets whose artifacts a runtime on this kind of host runs (benchmarks, accuracy)."""
    return tuple(t for t in TARGETS.values() if t.runtime is not None)


def packages() -> tuple[str, ...]:
    """Every package a target or INT8 imports, once, in registry order (the manifest records their versions)."""
    found = [package for target in TARGETS.values() for package in target.packages] + [QUANTIZER[0]]
    return tuple(dict.fromkeys(found))


def titles(where=None) -> str:
    """Target titles for messages, e.g. 'OpenVINO / ONNX'."""
    return " / ".join(target.title for target in TARGETS.values() if where is None or where(target))


def names(where=None) -> tuple[str, ...]:
    """Target names, all or those where `where(target)` holds (e.g. `lambda t: t.x86_pair_sums`)."""
    return tuple(name for name, target in TARGETS.items() if where is None or where(target))
