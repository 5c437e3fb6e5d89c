"""Where does an OpenVINO IR's output on ARM depart from x86? (issue 26; findings in docs/arm.md)

    python -m export.arm_divergence IR.xml [--cpu phone] [--images 2] [--only TYPE,TYPE] [--threshold 0.05]

A copy of the IR gets an extra Result on every input-dependent op output (optionally only on ops of the given
types: extra Results can stop the CPU plugin's low-precision fusions, so a narrow set keeps the graph closer to the
original); the copy runs on this host's OpenVINO and on the aarch64 build under QEMU (export/arm.py) on the same
Fashion-MNIST test images; the outputs are compared node by node in topological order and the first node whose
relative error (max |ARM - x86| / max |x86|) passes the threshold is named.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import arm

SKIP = {"Parameter", "Result", "Constant"}


def _input_dependent(model) -> list:
    """The ops whose value depends on the model input (weight decompression subgraphs left out), in order."""
    live, ops = set(), []
    for op in model.get_ordered_ops():
        name = op.get_type_name()
        if name == "Parameter" or any(inp.get_source_output().get_node().get_friendly_name() in live
                                      for inp in op.inputs()):
            live.add(op.get_friendly_name())
            if name not in SKIP:
                ops.append(op)
    return ops


def instrument(xml: Path, out: Path, only: set[str] | None = None) -> list[dict]:
    """Save `xml` with an extra Result per input-dependent f32 op output; returns their names, in output order."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    extra = [op.output(i) for op in _input_dependent(model) if not only or op.get_type_name() in only
             for i in range(op.get_output_size()) if op.get_output_element_type(i) == ov.Type.f32]
    model.add_outputs(extra)
    ov.save_model(model, str(out), compress_to_fp16=False)
    # Named from the saved Results, in output order (an output that already was a Result is not added twice).
    names = []
    for result in ov.Core().read_model(str(out)).get_results():
        source = result.input_value(0)
        node = source.get_node()
        names.append({"node": node.get_friendly_name(), "type": node.get_type_name(), "port": source.get_index()})
    return names


def host_outputs(xml: Path, images: np.ndarray) -> list[list[np.ndarray]]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "INFERENCE_NUM_THREADS": arm.THREADS, "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    return [[np.array(request.infer({0: x[None]})[out]) for out in compiled.outputs] for x in images]


def compare(names: list[dict], host: list[list[np.ndarray]], emulated: list[list[np.ndarray]]) -> list[dict]:
    """Per output: relative error and cosine, worst over the images."""
    rows = []
    for k, name in enumerate(names):
        rel, cos = 0.0, 1.0
        for h_all, e_all in zip(host, emulated):
            h, e = h_all[k].astype(np.float64).ravel(), e_all[k].astype(np.float64).ravel()
            scale = np.abs(h).max() or 1.0
            rel = max(rel, float(np.abs(e - h).max() / scale))
            denom = np.linalg.norm(h) * np.linalg.norm(e)
            cos = min(cos, float(h @ e / denom) if denom else 1.0)
        rows.append({**name, "rel": rel, "cosine": cos})
    return rows


def _images(count: int) -> np.ndarray:
    from edge_crossformer.data import load_dataset

    return load_dataset(None, {"size": 32, "crop": 32}, limit=count).images.numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.arm_divergence", description=__doc__.split("\n")[0])
    parser.add_argument("xml", type=Path)
    parser.add_argument("--cpu", default="phone", choices=sorted(arm.CPUS))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated op types to instrument (default: all)")
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--hint", default="f32", help="OpenVINO precision hint on ARM")
    parser.add_argument("--json", type=Path, help="write every node's numbers here")
    args = parser.parse_args(argv)
    env = arm.environment()
    images = _images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.xml"
        names = instrument(args.xml, probe, set(filter(None, args.only.split(","))) or None)
        emulated, facts = arm.run(env, "openvino", probe, images, args.cpu, {"precision_hint": args.hint})
        rows = compare(names, host_outputs(probe, images), emulated)
    print(f"{len(rows)} outputs; QEMU-emulated aarch64 ({facts['emulator']}, -cpu {facts['cpu_model']}), "
          f"OpenVINO {facts['runtime_version']}, hint {args.hint}, {args.images} Fashion-MNIST test images")
    print(f"model output ({rows[0]['node']}): rel {rows[0]['rel']:.3g}, cosine {rows[0]['cosine']:.4f}")
    first = next((r for r in rows[1:] if r["rel"] > args.threshold), None)
    for r in rows[1:]:
        if r["rel"] > args.threshold / 10 or r is first:
            print(f"  {r['type']:<16} {r['node'][:90]:<90} rel {r['rel']:.3g} cos {r['cosine']:.4f}")
        if r is first:
            break
    print("first over threshold:", json.dumps(first) if first else "none")
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
