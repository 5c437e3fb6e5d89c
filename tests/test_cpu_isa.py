"""Per-ISA INT8: `--cpu` (which layers it keeps float, where it is refused, what auto resolves to), the ISA-cap check
of `python -m benchmarks profile`, node grouping, and the per-host recommendation on recorded numbers.

Speed is not asserted (benchmarks measure it, on the host they run on); what the switch selects is."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from benchmarks import isa_cap
from benchmarks.node_kinds import KINDS, by_kind, kind_of, xnnpack_kernel
from benchmarks.recommend import recommend
from conftest import load_manifest, run_cli
from export.request import ExportError, ExportRequest
from export.validate import validate

HOSTS = {"avx2": {"cpu": "AMD EPYC (Zen 3)", "arch": "x86_64", "isa": ["avx2", "fma", "sse4_1"]},
         "vnni": {"cpu": "AMD EPYC (Zen 4)", "arch": "x86_64", "isa": ["avx2", "avx512_vnni", "avx512f"]},
         "arm": {"cpu": "Neoverse-N1", "arch": "aarch64", "isa": ["asimd", "asimddp"]}}


# ------------------------------------------------------------------------------------------------ --cpu

@pytest.mark.parametrize("host, level", [("avx2", "avx2"), ("vnni", "vnni")])
def test_cpu_auto_is_the_exporting_host(tmp_path, monkeypatch, host, level):
    monkeypatch.setattr(sys.modules["export.validate"], "host_isa", lambda: HOSTS[host])
    req = validate(ExportRequest(targets=("openvino",), precision="int8", cpu="auto", output=tmp_path / "o"))
    assert (req.cpu, req.cpu_level) == ("auto", level)


def test_cpu_auto_refused_where_the_host_cannot_say(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["export.validate"], "host_isa", lambda: HOSTS["arm"])
    with pytest.raises(ExportError, match="--cpu auto.*aarch64.*--cpu avx2 or --cpu vnni"):
        validate(ExportRequest(targets=("openvino",), precision="int8", cpu="auto", output=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, why", [
    (("--target", "onnx", "--precision", "int8"), "add --target openvino"),
    (("--target", "openvino"), "add --precision int8"),
    (("--target", "openvino", "--precision", "int8", "--task", "features"), "drop --cpu"),
])
def test_cpu_refused_where_it_would_do_nothing(tmp_path, capsys, args, why):
    assert run_cli(*args, "--cpu", "avx2", "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "--cpu applies to fixed-size INT8 classifiers on OpenVINO only" in err and why in err
    assert not (tmp_path / "o").exists()


def test_cpu_avx2_keeps_the_linears_float(tmp_path):
    """The switch's behaviour on a real export: every linear layer float (FullyConnected runs FP32 kernels), the
    convolutions and attention still INT8, the choice and the INT8-vs-FP32 timing recorded; accuracy gate passed."""
    import openvino as ov

    out = tmp_path / "avx2"
    assert run_cli("--target", "openvino", "--precision", "int8", "--cpu", "avx2", "--calib-size", "16",
                   "--output", out) == 0
    art = load_manifest(out)["artifacts"][0]
    assert art["parity"]["status"] == "pass" and art["flags"]["--cpu"] == "avx2"
    cpu = art["info"]["cpu_int8"]
    assert cpu["cpu"] == "avx2" and cpu["kept_float"] and cpu["float_weight_layers"] > 0
    assert art["info"]["op_histogram"]["FakeQuantize"] > 0
    speed = art["info"]["int8_speed"]
    assert speed["pairs"] >= 3 and speed["ratio"] == pytest.approx(speed["int8_ms"] / speed["fp32_ms"], rel=1e-2)
    compiled = ov.Core().compile_model(str(out / art["file"]), "CPU", {"PERF_COUNT": True,
                                                                      "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer({0: np.zeros((1, 3, 32, 32), np.float32)})
    ran = [(p.node_type, p.exec_type) for p in request.profiling_info if p.status == p.Status.EXECUTED]
    fully_connected = [k for t, k in ran if t == "FullyConnected"]
    assert fully_connected and all(k.endswith("f32") for k in fully_connected), fully_connected
    assert any("I8" in k or "u8" in k.lower() for _, k in ran), ran  # the rest still runs INT8
    # And on a CPU without AVX-512 / VNNI (emulated: the kernels it selects, not their speed): the linears run
    # OpenVINO's AVX2 FP32 kernels, the convolutions its AVX2 INT8 ones.
    emulated = emulated_kernels(out / art["file"], tmp_path)
    fully_connected = [k for t, k in emulated if t == "FullyConnected"]
    assert fully_connected and all(k.endswith("f32") for k in fully_connected), fully_connected
    assert not any("avx512" in k or "vnni" in k.lower() for _, k in emulated), emulated
    assert any("avx2" in k and "I8" in k for t, k in emulated if t == "Convolution"), emulated


def emulator_or_skip():
    """The emulated AVX2-only x86 CPU (export/x86_emulation.py), set up by python -m export setup-arm."""
    from export import x86_emulation

    try:
        return x86_emulation.emulator()
    except x86_emulation.Unavailable as e:
        if os.environ.get("EDGE_CROSSFORMER_REQUIRE_ARM"):
            pytest.fail(f"the emulated AVX2 CPU is required here (EDGE_CROSSFORMER_REQUIRE_ARM): {e}")
        pytest.skip(str(e))


def emulated_kernels(artifact, tmp_path) -> list[tuple[str, str]]:
    """(node type, kernel) of each node OpenVINO ran for `artifact` on the emulated AVX2-only CPU, by the profile
    worker (benchmarks/profile_worker.py) under the emulator."""
    import json
    import subprocess
    from pathlib import Path

    from export import x86_emulation

    emulator_or_skip()
    work = tmp_path / "emulated"
    work.mkdir()
    np.save(work / "x.npy", np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    spec = {"runtime": "openvino", "artifact": str(artifact), "threads": 1, "warmup": 0, "runs": 1,
            "input": str(work / "x.npy"), "output": str(work)}
    (work / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(x86_emulation.command("-m", "benchmarks.profile_worker", str(work / "spec.json")),
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    return [(n["type"], n["kernel"]) for n in json.loads((work / "nodes.json").read_text())["nodes"]]


# ------------------------------------------------------------------------------------------------ ISA cap check

FP = np.array([[0.1, 2.0, -1.0]], np.float32)
NODES = [{"name": "fc", "type": "FullyConnected", "kernel": "brgemm_avx512_I8", "ms": 1.0}]


def capped(kernel: str, ms: float = 1.0) -> list[dict]:
    return [{"name": "fc", "type": "FullyConnected", "kernel": kernel, "ms": ms}]


@pytest.mark.parametrize("output, precision, why", [
    (np.zeros((0,), np.float32), "int8", "output shape"),                    # SSE41 on OpenVINO: empty output
    (np.array([[np.nan, 1, 1]], np.float32), "fp32", "non-finite"),
    (FP + np.array([[0, 0.01, 0]], np.float32), "fp32", "differs"),          # 5e-3 of the largest logit
    (np.array([[3.0, 2.0, -1.0]], np.float32), "int8", "differs"),           # another top-1
])
def test_a_cap_that_breaks_inference_is_detected_not_timed(output, precision, why):
    v = isa_cap.verdict("avx2", precision, FP, output, NODES, capped("jit_gemm_I8"))
    assert v["status"] == "broken" and why in v["reason"]


def test_cap_verdicts():
    ok = isa_cap.verdict("avx2", "int8", FP, FP + 1e-4, NODES, capped("jit_gemm_I8"))
    assert ok["status"] == "ok" and ok["agreement"]["same_top1"]
    same = isa_cap.verdict("avx2", "fp32", FP, FP, NODES, NODES)
    assert same["status"] == "not honored"
    mixed = capped("brgemm_avx2_f32", 1.0) + [{"name": "mvn", "type": "MVN", "kernel": "jit_avx512_f32", "ms": 0.5},
                                              {"name": "fc2", "type": "FullyConnected", "kernel": "gemm_mlas_f32",
                                               "ms": 0.5}]
    partial = isa_cap.verdict("avx2", "fp32", FP, FP, NODES, mixed)
    assert partial["status"] == "partial" and partial["uncapped_fraction"] == pytest.approx(0.5)
    assert partial["uncapped_kernels"] == ["FullyConnected: gemm_mlas_f32", "MVN: jit_avx512_f32"]


def test_cap_applicability_and_labels():
    vnni, avx2 = HOSTS["vnni"]["isa"], HOSTS["avx2"]["isa"]
    assert isa_cap.applicable("avx2", "openvino", vnni) is None
    assert "cpuid" in isa_cap.applicable("avx2", "onnxruntime", vnni)
    assert "cpuid" in isa_cap.applicable("avx2", "executorch", vnni)
    assert "nothing above AVX2" in isa_cap.applicable("avx2", "openvino", avx2)
    assert isa_cap.environment("avx2", "openvino") == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert isa_cap.label("avx2", vnni) == "AVX2 (capped on an AVX-512 VNNI CPU)"
    assert isa_cap.label(None, avx2) == "AVX2 (native)"


# ------------------------------------------------------------------------------------------------ grouping

def test_node_kinds():
    assert [kind_of(t) for t in ("FullyConnected", "Convolution", "QGemm", "QLinearConv")] == ["gemm"] * 4
    assert kind_of("MatMul", weight_operand=False) == "attention" and kind_of("MatMul", True) == "gemm"
    assert kind_of("Subgraph", name="layers.2.blocks.2.attn/aten::matmul/MatMul_1/fq_output_0") == "attention"
    assert kind_of("Subgraph", name="layers.0.blocks.0/aten::add/Add") == "elementwise"
    assert [kind_of(t) for t in ("ScaledDotProductAttention", "Softmax", "MVN", "LayerNormalization", "Gelu",
                                 "Reorder", "DequantizeLinear", "Transpose", "Reshape")] == [
        "attention", "attention", "norm", "norm", "activation", "reorder", "reorder", "transpose", "other"]
    xnn = xnnpack_kernel("Fully Connected (NC, QD8, F32, QC8W) GEMM #12")
    assert xnn == "Fully Connected (NC, QD8, F32, QC8W) GEMM" and kind_of(xnn) == "gemm"
    assert kind_of(xnnpack_kernel("Batch Matrix Multiply (NC, F32) GEMM #3")) == "attention"
    assert kind_of("Mean Squared (ND) Reduce2") == "norm" and kind_of("Subtract (ND)") == "elementwise"
    totals = by_kind([{"kind": "gemm", "ms": 1.5}, {"kind": "gemm", "ms": 0.5}, {"kind": "norm", "ms": 0.25}])
    assert list(totals) == list(KINDS) and totals["gemm"] == 2.0 and totals["norm"] == 0.25
    assert totals["attention"] == 0.0


# ------------------------------------------------------------------------------------------------ recommendation

def result(runtime: str, precision: str, median: float | None, variant: str = "project", gates: str = "pass",
           status: str = "ok") -> dict:
    r = {"id": f"{runtime}/{precision}/{variant}", "runtime": runtime, "precision": precision, "variant": variant,
         "artifact": f"m_{runtime}_{precision}", "status": status, "gates": gates}
    return {**r, "latency_ms": {"median": median}} if median is not None else {**r, "error": "did not load"}


def test_recommendation_on_recorded_numbers():
    """The AVX2 host's figures (DESIGN.md): OpenVINO INT8 slower than its FP32 -> FP32 shipped there; a faster
    variant that failed its gates and an ungated BF16 are never shipped."""
    results = [result("openvino", "fp32", 50.1), result("openvino", "int8", 53.8), result("openvino", "bf16", 20.0),
               result("openvino", "fp32", 48.0, "baseline"), result("onnxruntime", "fp32", 54.0),
               result("onnxruntime", "int8", 38.8), result("onnxruntime", "int8-full-range", 30.0, gates="fail"),
               result("onnxruntime", "fp32", 50.4, "baseline"), result("executorch", "fp32", None, status="failed"),
               result("pytorch", "fp32", 60.0)]
    recs = {r["runtime"]: r for r in recommend(results, "AVX2 (native)")}
    assert set(recs) == {"openvino", "onnxruntime", "executorch"}
    ov_, ort = recs["openvino"], recs["onnxruntime"]
    assert ov_["ship"] == "openvino/fp32/project" and ov_["vs_fp32"] == 1.0
    assert ov_["vs_upstream"] == pytest.approx(50.1 / 48.0, abs=1e-4)
    assert {e["id"] for e in ov_["excluded"]} == {"openvino/bf16/project"}
    assert ort["ship"] == "onnxruntime/int8/project" and ort["vs_fp32"] == pytest.approx(38.8 / 54.0, abs=1e-4)
    assert ort["vs_upstream"] == pytest.approx(38.8 / 48.0, abs=1e-4)
    assert ort["vs_upstream_same_runtime"] == pytest.approx(38.8 / 50.4, abs=1e-4)
    assert "on this CPU (AVX2 (native)) ship onnxruntime int8" in ort["line"] and "0.72x its FP32" in ort["line"]
    assert recs["executorch"]["ship"] is None and "nothing to ship" in recs["executorch"]["line"]


def test_recommendation_with_random_weights_says_gates_were_not_judged():
    from benchmarks.recommend import UNJUDGED

    results = [result("openvino", "fp32", 36.0, gates=UNJUDGED), result("openvino", "int8", 15.6, gates=UNJUDGED)]
    rec = recommend(results, "AVX-512 VNNI (native)")[0]
    assert rec["ship"] == "openvino/int8/project" and rec["vs_upstream"] is None
    assert "accuracy gates not judged" in rec["line"]


def test_accuracy_benchmark_scores_the_avx2_variant_where_a_target_has_one():
    """`python -m benchmarks accuracy` exports --cpu avx2 beside the default INT8 for the targets whose INT8 differs
    per CPU, and for no other."""
    from types import SimpleNamespace

    from benchmarks.accuracy import CPU_AVX2, _variants
    from edge_crossformer import targets

    args = SimpleNamespace(runtimes=("openvino", "onnx", "executorch"), checkpoint=None, max_accuracy_drop=None,
                           no_weight_compression=True, qat_checkpoint=[])
    avx2 = [v for v in _variants(args) if v[2] == CPU_AVX2]
    assert len(avx2) == 1 and avx2[0][0] == "int8"
    assert set(avx2[0][3]) == {t for t in args.runtimes if targets.get(t).cpu_keep_float} == {"openvino"}
