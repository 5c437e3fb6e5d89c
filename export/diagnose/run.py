"""The diagnosis of one artifact (`diagnose_artifact`) and the command (`main`)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edge_crossformer import targets
from edge_crossformer.cli import run_cli
from edge_crossformer.host import host_isa

from .. import parity
from ..prepare import SAMPLES, ModelSource
from ..request import ExportError, ExportRequest
from ..sizes import resize_spec
from ..validate import validate
from . import points, report, taps, xnnpack

# Per-layer gates (max |diff| / max |ref| of the layer's own tensor). FP32: the target's logit gate (docs/parity.md).
# FP16: about ten FP16 roundings (2^-11 each) of the layer's peak, what FP16 storage alone costs through a block
# (crossformer-fmnist Core ML FP16 measured 1e-3 to 4e-3 per layer). INT8: runtime against the quantizer's own
# simulation (kernel error). One INT8 step is 1/127 to 1/255 of a layer's range, and a runtime's kernels round
# accumulators and requantize where the simulation does in float, so single elements land a step or two apart:
# healthy crossformer-fmnist INT8 measured up to 2.6e-2 (ONNX Runtime) and 7.7e-2 (OpenVINO, an attention output,
# cosine with float 0.998 for both runtime and simulation); a mis-quantized layer is far above (docs/diagnose.md).
FP16_GATE = 1e-2
INT8_KERNEL_GATE = 0.1
# INT8 without a simulation to compare with: against float.
INT8_FLOAT_GATE = 0.25
DEFAULT_SAMPLES = 4
BRIEF_SAMPLES = 2


class DiagnoseError(ExportError):
    """Bad input to the diagnosis: one message, exit 2, nothing written."""


# The targets whose artifacts have taps (taps.py, xnnpack.py); ExecuTorch: the XNNPACK and Core ML delegates.
TAPPED = ("onnx", "openvino", "coreml", "executorch")


def check_tapped(target: str, file: str) -> None:
    if target not in TAPPED:
        raise DiagnoseError(f"{file}: diagnose has no layer taps for {targets.get(target).title} artifacts yet "
                            f"(it reads {', '.join(targets.get(t).title for t in TAPPED)}); pass --artifact for another")


def default_gate(target: str, precision: str, simulated: bool = True) -> float:
    """The per-layer gate: FP32 the target's, FP16 FP16_GATE; INT8 the runtime against the quantizer's simulation,
    or without one (a brief diagnosis) against float, much looser."""
    if precision == "fp32":
        return targets.get(target).fp32_gate
    if precision == "fp16":
        return FP16_GATE
    return INT8_KERNEL_GATE if simulated else INT8_FLOAT_GATE


def spelling_of(target: str, delegate: str | None):
    """The spelling the artifact was exported in (a delegate's own: the ExecuTorch Core ML delegate runs Core ML's)."""
    entry = targets.get(target)
    return entry.spelling_for_delegate(delegate) if delegate else entry.spelling


def inputs_for(source: ModelSource, precision: str, samples: int) -> np.ndarray:
    """What parity judged the artifact on: the synthetic parity inputs, or for INT8 real held-out images."""
    req = source.request
    if precision == "int8":
        return parity.eight_bit(source.int8_data.parity[:samples].numpy())
    return parity.eight_bit(parity.parity_inputs(req.img_size, resize_spec(req), samples, SAMPLES))[:samples]


def runtime_taps(path: Path, target: str, delegate: str | None, precision: str, source: ModelSource,
                 inputs: np.ndarray, expected: points.Capture) -> taps.Taps:
    if target == "onnx":
        return taps.onnx_taps(path, inputs, expected)
    if target == "openvino":
        return taps.openvino_taps(path, inputs, expected)
    if target == "coreml" or delegate == "coreml":
        return taps.coreml_taps(path, inputs, expected, _coreml_stacks(source, target, delegate, precision))
    return xnnpack.xnnpack_taps(path, source, spelling_of(target, delegate), precision, inputs, expected)


def simulation_taps(path: Path, target: str, delegate: str | None, source: ModelSource, inputs: np.ndarray,
                    expected: points.Capture) -> taps.Taps | None:
    """The INT8 quantizer's own prediction, on the torch side where the quantizer works there (XNNPACK's PT2E
    scheme: ExecuTorch, Core ML W8A8), else on the artifact's own graph with the quantize ops computed in float
    (NNCF on ONNX / OpenVINO quantizes that graph, not a torch module)."""
    if target == "onnx":
        return taps.onnx_taps(path, inputs, expected, optimized=False)
    if target == "openvino":
        return taps.openvino_taps(path, inputs, expected, simulate_int8=True)
    graph = source.pt2e_int8(source.example(), spelling_of(target, delegate))
    return taps.fx_taps(graph, inputs, expected)


def _coreml_stacks(source: ModelSource, target: str, delegate: str | None, precision: str) -> dict:
    """torch.export node names -> module stacks of the graph coremltools converted (exported again: same names)."""
    spelling = spelling_of(target, delegate)
    if delegate == "coreml":  # the delegate converted the edge program's partition: its node names
        from executorch.exir import to_edge

        return taps.fx_module_stacks(to_edge(source.exported_program(spelling)).exported_program())
    if precision == "int8":
        example = source.example()
        with torch.no_grad():
            program = torch.export.export(source.pt2e_int8(example, spelling), (example,)).run_decompositions({})
    else:
        program = source.exported_program(spelling).run_decompositions({})
    return taps.fx_module_stacks(program)


def diagnose_artifact(path: Path, target: str, precision: str, source: ModelSource, *, delegate: str | None = None,
                      inputs: np.ndarray | None = None, samples: int = DEFAULT_SAMPLES, gate: float | None = None,
                      brief: bool = False) -> dict:
    """Layer-by-layer comparison of one artifact with the model it was exported from (JSON-ready dict: `layers` in
    network order, `first_over_gate`, `worst`, `summary`). `brief`: 2 inputs, no INT8 simulation and no faithful
    reference column, for the export pipeline's failure message."""
    started = time.time()
    check_tapped(target, Path(path).name)
    samples = BRIEF_SAMPLES if brief else samples
    inputs = inputs_for(source, precision, samples) if inputs is None else inputs[:samples]
    expected = points.capture(source.deployable(spelling_of(target, delegate)), inputs)
    faithful = None if brief or source.request.reference_model else points.capture(source.reference, inputs)
    got = runtime_taps(Path(path), target, delegate, precision, source, inputs, expected)
    simulated = None
    if precision == "int8" and not brief:
        simulated = simulation_taps(Path(path), target, delegate, source, inputs, expected)
    gate = default_gate(target, precision, simulated is not None) if gate is None else gate
    rows = [_row(point, expected, faithful, got, simulated) for point in expected.order]
    result = report.summarise(rows, gate, kernel=simulated is not None)
    result.update(artifact=Path(path).name, target=target, delegate=delegate, precision=precision,
                  runtime=got.runtime, granularity=got.granularity, samples=len(inputs),
                  tapped_output_rel=got.tapped_output_rel,
                  simulation=simulated.runtime if simulated else None, seconds=round(time.time() - started, 2))
    return result


