"""`python -m benchmarks --quick` end to end (real exports, every runtime, results.json/md/plots), merge, adb helper.

Timings themselves are not asserted (a shared CI machine is noisy); the tool's output and its honesty are.
"""

import json
import os

import pytest

from benchmarks.__main__ import main as bench

REQUIRED_TOP = ("schema", "schema_version", "created", "source", "machine", "versions", "commit", "settings",
                "model", "peaks", "results", "ratios", "delegation")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = bench(["--quick", "--model", "crossformer-fmnist", "--runs", "4", "--rounds", "2", "--warmup", "1",
                  "--output", str(out)])
    return code, out


def test_quick_benchmark_writes_every_runtime(quick):
    code, out = quick
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert all(k in report for k in REQUIRED_TOP)
    assert report["schema"] == "edge-crossformer/results" and report["schema_version"] == 1
    assert report["settings"]["threads"] >= 1 and report["settings"]["quick"] is True
    by_id = {r["id"]: r for r in report["results"]}
    for case in ("pytorch/fp32/project", "pytorch/fp32/baseline", "onnxruntime/fp32/project",
                 "onnxruntime/int8/project", "openvino/fp32/project", "openvino/int8/project",
                 "executorch/fp32/project", "executorch/int8/project",
                 "onnxruntime/fp32/baseline",
                 "openvino/fp32/baseline", "openvino/int8/baseline"):
        r = by_id[case]
        assert r["status"] == "ok", r
        lat = r["latency_ms"]
        assert lat["n"] == 4 and len(r["samples_ms"]) == 4
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["max"]
        assert r["load_ms"] > 0
        assert r["peak_rss_mib"] > 0
        assert 0 < r["roofline_fraction"] < 1
        if r["runtime"] != "pytorch":
            assert r["artifact_bytes"] > 100_000
    # Upstream's graph does not run on ExecuTorch: stated, not hidden.
    et = by_id["executorch/fp32/baseline"]
    assert et["status"] == "failed" and et["error"]
    assert by_id["executorch/int8/baseline"]["status"] in ("failed", "unsupported")
    # MACs are counted from the model, peaks measured here.
    assert 5e6 < report["model"]["macs"] < 5e7
    assert report["peaks"]["int8"]["gmacs_per_s"] > 0 and report["peaks"]["fp32"]["gmacs_per_s"] > 0
    ratios = {g["name"]: g for g in report["ratios"]}
    goal = ratios["openvino/int8/project / openvino/fp32/baseline"]
    assert goal["goal"] == 0.5 and goal["value"] == pytest.approx(
        by_id["openvino/int8/project"]["latency_ms"]["median"] / by_id["openvino/fp32/baseline"]["latency_ms"]["median"],
        rel=1e-3)
    # --quick leaves out the INT8 variants that only compare schemes (dynamic activations, full-range weights).
    assert not any(k.endswith(("int8-dynamic/project", "int8-full-range/project")) for k in by_id)
    pte = [v for k, v in report["delegation"].items() if "xnnpack_int8.pte" in k]
    assert len(pte) == 1 and all(p["ops_outside_delegate"] == 0 for p in pte)
    md = (out / "results.md").read_text()
    assert "| OpenVINO CPU | int8 | project |" in md and "failed" in md
    assert (out / "latency.png").stat().st_size > 10_000


def test_recommendation_per_runtime(quick):
    """results.json ends with what to ship per runtime: an artifact that passed its gates, fastest of those."""
    _, out = quick
    report = json.loads((out / "results.json").read_text())
    by_id = {r["id"]: r for r in report["results"]}
    recs = {r["runtime"]: r for r in report["recommendation"]}
    assert {"onnxruntime", "openvino", "executorch"} <= set(recs) and "pytorch" not in recs
    for runtime, rec in recs.items():
        ok = [r for r in report["results"] if r["runtime"] == runtime and r["variant"] == "project"
              and r["status"] == "ok" and r.get("gates") == "pass" and r["precision"] != "bf16"]
        assert rec["ship"] == min(ok, key=lambda r: r["latency_ms"]["median"])["id"]
        assert rec["vs_fp32"] == pytest.approx(by_id[rec["ship"]]["latency_ms"]["median"]
                                               / by_id[f"{runtime}/fp32/project"]["latency_ms"]["median"], abs=1e-3)
        assert rec["line"].startswith("on this CPU (") and "ship" in rec["line"]
    assert "What to ship on this CPU" in (out / "results.md").read_text()


