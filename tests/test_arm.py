"""crossformer-fmnist FP32 and INT8 artifacts (ExecuTorch XNNPACK, ONNX, OpenVINO, LiteRT) on the runtimes'
aarch64 builds (QEMU user mode, two emulated CPUs) against the same files on this host; an injected ARM-only fault
must fail the comparison. Needs `python -m export setup-arm` (skipped without it unless EDGE_CROSSFORMER_REQUIRE_ARM
is set, as CI does)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import load_manifest, run_cli
from export import arm
from edge_crossformer.targets import by_runtime

# Same files, same runtime versions, other kernels: FP32 agreement measured within 1.7e-6 (docs/arm.md).
REL_TOL = 1e-4
INPUTS = 3
# INT8: labelled test images per runtime and CPU (emulated inference costs 0.1-0.5 s; the export's --verify-arm
# runs the full 500-image held-out set). Same file on both sides: top-1 measured identical on 200/200 images for
# ExecuTorch and ONNX Runtime and 99.6 % agreement with FP32 for OpenVINO's static-shape IR (docs/arm.md); rounding
# may flip a near-tie, so one image in INT8_IMAGES may differ. The logits' cosine to the x86 run catches a kernel
# that computes something else (OpenVINO's dynamic-shape INT8 IR on ARM: cosine ~0.2, docs/arm.md).
INT8_IMAGES = 32
# The targets whose artifacts an aarch64 runtime runs.
VERIFIABLE = ",".join(by_runtime(runtime).name for runtime in arm.RUNTIMES)
INT8_MIN_SAME_TOP1 = INT8_IMAGES - 1
INT8_MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def arm_env():
    try:
        return arm.environment()
    except arm.ArmUnavailable as e:
        if os.environ.get("EDGE_CROSSFORMER_REQUIRE_ARM"):
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def fp32(arm_env, tmp_path_factory):
    """The bundled model's FP32 artifacts (exported once), their manifest and a few seeded inputs in [0, 1]."""
    out = tmp_path_factory.mktemp("arm-fp32")
    assert run_cli("--target", VERIFIABLE, "--output", out) == 0
    manifest = load_manifest(out)
    size = manifest["img_size"]
    inputs = np.random.default_rng(0).random((INPUTS, 3, size, size), dtype=np.float32)
    return out, manifest, inputs


@pytest.fixture(scope="module")
def int8(arm_env, tmp_path_factory):
    """The bundled model's static INT8 artifacts (one export) and labelled Fashion-MNIST test images."""
    from edge_crossformer import get_config
    from edge_crossformer.data import find_fashion_mnist, load_dataset

    if find_fashion_mnist(None, "test") is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("arm-int8")
    assert run_cli("--target", VERIFIABLE, "--precision", "int8", "--calib-size", "64",
                   "--output", out) == 0
    manifest = load_manifest(out)
    data = load_dataset(None, get_config(manifest["model"]).resize_for(manifest["img_size"]), limit=INT8_IMAGES)
    return out, manifest, data.images.numpy(), data.labels.numpy()


def _artifact(out, manifest, runtime: str):
    target = by_runtime(runtime)
    for entry in manifest["artifacts"]:
        if entry["target"] == target.name and entry.get("delegate", target.runtime_delegate) == target.runtime_delegate:
            return out / entry["file"], target
    raise AssertionError(f"no {runtime} artifact in {out}")


def _host(target, path, inputs) -> list[list[np.ndarray]]:
    run = target.load_runner(path, threads=2)
    return [[np.asarray(o) for o in (r if isinstance(r, list) else [r])] for r in (run(x[None]) for x in inputs)]


def rel_err(emulated: list[list[np.ndarray]], host: list[list[np.ndarray]]) -> float:
    """max |ARM - x86| over every input and output, relative to the largest |x86 output|."""
    diffs = [np.abs(a - h).max() / np.abs(h).max() for ea, eh in zip(emulated, host) for a, h in zip(ea, eh)]
    return float(max(diffs))


@pytest.mark.parametrize("cpu", sorted(arm.CPUS))
@pytest.mark.parametrize("runtime", arm.RUNTIMES)
def test_fp32_matches_x86(arm_env, fp32, runtime, cpu):
    out, manifest, inputs = fp32
    path, target = _artifact(out, manifest, runtime)
    emulated, facts = arm.run(arm_env, runtime, path, inputs, cpu)
    err = rel_err(emulated, _host(target, path, inputs))
    print(f"{runtime} on QEMU-emulated aarch64 {cpu} (-cpu {facts['cpu_model']}): rel err {err:.2e}, "
          f"{np.median(facts['seconds_per_inference']):.2f} s/inference")
    assert facts["machine"] == "aarch64" and facts["emulator"].startswith("qemu-aarch64")
    assert facts["runtime_version"] == arm_env.runtime_version(runtime)
    assert len(emulated) == INPUTS and emulated[0][0].shape == (1, manifest["num_classes"])
    assert err <= REL_TOL, f"{runtime} on {cpu}: rel err {err:.2e} > {REL_TOL}"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("cpu", sorted(arm.CPUS))