def _row(point: str, expected: points.Capture, faithful, got: taps.Taps, simulated) -> dict:
    ref = expected.values[point]
    row = {"layer": points.display(point), "block": points.block_of(point), "shape": list(ref[0].shape)}
    row.update(_against(got, point, ref, "", "runtime tensor"))
    if faithful is not None and points.SHARED_LAYOUT.match(point) or point == points.OUTPUT and faithful:
        other = faithful.values.get(point)
        if other is not None and other[0].shape == ref[0].shape:
            row["rewrite_rel"] = points.compare(ref, other).rel
    if simulated is not None:
        row.update(_against(simulated, point, ref, "sim_", "simulation tensor"))
        if point in got.values and point in simulated.values and row.get("rel") is not None:
            pairs = [(points.aligned(g, r), points.aligned(s, r)) for g, s, r in
                     zip(got.values[point], simulated.values[point], ref)]
            if all(g is not None and s is not None for g, s in pairs):
                row["kernel_rel"] = points.compare([g for g, _ in pairs], [s for _, s in pairs]).rel
    return row


def _against(found: taps.Taps, point: str, ref: list[np.ndarray], prefix: str, what: str) -> dict:
    if point not in found.values:
        return {prefix + "note": f"no {what}: the runtime graph has no op under this module"}
    pairs = [points.aligned(g, r) for g, r in zip(found.values[point], ref)]
    if any(p is None for p in pairs):
        shape = list(np.shape(found.values[point][0]))
        return {prefix + "note": f"{what} {found.names[point]} has shape {shape}, not the module's {list(ref[0].shape)}"}
    metrics = points.compare(pairs, ref)
    return {prefix + "rel": metrics.rel, prefix + "cosine": metrics.cosine, prefix + "tensor": found.names[point]}