def test_profile_on_the_benchmark_cache(quick):
    """`profile` over the latency benchmark's cached exports: every runtime x precision with its per-node profile
    grouped by kind and the ISA named; the AVX2 cap on OpenVINO checked against the uncapped run before it counts;
    a PNG per runtime x precision."""
    from benchmarks.node_kinds import KINDS

    _, out = quick
    assert bench(["profile", "--quick", "--model", "crossformer-fmnist", "--runs", "2", "--warmup", "1",
                  "--isa", "native,avx2", "--output", str(out)]) == 0
    report = json.loads((out / "profile.json").read_text())
    assert report["schema"] == "edge-crossformer/profile" and report["machine"]["isa"]
    assert report["settings"]["load_average"]["before"]
    by_id = {p["id"]: p for p in report["profiles"]}
    for runtime in ("onnxruntime", "openvino", "executorch"):
        for precision in ("fp32", "int8"):
            p = by_id[f"{runtime}/{precision}/project/native"]
            assert p["status"] == "ok" and p["isa_label"].endswith("(native)"), p
            assert list(p["by_kind"]) == list(KINDS) and p["by_kind"]["gemm"] > 0
            assert sum(p["by_kind"].values()) == pytest.approx(p["node_ms"], rel=1e-3, abs=1e-3)
            nodes = json.loads((out / p["nodes_file"]).read_text())
            assert nodes and all(n["kind"] in KINDS and n["kernel"] for n in nodes)
            assert (out / "profile" / f"{runtime}_{precision}.png").stat().st_size > 5_000
    # OpenVINO's INT8 linears run INT8 kernels, its FP32 ones FP32 kernels (the kernel names are the runtime's).
    kernels = {k["kernel"] for k in by_id["openvino/int8/project/native"]["by_kernel"]}
    assert any("I8" in k for k in kernels), kernels
    caps = report["isa_caps"]
    assert not caps["onnxruntime"]["avx2"]["measured"] and "cpuid" in caps["onnxruntime"]["avx2"]["why"]
    if "avx512f" in report["machine"]["isa"]:
        capped = by_id["openvino/fp32/project/avx2"]
        assert capped["isa_label"].startswith("AVX2 (capped on a")
        check = capped["cap_check"]
        assert check["status"] in ("ok", "partial", "broken", "not honored")
        if check["status"] in ("ok", "partial"):
            assert check["agreement"]["same_top1"] and capped["wall_ms"]["median"] > 0
            assert not any("avx512" in k["kernel"] for k in capped["by_kernel"] if k["kind"] == "gemm"
                           and "mlas" not in k["kernel"])
        else:
            assert "wall_ms" not in capped  # detected, not timed


def test_profile_on_an_emulated_avx2_cpu(quick):
    """`--isa avx2-emulated`: OpenVINO on a QEMU-emulated Haswell (no AVX-512, no VNNI), checked against the native
    run, recorded with the kernels it ran and no times (they are the emulator's). INT8 linears there run oneDNN's
    AVX2 INT8 GEMM, none an AVX-512 / VNNI kernel: the picture of an AVX2-only CPU (docs/performance/isa.md)."""
    from test_cpu_isa import emulator_or_skip

    emulator_or_skip()
    _, out = quick
    assert bench(["profile", "--quick", "--model", "crossformer-fmnist", "--runs", "1", "--warmup", "0",
                  "--runtimes", "openvino", "--isa", "avx2-emulated", "--output", str(out)]) == 0
    report = json.loads((out / "profile.json").read_text())
    assert report["isa_caps"]["openvino"]["avx2-emulated"] == {**report["isa_caps"]["openvino"]["avx2-emulated"],
                                                               "measured": True, "times": False}
    by_id = {p["id"]: p for p in report["profiles"]}
    for precision in ("fp32", "int8"):
        p = by_id[f"openvino/{precision}/project/avx2-emulated"]
        assert "QEMU-emulated" in p["isa_label"] and "not speed" in p["isa_label"], p["isa_label"]
        assert p["status"] == "kernels only", p
        nodes = json.loads((out / p["nodes_file"]).read_text())
        assert "wall_ms" not in p and "by_kind" not in p and nodes and all("ms" not in n for n in nodes)
        assert p["emulation_check"]["agreement"]["same_top1"] and p["emulation_check"]["above_avx2"] == []
        linears = [k["kernel"] for k in p["kernels"] if k["type"] == "FullyConnected"]
        assert linears and not any("avx512" in k or "vnni" in k.lower() or "amx" in k for k in linears), linears
        assert all(("I8" in k) == (precision == "int8") for k in linears), linears
    assert "QEMU-emulated" in (out / "profile.md").read_text()


