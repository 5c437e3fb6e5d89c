"""Runs one artifact on one runtime's aarch64 build, inside the emulated Python (export/arm.py starts it).

Imports only the standard library, numpy and the runtime: this file runs under qemu-aarch64 with the packages of the
emulated environment, not this project's. Mirrors the host runners (`load_runner` in export/onnx_target.py,
export/openvino_target.py, export/executorch_target.py, export/litert_target.py).

    python3.11 arm_worker.py REQUEST.json
REQUEST: {"runtime", "artifact", "inputs" (.npy, float32 [N, 3, H, W]), "outputs" (.npz to write), "threads",
"precision_hint" (OpenVINO), "fault" (test only)}. Writes out_<i>_<j> = output j of input i, and "facts" (JSON).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _features() -> list[str]:
    """The CPU features this process sees: the emulator's /proc/cpuinfo, which the runtimes' cpuinfo reads."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("Features"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def _sve_bits() -> int | None:
    """The SVE vector length this process runs with (prctl PR_SVE_GET_VL), None without SVE."""
    import ctypes

    pr_sve_get_vl = 51
    value = ctypes.CDLL(None, use_errno=True).prctl(pr_sve_get_vl, 0, 0, 0, 0)
    return (value & 0xFFFF) * 8 if value > 0 else None


def _onnxruntime(path: str, threads: int, _options: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})), ort.__version__


def _openvino(path: str, threads: int, options: dict):
    import openvino as ov

    # The ARM CPU plugin's default inference precision is f16: without the hint an FP32 IR runs in half precision.
    compiled = ov.Core().compile_model(path, "CPU", {
        "INFERENCE_PRECISION_HINT": options.get("precision_hint", "f32"), "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    outputs = compiled.outputs
    return (lambda x: [request.infer({0: x})[out] for out in outputs]), ov.__version__.split("-")[0]


def _executorch(path: str, threads: int, _options: dict):
    # torch first: the pybindings link libtorch_python. The extension module directly, not executorch.runtime:
    # that wrapper imports executorch.exir (the whole compiler stack), minutes under emulation; both call the same
    # _load_program / load_method.
    import torch
    from importlib.metadata import version

    from executorch.extension.pybindings import _C

    _C._unsafe_reset_threadpool(threads)
    program = _C._load_program(path, enable_etdump=False, debug_buffer_size=0,
                               program_verification=_C.Verification.InternalConsistency, data_path=None)
    method = program.load_method("forward")
    return (lambda x: [out.numpy() for out in method([torch.from_numpy(x)])]), version("executorch")


def _litert(path: str, threads: int, _options: dict):
    from importlib.metadata import version

    from ai_edge_litert.interpreter import Interpreter

    # The default XNNPACK CPU delegate, as on the host; outputs output_0, output_1, ... in the model's order.
    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
    (image,) = runner.get_input_details()
    names = sorted(runner.get_output_details(), key=lambda name: int(name.rsplit("_", 1)[-1]))

    def run(x):
        outputs = runner(**{image: x})
        return [outputs[name] for name in names]

    return run, version("ai-edge-litert")


RUNNERS = {"onnxruntime": _onnxruntime, "openvino": _openvino, "executorch": _executorch, "litert": _litert}


def _fault(outputs: list, request: dict) -> list:
    """Test hook: an ARM-only wrong answer, so a test can show the comparison catches one."""
    scale = float(request.get("fault") or 0.0)
    return [out + scale * np.abs(out).max() for out in outputs] if scale else outputs


def main(request_path: str) -> int:
    with open(request_path) as f:
        request = json.load(f)
    run, runtime_version = RUNNERS[request["runtime"]](request["artifact"], request["threads"], request)
    inputs = np.load(request["inputs"])
    arrays, seconds = {}, []
    for i in range(inputs.shape[0]):
        x = np.ascontiguousarray(inputs[i:i + 1], dtype=np.float32)
        start = time.perf_counter()
        outputs = run(x)
        seconds.append(time.perf_counter() - start)
        for j, out in enumerate(_fault(outputs, request)):
            arrays[f"out_{i}_{j}"] = np.asarray(out)
    facts = {"runtime_version": runtime_version, "features": _features(), "machine": _machine(),
             "sve_vector_bits": _sve_bits(),
             "seconds_per_inference": seconds}
    np.savez(request["outputs"], facts=np.array(json.dumps(facts)), **arrays)
    return 0


def _machine() -> str:
    import platform

    return platform.machine()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