# --- the command -------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export diagnose",
                                description="Compare an export's artifacts with the model they were exported from, "
                                            "layer by layer, on each artifact's own runtime.")
    p.add_argument("artifact_dir", type=Path, metavar="ARTIFACT_DIR", help="an export's output (has manifest.json)")
    p.add_argument("--artifact", action="append", default=[], metavar="FILE",
                   help="only this artifact (a file name the manifest lists; repeatable)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"inputs compared, 1 to 64 (default {DEFAULT_SAMPLES}): parity's inputs, real held-out "
                        "images for INT8")
    p.add_argument("--gate", type=float, help="per-layer gate, max |diff| / max |ref| (default: FP32 the target's "
                                              f"parity gate, FP16 {FP16_GATE:g}, INT8 runtime vs simulation "
                                              f"{INT8_KERNEL_GATE:g})")
    p.add_argument("--calib-data", type=Path, help="the --calib-data the INT8 export used (simulation, images)")
    p.add_argument("--calib-size", type=int,
                   help="the --calib-size the INT8 export used (default: the export's, 300): XNNPACK's scheme "
                        "(ExecuTorch, Core ML W8A8) is calibrated again for its simulation and debug build, and "
                        "the manifest does not record it")
    p.add_argument("--output", type=Path, help="where diagnose.json and diagnose.png go (default ARTIFACT_DIR/diagnose)")
    p.add_argument("--brief", action="store_true", help="2 inputs, no INT8 simulation, no faithful-model column")
    p.add_argument("--sensitivity", type=Path, metavar="JSON",
                   help="a sensitivity.json of `python -m quantize sensitivity` for the same model: INT8 artifacts' "
                        "error growth is compared with its ranking (top blocks, overlap, rank correlation)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), (ExportError,))


def _run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.artifact_dir)
    entries = chosen_artifacts(manifest, args.artifact_dir, args.artifact)
    if not 1 <= args.samples <= 64:
        raise DiagnoseError(f"--samples must be in [1, 64], got {args.samples}")
    if args.gate is not None and not 0 < args.gate < float("inf"):
        raise DiagnoseError(f"--gate is a positive ratio (max |diff| / max |ref|), got {args.gate}")
    for entry in entries:
        check_runtime(entry)
    sensitivity = read_sensitivity(args.sensitivity, manifest, entries, args.brief)
    source = ModelSource(request_from_manifest(manifest, args.calib_data, args.calib_size))
    results = []
    for entry in entries:
        results.append(diagnose_artifact(args.artifact_dir / entry["file"], entry["target"], entry["precision"],
                                         source, delegate=entry.get("delegate"), samples=args.samples,
                                         gate=args.gate, brief=args.brief))
        if sensitivity is not None and results[-1]["precision"] == "int8":
            results[-1]["sensitivity"] = {"file": str(args.sensitivity),
                                          **report.against_sensitivity(results[-1], sensitivity)}
        report.print_table(results[-1])
    out = args.output or args.artifact_dir / "diagnose"
    written = report.write(out, {"manifest": str(args.artifact_dir / "manifest.json"), "model": manifest["model"],
                                 "img_size": manifest["img_size"], "host": _host(), "artifacts": results})
    print(f"written: {', '.join(str(p) for p in written)}")
    return 0


