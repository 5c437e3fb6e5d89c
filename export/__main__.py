"""python -m export --target {coreml,executorch,openvino,onnx,all} [options]; python -m export SUBCOMMAND ..."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edge_crossformer.cli import (MAX_IMAGES, MAX_IMG_SIZE, MAX_NUM_CLASSES, float_in, int_in, percentage_points, regex, run_cli,
                                  hw_size, side)

from edge_crossformer import targets
from edge_crossformer.compression import GROUP_SIZES
from edge_crossformer.targets import CPUS, PRECISIONS

from . import arm_setup, diagnose
from .pipeline import run_export
from .request import DEFAULT_MODEL, INT8_ACTIVATIONS, MAX_PARITY_SAMPLES, ExportError, ExportRequest, parse_targets
from .compression import describe
from .validate import validate


# `python -m export NAME ...`: NAME's own command line, given the arguments after NAME; (its main, one line of help).
SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "diagnose": (diagnose.main, "where an export's artifacts depart from the model, layer by layer, on each "
                                "artifact's own runtime (python -m export diagnose ARTIFACT_DIR)"),
    "setup-arm": (arm_setup.main, "prepare (once, cached) the emulated aarch64 environment that --verify-arm runs "
                                  "the runtimes' aarch64 builds in (python -m export setup-arm)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a CrossFormer to Core ML, ExecuTorch, OpenVINO and/or ONNX, check every artifact "
                    "against the PyTorch reference, and write manifest.json.",
        epilog="subcommands: " + "; ".join(f"{name}: {help_}" for name, (_, help_) in SUBCOMMANDS.items())
               + ". python -m export SUBCOMMAND --help lists its options.")
    p.add_argument("--target", required=True, help=f"{', '.join(targets.TARGETS)}, all, or a comma-separated list")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default: {DEFAULT_MODEL})")
    p.add_argument("--checkpoint", type=Path, help=".pth/.pt/.safetensors weights (upstream layouts accepted)")
    p.add_argument("--task", choices=("classify", "features"), default="classify",
                   help="classify (logits; the default) or features: the detection / segmentation backbone's stage "
                        "maps (strides 4, 8, 16, 32), as upstream's detection and segmentation backbones compute them")
    p.add_argument("--img-size", type=side, nargs="+", metavar="N",
                   help="input size, a multiple of 32: N for the square classifier, in [32, 1024]; N or H W for a "
                        "backbone, each in [32, 1536] (default: the model's)")
    p.add_argument("--out-indices", type=int, nargs="+", metavar="I",
                   help="features: the stage maps to output, 0 to 3 (default: 0 1 2 3)")
    p.add_argument("--sizes", type=hw_size, nargs="+", metavar="HxW",
                   help="features, Core ML / ExecuTorch: one artifact with an entry point per size (Core ML "
                        "functions, ExecuTorch methods named forward_HxW; weights stored once), e.g. 512x512 384x640")
    p.add_argument("--dynamic-size", type=side, nargs=2, metavar=("MIN", "MAX"),
                   help="features, ONNX / OpenVINO: one artifact for every H and W that is a multiple of 32 in "
                        "[MIN, MAX] (symbolic sizes; padding and masks computed in the graph)")
    p.add_argument("--num-classes", type=int_in(1, MAX_NUM_CLASSES),
                   help=f"classes of the checkpoint's head, 1 to {MAX_NUM_CLASSES} (default: the model's)")
    p.add_argument("--labels", type=Path, help="text file, one class label per line")
    p.add_argument("--precision", choices=PRECISIONS, metavar="PRECISION",
                   help=f"one of {', '.join(PRECISIONS)}. fp32 / fp16; int8 (weights and activations); weight "
                        f"compression: {describe()}; int8+SCHEME: INT8 activations with compressed weights. Each "
                        "target offers: " + "; ".join(f"{t.name} {', '.join(t.precisions)} (default "
                                                      f"{t.default_precision})" for t in targets.TARGETS.values())
                        + ". A precision a target does not offer is refused before any work (docs/compression.md)")
    p.add_argument("--group-size", type=int_in(1, max(GROUP_SIZES)), metavar="N",
                   help=f"w4: input channels per weight scale, one of {', '.join(map(str, GROUP_SIZES))}; it must "
                        "divide the input channels of every 4-bit layer (smaller: closer to FP32, larger file; "
                        "default: the scheme's, docs/compression.md)")
    p.add_argument("--calib-data", type=Path, help="calibration images for int8 (folder, ImageFolder or IDX)")
    p.add_argument("--calib-size", type=int_in(1, MAX_IMAGES),
                   help="int8: calibration images used, >= 1 (default 300)")
    p.add_argument("--smooth-quant-alpha", type=float_in(0, 1, negative_disables=True),
                   help="int8: SmoothQuant alpha for MatMul/Linear in [0, 1]; negative disables (default: -1, off, by "
                        "measurement: docs/int8.md)")
    p.add_argument("--keep-float", action="append", default=[], metavar="REGEX", type=regex,
                   help="int8: regular expression of what stays float (repeatable): OpenVINO / ONNX node names, "
                        "module paths or node names for ExecuTorch / Core ML (e.g. '^model\\.head$')")
    p.add_argument("--int8-activations", choices=INT8_ACTIVATIONS,
                   help="int8: static (ranges calibrated once, NNCF; every target, the default) or dynamic "
                        "(ExecuTorch only: linears' inputs quantized per row at run time; closer to FP32, slower: "
                        "docs/int8.md)")
    p.add_argument("--full-range-int8-weights", action="store_true",
                   help="int8, OpenVINO / ONNX: use the full 8-bit weight range instead of 7-bit weights. Only for "
                        "deployments that never leave CPUs with VNNI or AMX (or Arm): on x86 CPUs without VNNI "
                        "(AVX2, AVX-512 without VNNI) the INT8 kernels sum pairs of products in 16 bits and can "
                        "saturate; the manifest's saturation check then says saturation_safe: false")
    p.add_argument("--cpu", choices=(*CPUS, "auto"),
                   help="int8, OpenVINO: the x86 CPU it is for: avx2 (no VNNI: the linears stay float, where INT8 "
                        "ones are slower than FP32), vnni (INT8 everywhere, as without --cpu) or auto (this host's); "
                        "recorded in info.cpu_int8 (docs/performance/isa.md)")
    p.add_argument("--max-accuracy-drop", type=percentage_points, metavar="PP",
                   help="int8: the most top-1 percentage points (0 to 100) INT8 may lose on held-out images (without labels: "
                        "points of agreement with FP32). OpenVINO / ONNX: NNCF's accuracy control; ExecuTorch / "
                        "Core ML: the most sensitive layers (python -m quantize sensitivity) stay float until it "
                        "holds. w4 / palette4 / palette6: the layers 4 bits hurt most (python -m quantize "
                        "sensitivity --precision w4) stay at 8 bits until it holds on the model's labelled images. "
                        "The manifest lists what stayed float or 8-bit and the measured drop")
    p.add_argument("--labels-map-by-order", action="store_true",
                   help="int8: the labelled --calib-data folder's classes are the model's labels in order, whatever "
                        "their names (without it, other names or another class count are refused)")
    p.add_argument("--verify-arm", action="store_true",
                   help="also run every ExecuTorch-XNNPACK / ONNX / OpenVINO artifact on its runtime's aarch64 build "
                        "under QEMU on two emulated CPUs (phone: dotprod, i8mm, SVE 128; plain NEON) with the same "
                        "gate; needs `python -m export setup-arm` once (docs/arm.md)")
    p.add_argument("--output", type=Path, help="output directory (default: artifacts/<model>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output directory")
    p.add_argument("--reference-model", action="store_true",
                   help="export the faithful (upstream-structured) model instead of the rewrite, to compare")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX only: dynamic batch dimension")
    p.add_argument("--reset-head", action="store_true",
                   help="drop a checkpoint head whose class count differs (fine-tuning starting point)")
    p.add_argument("--parity-samples", type=int_in(1, MAX_PARITY_SAMPLES),
                   help=f"FP32 / FP16: inputs used for the parity check, 1 to {MAX_PARITY_SAMPLES} (default 8; INT8 "
                        "is judged on held-out real images)")
    return p


def request_from(args: argparse.Namespace) -> ExportRequest:
    """The request as given: a flag not given stays None (export.validate refuses flags that would do nothing and
    then fills the defaults)."""
    names = parse_targets(args.target)
    sizes = args.img_size
    if sizes is not None and len(sizes) > 2:
        raise ExportError(f"--img-size takes N or H W, got {len(sizes)} values")
    if sizes is not None and args.task == "classify" and len(sizes) == 1 and sizes[0] > MAX_IMG_SIZE:
        raise ExportError(f"--img-size {sizes[0]} is above the supported {MAX_IMG_SIZE} px for the classifier; use a "
                          f"size in [32, {MAX_IMG_SIZE}]")
    return ExportRequest(
        task=args.task, out_indices=tuple(args.out_indices) if args.out_indices else None,
        dynamic_size=tuple(args.dynamic_size) if args.dynamic_size else None,
        sizes=tuple(args.sizes) if args.sizes else None,
        targets=names, model=args.model, checkpoint=args.checkpoint,
        img_size=None if sizes is None else (sizes[0] if len(sizes) == 1 else tuple(sizes)),
        num_classes=args.num_classes, labels_source=str(args.labels) if args.labels else "",
        precision=args.precision, output=args.output or Path("artifacts") / args.model, overwrite=args.overwrite,
        reference_model=args.reference_model, dynamic_batch=args.dynamic_batch, calib_data=args.calib_data,
        reset_head=args.reset_head, parity_samples=args.parity_samples,
        labels_map_by_order=args.labels_map_by_order,
        calib_size=args.calib_size, smooth_quant_alpha=args.smooth_quant_alpha,
        keep_float=tuple(args.keep_float), int8_activations=args.int8_activations,
        full_range_int8_weights=args.full_range_int8_weights, max_accuracy_drop=args.max_accuracy_drop,
        verify_arm=args.verify_arm, group_size=args.group_size, cpu=args.cpu)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]][0](argv[1:])
    args = build_parser().parse_args(argv)

    def body() -> int:
        req = validate(request_from(args))
        code, manifest = run_export(req)
        if code == 0:
            print_next_steps(req)
        return code

    return run_cli(body, (ExportError,))


def print_next_steps(req: ExportRequest) -> None:
    """After the Quickstart's export: what to try next (as in README's After the Quickstart, in that order)."""
    if req.model != DEFAULT_MODEL or req.checkpoint is not None or req.precision not in (None, "fp32", "fp16") or req.task != "classify" \
            or req.dynamic_size:
        return
    here = Path.cwd()
    out = (req.output.relative_to(here) if req.output.is_relative_to(here) else req.output).parent
    print("next (README.md, After the Quickstart, has the rest):\n"
          f"  python -m export --target all --output {out / 'all'}                      # every target\n"
          f"  python -m export --target all --precision int8 --output {out / 'int8'}    # INT8, every target\n"
          "  python -m benchmarks --model crossformer-fmnist --quick                # latency on this host",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