@pytest.mark.parametrize("runtime", arm.RUNTIMES)
def test_int8_matches_x86(arm_env, int8, runtime, cpu):
    """The same INT8 file gives the same answers on ARM's integer kernels (dotprod / i8mm / SVE, or plain NEON)."""
    out, manifest, images, labels = int8
    path, target = _artifact(out, manifest, runtime)
    emulated, facts = arm.run(arm_env, runtime, path, images, cpu)
    arm_logits = np.concatenate([o[0].reshape(1, -1) for o in emulated])
    x86_logits = np.concatenate([h[0].reshape(1, -1) for h in _host(target, path, images)])
    same = int((arm_logits.argmax(1) == x86_logits.argmax(1)).sum())
    cosine = float(_cosines(arm_logits, x86_logits).min())
    accuracy = {side: float((logits.argmax(1) == labels).mean()) for side, logits in
                (("arm", arm_logits), ("x86", x86_logits))}
    print(f"{runtime} INT8 on QEMU-emulated aarch64 {cpu} (-cpu {facts['cpu_model']}): same top-1 as x86 on "
          f"{same}/{len(images)}, min cosine {cosine:.5f}, top-1 accuracy ARM {accuracy['arm']:.3f} / x86 "
          f"{accuracy['x86']:.3f}")
    assert facts["machine"] == "aarch64" and facts["runtime_version"] == arm_env.runtime_version(runtime)
    assert same >= INT8_MIN_SAME_TOP1, f"{runtime} INT8 on {cpu}: same top-1 as x86 on only {same}/{len(images)}"
    assert cosine >= INT8_MIN_COSINE, f"{runtime} INT8 on {cpu}: logits' cosine to x86 down to {cosine:.4f}"


def test_cpus_advertise_what_they_mean(arm_env, fp32):
    """The phone CPU shows the features phones have; the plain core does not."""
    out, manifest, inputs = fp32
    path, _ = _artifact(out, manifest, "onnxruntime")
    seen = {cpu: set(arm.run(arm_env, "onnxruntime", path, inputs[:1], cpu)[1]["features"]) for cpu in arm.CPUS}
    assert {"asimddp", "i8mm", "sve", "sve2"} <= seen["phone"] and "sme" not in seen["phone"]
    assert "asimddp" in seen["neon"] and not {"i8mm", "sve"} & seen["neon"]


def test_injected_arm_fault_fails(arm_env, fp32):
    """A wrong answer only the emulated run gives (the worker's test fault) must not pass the comparison."""
    out, manifest, inputs = fp32
    path, target = _artifact(out, manifest, "onnxruntime")
    emulated, _ = arm.run(arm_env, "onnxruntime", path, inputs, "neon", {"fault": 10 * REL_TOL})
    assert rel_err(emulated, _host(target, path, inputs)) > REL_TOL


def test_missing_environment_names_setup(tmp_path):
    with pytest.raises(arm.ArmUnavailable, match="python -m export setup-arm"):
        arm.environment(tmp_path / "nothing")


def test_verify_arm_refusals(tmp_path, monkeypatch):
    """No aarch64 runtime (Core ML) or no environment: exit 2, nothing written."""
    assert run_cli("--target", "coreml", "--verify-arm", "--output", tmp_path / "coreml") == 2
    monkeypatch.setenv("EDGE_CROSSFORMER_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(arm, "ENV_DIR", tmp_path / "empty-cache" / "arm" / "env")
    assert run_cli("--target", "onnx", "--verify-arm", "--output", tmp_path / "onnx") == 2
    assert not (tmp_path / "coreml").exists() and not (tmp_path / "onnx").exists()


# The fault: 1 % of the largest logit on every logit, ten times the FP32 gate; top-1 unchanged.
@pytest.mark.parametrize("fault", [0.0, 0.01])
def test_verify_arm_export(arm_env, tmp_path, monkeypatch, fault):
    """--verify-arm records both emulated CPUs under parity.cross_checks; an ARM-only fault fails the export."""
    monkeypatch.setenv(arm.FAULT_ENV, str(fault))
    code = run_cli("--target", "onnx", "--verify-arm", "--output", tmp_path)
    checks = load_manifest(tmp_path)["artifacts"][0]["parity"]["cross_checks"]
    assert set(checks) == {f"aarch64 {cpu} (QEMU-emulated)" for cpu in arm.CPUS}
    assert all(c["emulator"].startswith("qemu-aarch64") and c["features"] for c in checks.values())
    expected = "pass" if fault == 0 else "fail"
    assert code == (0 if fault == 0 else 1) and {c["status"] for c in checks.values()} == {expected}