def read_sensitivity(path: Path | None, manifest: dict, entries: list[dict], brief: bool) -> dict | None:
    """--sensitivity's sensitivity.json, checked before any work: readable, of the same model, for an INT8 artifact
    with its simulation (not --brief)."""
    if path is None:
        return None
    if brief or not any(e["precision"] == "int8" for e in entries):
        raise DiagnoseError("--sensitivity compares the INT8 simulation's error growth: diagnose an INT8 artifact, "
                            "without --brief")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        weights = isinstance(data, dict) and data.get("precision", "int8") != "int8"
        units = [] if weights else [(row["unit"], float(row["only_int8"]["kl"])) for row in data["layers"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DiagnoseError(f"--sensitivity {path}: not a sensitivity.json of `python -m quantize sensitivity` "
                            f"({type(e).__name__}: {e}); run that command and pass the JSON it writes") from None
    if weights:
        raise DiagnoseError(f"--sensitivity {path} ranks what {data['precision']} weights cost each layer; diagnose "
                            "compares INT8: pass the sensitivity.json of `python -m quantize sensitivity` without "
                            "--precision (INT8)")
    if data.get("model") != manifest["model"] or not units:
        raise DiagnoseError(f"--sensitivity {path} ranks {data.get('model')!r}'s layers, this export is "
                            f"{manifest['model']!r}: run `python -m quantize sensitivity --model {manifest['model']}`")
    return data


def _host() -> str:
    return str(host_isa())


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not Path(directory).is_dir():
        raise DiagnoseError(f"{directory} is not a directory; pass an export's output directory (it holds "
                            "manifest.json)")
    if not path.is_file():
        raise DiagnoseError(f"{directory} has no manifest.json, so it is not an export's output; pass the --output "
                            "directory of python -m export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiagnoseError(f"{path} is not readable JSON ({e}); export again") from None
    missing = [key for key in ("model", "img_size", "num_classes", "artifacts") if key not in manifest]
    if missing:
        raise DiagnoseError(f"{path} lacks {', '.join(missing)}; is it an export manifest? export again")
    if manifest.get("task", "classify") != "classify" or manifest.get("img_size") is None:
        raise DiagnoseError(f"{path} describes a backbone or a range of sizes; diagnose compares fixed-size "
                            "classifiers for now")
    return manifest


def chosen_artifacts(manifest: dict, directory: Path, only: list[str]) -> list[dict]:
    entries = manifest["artifacts"]
    if only:
        names = {e["file"] for e in entries}
        unknown = [f for f in only if Path(f).name not in names]
        if unknown:
            raise DiagnoseError(f"--artifact {unknown[0]} is not in {directory / 'manifest.json'}; it lists: "
                                f"{', '.join(sorted(names))}")
        entries = [e for e in entries if e["file"] in {Path(f).name for f in only}]
    if not entries:
        raise DiagnoseError(f"{directory / 'manifest.json'} lists no artifacts; nothing to diagnose")
    for entry in entries:
        files = [entry["file"]] + [f["file"] for f in entry.get("extra_files", [])]
        absent = [f for f in files if not (Path(directory) / f).exists()]
        if absent:
            raise DiagnoseError(f"the manifest lists {', '.join(absent)}, which {directory} does not hold; copy the "
                                "whole export directory, or export again")
    return entries


def runtime_packages(target: str, delegate: str | None) -> tuple[str, ...]:
    """What the diagnosis of an artifact imports: its runtime's packages, except that Core ML runs on the MIL
    evaluator (coremltools) and an ExecuTorch XNNPACK artifact needs no coremltools."""
    if target == "coreml":
        return ("coremltools",)
    if target == "executorch":
        return ("executorch", "coremltools") if delegate == "coreml" else ("executorch",)
    return targets.get(target).packages


def check_runtime(entry: dict) -> None:
    """The artifact has taps, and its runtime (for Core ML, coremltools for the MIL evaluator) is importable."""
    check_tapped(entry["target"], entry["file"])
    target = targets.get(entry["target"])
    for package in runtime_packages(entry["target"], entry.get("delegate")):
        if importlib.util.find_spec(package) is None:
            raise DiagnoseError(f"{entry['file']} runs on {target.title}, which needs the '{package}' package, not "
                                f"installed here: {targets.install_hint(package)}; or pass --artifact for another")


def request_from_manifest(manifest: dict, calib_data: Path | None = None,
                          calib_size: int | None = None) -> ExportRequest:
    """The request the export ran with, as far as the model is concerned (validated like an export's); INT8 where
    the manifest has INT8 artifacts (their calibration: `calib_data`, `calib_size`, which only INT8 takes)."""
    int8 = any(e["precision"] == "int8" for e in manifest["artifacts"])
    if not int8 and (calib_data is not None or calib_size is not None):
        raise DiagnoseError("--calib-data and --calib-size are the INT8 calibration's; "
                            f"{manifest['model']}'s manifest lists no INT8 artifact")
    source = manifest.get("source", {})
    checkpoint = source.get("checkpoint")
    checkpoint = None if checkpoint is None or checkpoint.startswith("bundled") else Path(checkpoint)
    names = tuple(dict.fromkeys(e["target"] for e in manifest["artifacts"]))
    req = ExportRequest(targets=names, model=manifest["model"], checkpoint=checkpoint,
                        precision="int8" if int8 else None,
                        img_size=manifest["img_size"], num_classes=manifest["num_classes"],
                        reference_model=source.get("exported_model") == "reference",
                        reset_head="head" in source, calib_data=calib_data, calib_size=calib_size,
                        # validate() checks an output directory; this one is never created.
                        output=Path(tempfile.gettempdir()) / "edge-crossformer-diagnose-unused")
    try:
        return validate(req)
    except ExportError as e:
        raise DiagnoseError(f"cannot rebuild the model of {manifest['model']} from the manifest: {e}") from None
