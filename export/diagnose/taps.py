"""Intermediate values of an artifact on its own runtime, named by the module they belong to.

Each `*_taps` function runs the artifact on every input with intermediate tensors exposed and returns `Taps`: per
point (points.py) one array per input, plus why a point could not be reached. How a runtime's tensor is tied to a
module: the last op, in the runtime's graph order, that the module's forward produced:
- ONNX: the `pkg.torch.onnx.name_scopes` metadata torch.onnx (dynamo) writes on every node: the exact module stack.
- OpenVINO: friendly names `__module.<path>/aten::<op>/<Type>` (the innermost module only; which modules a module's
  forward called comes from the torch-side hooks, `points.owns`).
- Core ML: MIL op names are the torch.export node names (plus suffixes such as `_cast_fp16`); the node's
  nn_module_stack comes from exporting the deployable again (same graph, same names).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import numpy as np

from .. import coreml_mil, onnx_target
from .points import OUTPUT, Capture, owns

OV_NAME = re.compile(r"^__module\.([^/]+)/")


@dataclass
class Taps:
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # point -> the runtime's name for the tensor compared (for the report: what was tapped).
    names: dict[str, str] = field(default_factory=dict)
    # The artifact's output with the taps added vs without: adding outputs can change a runtime's fusions.
    tapped_output_rel: float | None = None
    runtime: str = ""
    granularity: str = ""


def last_in_scope(ordered: list[tuple[str, list[str]]], points: list[str], belongs) -> dict[str, str]:
    """point -> name of the last tensor (in graph order) that an op belonging to the point produced.
    `ordered`: (tensor name, module paths recorded for its op); `belongs(point, paths)`."""
    chosen: dict[str, str] = {}
    for tensor, paths in ordered:
        for point in points:
            if belongs(point, paths):
                chosen[point] = tensor
    return chosen


def _finish(taps: Taps, per_input: list[dict[str, np.ndarray]], chosen: dict[str, str], plain, tapped_out) -> Taps:
    for point, tensor in chosen.items():
        taps.values[point] = [vals[tensor] for vals in per_input]
        taps.names[point] = tensor
    taps.values[OUTPUT] = tapped_out
    taps.names[OUTPUT] = "output"
    ref = np.concatenate([np.ravel(p) for p in plain])
    got = np.concatenate([np.ravel(t) for t in tapped_out])
    taps.tapped_output_rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    return taps


# --- ONNX Runtime --------------------------------------------------------------------------------------------------

def _onnx_scopes(node) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return ast.literal_eval(prop.value)
    return []


def _quantized_output(graph, tensor: str) -> str:
    """The INT8 tensor a float output is quantized into, where one QuantizeLinear reads it (what ONNX Runtime's fused
    INT8 kernels produce: tapping the float tensor itself would keep them from fusing)."""
    readers = [n for n in graph.node if tensor in n.input]
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        return readers[0].output[0]
    return tensor


def onnx_taps(path, inputs: np.ndarray, expected: Capture, optimized: bool = True) -> Taps:
    """Every point's tensor added as a graph output; run on ONNX Runtime (graph optimizations as the runner uses
    them, or off: then a QDQ model computes exactly what its quantize / dequantize pairs say, the quantizer's own
    simulation)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    points = [p for p in expected.order if p != OUTPUT]
    ordered = [(node.output[0], _onnx_scopes(node)) for node in model.graph.node if node.output]
    chosen = last_in_scope(ordered, points, lambda point, scopes: point in scopes)
    chosen = {p: _quantized_output(model.graph, t) for p, t in chosen.items()}
    scales = _dequantizers(model.graph, set(chosen.values()))
    existing = {o.name for o in model.graph.output}
    for tensor in dict.fromkeys(chosen.values()):
        if tensor not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=tensor))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    per_input, tapped_out = [], []
    for i in range(len(inputs)):
        outs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs[i:i + 1]})))
        per_input.append({t: _dequantized(outs[t], scales.get(t)) for t in chosen.values()})
        tapped_out.append(outs[names[0]])
    plain = onnx_target.load_runner(path, 2) if optimized else None
    reference = [plain(inputs[i:i + 1]) for i in range(len(inputs))] if plain else tapped_out
    taps = Taps(runtime="ONNX Runtime" + ("" if optimized else " (graph optimizations off: QDQ as written)"),
                granularity="every node (module output = last node in its name scope)")
    return _finish(taps, per_input, chosen, reference, tapped_out)


