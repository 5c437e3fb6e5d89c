"""ExecuTorch XNNPACK: what can be reached inside one delegate blob, and how.

The artifact's whole network is one XNNPACK delegate: ExecuTorch sees one call, its ETDump one event, and nothing in
between is kept. So the diagnosis builds a debug .pte: the same exported program (the deployable in the target's
spelling; for INT8 the same PT2E graph), with every point's last node appended to the program outputs
(ExecuTorch's own `devtools.intermediate_output_tap`, which XNNPACK lowers through), lowered with the same
partitioner. Its granularity is any node; points use module outputs.

That debug build is made from the checkpoint, not from the artifact. To run the artifact's numbers, its constants are
moved in: XNNPACK stores each constant in the .pte's named data under the sha256 of its bytes, so constants the two
files share are identical, and those only one holds are the weights that differ from the checkpoint. They are paired
in graph order (same byte size) and the debug build takes the artifact's bytes. What cannot be paired (a different
graph, not different weights) is reported and the taps then show the checkpoint's weights, not the artifact's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..executorch_target import load_runner, lower_xnnpack
from .points import OUTPUT, Capture
from .taps import Taps, _finish, fx_candidates, fx_module_stacks, int8_carried, last_in_scope


def debug_program(source, spelling, precision: str, expected: Capture):
    """(debug .pte bytes, {tap output index: [points]}, {tap output index: (scale, zero point)} for INT8 taps): the
    exported program with every point's output appended."""
    from executorch.devtools.intermediate_output_tap import FULL_TENSOR, strip_taps_, tap_intermediate_outputs_

    example = source.example()
    if precision == "int8":
        with torch.no_grad():
            program = torch.export.export(source.pt2e_int8(example, spelling), (example,))
    else:
        program = source.exported_program(spelling)
    stacks = fx_module_stacks(program)
    nodes = {n.name: n for n in program.graph.nodes}
    ordered = [(n.name, stacks[n.name]) for n in fx_candidates(program.graph)]
    points = [p for p in expected.order if p != OUTPUT]
    chosen = last_in_scope(ordered, points, lambda point, paths: point in paths)
    # INT8: each point at the quantize that stores its value (dequantized here, like ONNX Runtime's INT8 tensors), so
    # the taps leave XNNPACK's quantized patterns whole. Tapped at the float op, the debug build left a weight's
    # dequantize outside the delegate ("Missing out variants"); tapped at the dequantize, XNNPACK (which folds q / dq
    # into its INT8 tensors) returned zeros.
    qparams = {}
    if precision == "int8":
        for point, name in list(chosen.items()):
            carried = int8_carried(nodes[name])
            quant = carried.args[0] if carried is not nodes[name] else None
            if quant is not None and all(isinstance(a, (int, float)) for a in quant.args[1:3]):
                chosen[point] = quant.name
                qparams[quant.name] = (float(quant.args[1]), float(quant.args[2]))
    by_node = {node: point for point, node in chosen.items()}
    program, specs = tap_intermediate_outputs_(program, rules=[(lambda n: n.name in by_node, FULL_TENSOR)])
    edge = lower_xnnpack(program)
    strip_taps_(edge)
    buffer = bytes(edge.to_executorch().buffer)
    index, scales = {}, {}
    for spec in specs:
        index.setdefault(spec.output_index, []).append(by_node[spec.node_name])
        if spec.node_name in qparams:
            scales[spec.output_index] = qparams[spec.node_name]
    return buffer, index, scales


def _named(pte) -> dict[str, bytes]:
    data = pte.named_data
    return {} if data is None else {key: bytes(data.buffers[entry.buffer_index]) for key, entry in
                                    data.pte_data.items()}


def transplant(debug: bytes, artifact: bytes) -> tuple[bytes, dict]:
    """The debug build with the artifact's constants where the two differ (see module docstring); and what
    happened: shared, replaced, unpaired constants."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte_debug, pte_art = deserialize_pte_binary(debug), deserialize_pte_binary(artifact)
    mine, theirs = _named(pte_debug), _named(pte_art)
    only_mine = [k for k in mine if k not in theirs]
    only_theirs = [k for k in theirs if k not in mine]
    info = {"constants": len(mine), "shared": len(mine) - len(only_mine), "replaced": 0, "unpaired": 0}
    sizes_match = len(only_mine) == len(only_theirs) and all(
        len(mine[a]) == len(theirs[b]) for a, b in zip(only_mine, only_theirs))
    if not only_mine and not only_theirs:
        return debug, info
    if not sizes_match:
        info["unpaired"] = len(only_mine) + len(only_theirs)
        return debug, info
    for key, other in zip(only_mine, only_theirs):
        entry = pte_debug.named_data.pte_data[key]
        pte_debug.named_data.buffers[entry.buffer_index] = theirs[other]
    info["replaced"] = len(only_mine)
    return bytes(serialize_pte_binary(pte_debug, extract_delegate_segments=True)), info


def xnnpack_taps(path, source, spelling, precision: str, inputs: np.ndarray, expected: Capture) -> Taps:
    """Module outputs of the XNNPACK artifact, through a debug build carrying the artifact's constants."""
    debug, index, scales = debug_program(source, spelling, precision, expected)
    debug, moved = transplant(debug, Path(path).read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        debug_path = Path(tmp) / "debug.pte"
        debug_path.write_bytes(debug)
        outputs = _run_all(debug_path, inputs)
    plain = load_runner(path)
    reference = [np.asarray(plain(inputs[i:i + 1])) for i in range(len(inputs))]
    per_input = [{str(k): _dequantized(out[k], scales.get(k)) for k in index} for out in outputs]
    chosen = {point: str(k) for k, points in index.items() for point in points}
    how = ("debug build (intermediate_output_tap), XNNPACK-lowered, with the artifact's constants: "
           f"{moved['shared']} shared, {moved['replaced']} moved in")
    if moved["unpaired"]:
        how = (f"debug build from the checkpoint: {moved['unpaired']} constants of the artifact could not be paired "
               "with the checkpoint's (its graph differs), so the taps show the checkpoint's weights")
    taps = Taps(runtime="ExecuTorch XNNPACK", granularity=how)
    taps.weights = moved
    return _finish(taps, per_input, chosen, reference, [out[0] for out in outputs])


def _dequantized(value, qparams) -> np.ndarray:
    value = np.asarray(value)
    if qparams is None:
        return value
    scale, zero = qparams
    return ((value.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)


def _run_all(path: Path, inputs: np.ndarray) -> list[list[np.ndarray]]:
    from executorch import runtime

    method = runtime.Runtime.get().load_program(str(path)).load_method("forward")
    results = []
    for i in range(len(inputs)):
        outs = method.execute([torch.from_numpy(np.ascontiguousarray(inputs[i:i + 1]))])
        results.append([o.numpy().copy() for o in outs])
    return results