def test_merge_host_and_device(quick, tmp_path, capsys):
    _, out = quick
    host = json.loads((out / "results.json").read_text())
    phone = {"schema": "edge-crossformer/results", "schema_version": 1, "created": "2026-11-25T00:00:00Z",
             "source": "android-app", "machine": {"kind": "device", "name": "Pixel 8", "os": "Android 15 (API 35)",
                                                  "cores": 9},
             "settings": {"model": "crossformer-fmnist", "img_size": 32, "batch": 1, "threads": 4, "warmup": 10,
                          "runs": 50},
             "results": [{"id": "executorch/fp32/project", "runtime": "executorch", "backend": "xnnpack",
                          "precision": "fp32", "status": "ok", "load_ms": 12.0,
                          "latency_ms": {"median": 1.5, "p90": 1.7, "trimmed_mean": 1.55, "min": 1.4, "max": 2.0,
                                         "n": 50}}]}
    (tmp_path / "phone.json").write_text(json.dumps(phone))
    merged_dir = tmp_path / "merged"
    assert bench(["merge", str(out / "results.json"), str(tmp_path / "phone.json"), "--output", str(merged_dir)]) == 0
    merged = json.loads((merged_dir / "merged.json").read_text())
    assert [r["machine"]["name"] for r in merged["reports"]] == [host["machine"]["name"], "Pixel 8"]
    md = (merged_dir / "results.md").read_text()
    assert "| Pixel 8 | crossformer-fmnist @ 32 | ExecuTorch | xnnpack | fp32 | project | 1.50 |" in md
    assert (merged_dir / "latency.png").exists()

    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    assert bench(["merge", str(tmp_path / "bad.json"), "--output", str(tmp_path / "m2")]) == 2
    assert "not a benchmark results file" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def test_android_helper_without_adb_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import hashlib

    monkeypatch.setenv("PATH", str(tmp_path))  # no adb here
    # A whole export (the helper checks it against its manifest first, then looks for the phone).
    pte = tmp_path / "model.pte"
    pte.write_bytes(b"program")
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [
        {"target": "executorch", "delegate": "xnnpack", "file": pte.name,
         "sha256": hashlib.sha256(b"program").hexdigest(), "bytes": 7}]}))
    assert bench(["android", "--artifacts", str(tmp_path), "--output", str(tmp_path / "out" / "r.json")]) == 2
    assert "adb not found on PATH" in capsys.readouterr().err


def test_bad_benchmark_arguments(tmp_path, capsys):
    assert bench(["--model", "crossformer-q", "--output", str(tmp_path / "x")]) == 2
    assert "crossformer-q" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        bench(["--runtimes", "tflite", "--output", str(tmp_path / "x")])
    assert refused.value.code == 2 and "unknown runtime(s) 'tflite'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_accuracy_scores_core_ml_through_the_mil_evaluator(tmp_path, monkeypatch):
    """`accuracy --runtimes coreml` off macOS: Core ML's saved programs (compressed ones decoded by the evaluator's
    own decoders) scored on labelled images through the MIL evaluator, and named so."""
    import sys

    import benchmarks.accuracy

    if sys.platform == "darwin":
        pytest.skip("on macOS Core ML itself runs the programs (the evaluator is the off-macOS path)")
    monkeypatch.setattr(benchmarks.accuracy, "WEIGHTS", {"palette4": "weights palette4"})  # one scheme: CI time
    out = tmp_path / "acc"
    assert bench(["accuracy", "--runtimes", "coreml", "--limit", "12", "--calib-size", "32", "--output",
                  str(out)]) == 0
    report = json.loads((out / "accuracy.json").read_text())
    assert report["runtimes"] == {"coreml": "Core ML (MIL evaluator)"} and report["images"] == 12
    scored = report["results"]["coreml"]
    assert set(scored) == {"FP32", "INT8 PTQ", "weights palette4"}, set(scored)
    assert scored["weights palette4"]["compression"]["bits"] == 4
    assert all(0 <= e["top1"] <= 100 and e["parity_status"] == "pass" for e in scored.values())