def _dequantizers(graph, tensors: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(scale, zero point) of the QuantizeLinear that produced each INT8 tensor tapped."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == n.attribute[0].TENSOR}
    init.update(consts)
    found = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.output[0] in tensors:
            scale = init[node.input[1]]
            zero = init[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
            found[node.output[0]] = (scale, zero)
    return found


def _dequantized(value: np.ndarray, qparams) -> np.ndarray:
    if qparams is None:
        return np.asarray(value, np.float32)
    scale, zero = qparams
    return ((value.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


# --- OpenVINO ------------------------------------------------------------------------------------------------------

def openvino_taps(path, inputs: np.ndarray, expected: Capture, simulate_int8: bool = False) -> Taps:
    """Every point's op output added to the model's results, compiled for the CPU plugin with the f32 hint (as
    parity runs it). `simulate_int8`: FakeQuantize ops spelled out in float first (`float_fake_quantize`), so the
    plugin cannot run them as INT8 kernels: the quantizer's own simulation."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    plain = core.compile_model(model, "CPU", _ov_config())
    if simulate_int8:
        float_fake_quantize(model)
    points = [p for p in expected.order if p != OUTPUT]
    ordered, outputs = [], {}
    for op in model.get_ordered_ops():
        m = OV_NAME.match(op.get_friendly_name())
        if m is None or op.get_output_size() == 0 or op.get_type_name() in ("Constant", "Result"):
            continue
        ordered.append((op.get_friendly_name(), [m.group(1)]))
        outputs[op.get_friendly_name()] = op.output(0)
    chosen = last_in_scope(ordered, points, lambda point, paths: owns(expected, point, paths[0]))
    wanted = list(dict.fromkeys(chosen.values()))
    # Named, so the compiled model's results are found by name (their order is the plugin's).
    for k, name in enumerate(wanted):
        outputs[name].get_tensor().add_names({f"diagnose:{k}"})
    model.add_outputs([outputs[name] for name in wanted])
    compiled = core.compile_model(model, "CPU", _ov_config(simulation=simulate_int8))
    request, plain_request = compiled.create_infer_request(), plain.create_infer_request()
    by_name = {tensor_name: out for out in compiled.outputs for tensor_name in out.get_names()}
    logits = compiled.output(plain.outputs[0].get_any_name())
    # An op that already feeds the model's result keeps that result's name (the logits, for the head).
    results = {name: by_name.get(f"diagnose:{k}", logits) for k, name in enumerate(wanted)}
    per_input, tapped_out, reference = [], [], []
    for i in range(len(inputs)):
        out = request.infer({0: inputs[i:i + 1]})
        per_input.append({name: np.asarray(out[results[name]]) for name in wanted})
        tapped_out.append(np.asarray(out[logits]))
        reference.append(np.asarray(plain_request.infer({0: inputs[i:i + 1]})[plain.outputs[0]]))
    taps = Taps(runtime="OpenVINO CPU (f32 hint)" + (", FakeQuantize in float" if simulate_int8 else ""),
                granularity="every op (module output = last op under the module's friendly name)")
    return _finish(taps, per_input, chosen, reference, tapped_out)


def _ov_config(simulation: bool = False) -> dict:
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}
    if simulation:
        # Without snippets: on a static-shape IR the plugin JIT-fuses the spelled-out FakeQuantize chains into
        # snippet subgraphs (27 vs 7 with a dynamic shape) whose result departs from the same graph computed op by
        # op (crossformer-fmnist INT8 logits 7.1e-2 from the runtime instead of 8.2e-3; docs/diagnose.md).
        config["SNIPPETS_MODE"] = "DISABLE"
    return config


def float_fake_quantize(model) -> int:
    """In place: every FakeQuantize(x, il, ih, ol, oh, levels) becomes its definition in float ops
    (round((clamp(x, il, ih) - il) / (ih - il) * (levels - 1)) / (levels - 1) * (oh - ol) + ol), which the CPU
    plugin computes in f32 instead of fusing into INT8 kernels. Returns how many were replaced."""
    from openvino import opset13 as ops

    count = 0
    for fq in [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]:
        x, il, ih, ol, oh = (fq.input_value(i) for i in range(5))
        steps = float(fq.get_attributes()["levels"] - 1)
        clamped = ops.minimum(ops.maximum(x, il), ih)
        q = ops.round(ops.multiply(ops.divide(ops.subtract(clamped, il), ops.subtract(ih, il)),
                                   np.float32(steps)), "half_to_even")
        y = ops.add(ops.multiply(ops.divide(q, np.float32(steps)), ops.subtract(oh, ol)), ol)
        y.set_friendly_name(fq.get_friendly_name())
        fq.output(0).replace(y.output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count


# --- Core ML (MIL evaluator) ---------------------------------------------------------------------------------------

def fx_module_stacks(exported) -> dict[str, list[str]]:
    """torch.export node name -> the module paths of its nn_module_stack (outermost first)."""
    stacks = {}
    for node in exported.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        stacks[node.name] = [_strip_root(path) for path, _ in stack.values()]
    return stacks


def _strip_root(path: str) -> str:
    # torch.export records paths from the exported module's root ('' / 'model.layers...'), sometimes with
    # 'L__self__' spellings; the deployable's named_modules() paths are what points use.
    return re.sub(r"^L__self___?", "", path).replace("_modules['", "").replace("']", "")


def mil_op_node(op_name: str, stacks: dict[str, list[str]]) -> str | None:
    """The torch.export node a MIL op came from: its name, or the longest node name it starts with."""
    if op_name in stacks:
        return op_name
    best = None
    for name in stacks:
        if op_name.startswith(name + "_") and (best is None or len(name) > len(best)):
            best = name
    return best


def coreml_taps(path, inputs: np.ndarray, expected: Capture, stacks: dict[str, list[str]]) -> Taps:
    """Every point's last MIL var, kept while the evaluator runs the saved program op by op."""
    loaded = coreml_mil.load_pte(path) if str(path).endswith(".pte") else coreml_mil.load(path)
    points = [p for p in expected.order if p != OUTPUT]
    ordered = []
    for op in loaded.compute_ops:
        if not op.outputs:
            continue
        # Output vars keep the torch node's name where ops are renamed (transposes become transpose_N).
        node = mil_op_node(op.outputs[0].name, stacks) or mil_op_node(op.name, stacks)
        if node is not None:
            ordered.append((op.outputs[0].name, stacks[node]))
    chosen = last_in_scope(ordered, points, lambda point, paths: point in paths)
    keep = set(chosen.values())
    feed = coreml_mil.pixels(inputs, loaded.color_space) if loaded.color_space else inputs
    per_input, out = [], []
    for i in range(len(inputs)):
        values = coreml_mil.run_function(loaded.function, {loaded.input_name: feed[i:i + 1]}, loaded.consts, keep=keep)
        per_input.append({name: values[name] for name in keep})
        out.append(np.asarray(values[loaded.output_name], np.float32).reshape(1, -1))
    taps = Taps(runtime="MIL evaluator (" + ("fp16-emulated" if _fp16(loaded) else "fp32") + ")",
                granularity="every MIL op (module output = last op from the module's torch.export nodes)")
    return _finish(taps, per_input, chosen, out, out)


def _fp16(loaded) -> bool:
    from coremltools.converters.mil.mil import types

    return any(var.dtype == types.fp16 for op in loaded.compute_ops for var in op.outputs)


# --- torch.export graphs (the INT8 quantizer's own simulation: PT2E quantize / dequantize graphs) -------------------

def fx_candidates(graph) -> list:
    """The call_function nodes a point may be tapped at: not quantize ops and not a weight's dequantize (in a PT2E
    graph those are the INT8 storage of a value, not a module's result)."""
    def skipped(node) -> bool:
        name = str(node.target)
        return "quantize_per_tensor" in name and "dequantize" not in name or "per_channel" in name
    return [n for n in graph.nodes if n.op == "call_function" and not skipped(n)]


def int8_carried(node):
    """The value a float node of a PT2E graph is carried as: where its one user is a quantize, that quantize's
    dequantize (what the runtime's INT8 kernels produce, dequantized). Tapping the float node itself would take it
    out of XNNPACK's quantized pattern (a linear whose output is read twice is not fused with its quantize)."""
    users = list(node.users)
    if len(users) == 1 and "quantize_per_tensor" in str(users[0].target) and "dequantize" not in str(users[0].target):
        after = [u for u in users[0].users if "dequantize_per_tensor" in str(u.target)]
        if after:
            return after[0]
    return node


def fx_taps(graph_module, inputs: np.ndarray, expected: Capture) -> Taps:
    """Every node's value of a torch.fx graph (a converted PT2E graph: quantize / dequantize ops on float values,
    the XNNPACK quantizer's simulation of INT8); point = last node of its module stack."""
    import torch

    points = [p for p in expected.order if p != OUTPUT]
    stacks = {n.name: [_strip_root(p) for p, _ in (n.meta.get("nn_module_stack") or {}).values()]
              for n in graph_module.graph.nodes}
    nodes = {n.name: n for n in graph_module.graph.nodes}
    ordered = [(n.name, stacks[n.name]) for n in fx_candidates(graph_module.graph)]
    chosen = last_in_scope(ordered, points, lambda point, paths: point in paths)
    chosen = {point: int8_carried(nodes[name]).name for point, name in chosen.items()}
    keep = set(chosen.values())
    per_input, out = [], []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n.name in keep and isinstance(result, torch.Tensor):
                self.seen[n.name] = result.detach().float().numpy().copy()
            return result

    with torch.no_grad():
        for i in range(len(inputs)):
            rec = Recorder(graph_module)
            rec.seen = {}
            result = rec.run(torch.from_numpy(inputs[i:i + 1]))
            result = result[0] if isinstance(result, (tuple, list)) else result
            per_input.append(rec.seen)
            out.append(result.float().numpy())
    taps = Taps(runtime="PT2E quantize / dequantize graph (torch)", granularity="every torch.export node")
    return _finish(taps, per_input, {p: t for p, t in chosen.items() if all(t in s for s in per_input)}, out, out)
