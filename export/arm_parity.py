"""`--verify-arm`: each artifact's parity again on its runtime's aarch64 build, QEMU-emulated, on two CPUs
(export/arm.py; docs/arm.md), recorded under `parity.cross_checks` and gated like the artifact's own parity.

Same inputs, same reference, same gate as the x86 parity (export.parity.classifier_parity, fed the emulated outputs).
Two emulated CPUs that disagree with each other (different verdicts, or outputs that would not pass the artifact's
gate against each other) are an emulator disagreement: a failure, never a pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edge_crossformer import targets

from . import arm, parity
from .base import Artifact
from .request import ExportError, ExportRequest

DISAGREEMENT = "emulator disagreement"


def check_request(req: ExportRequest) -> None:
    """Refuse what --verify-arm cannot check (exit 2, in validate, before any work)."""
    if not req.verify_arm:
        return
    without = [t for t in req.targets if targets.get(t).runtime not in arm.RUNTIMES]
    if without:
        raise ExportError(f"--verify-arm: {', '.join(without)} has no aarch64 runtime to check on (Core ML runs only "
                          f"on Apple systems); verifiable targets: "
                          f"{', '.join(t for t in targets.TARGETS if targets.get(t).runtime in arm.RUNTIMES)}")
    if req.task != "classify" or req.dynamic_size is not None:
        raise ExportError("--verify-arm checks fixed-size classifiers for now: drop --task features / --dynamic-size")


def environment(req: ExportRequest) -> arm.ArmEnv | None:
    """The emulated environment when --verify-arm asks for it (exit 2 naming the setup command when missing); run
    before the export writes anything."""
    if not req.verify_arm:
        return None
    try:
        return arm.environment()
    except arm.ArmUnavailable as e:
        raise ExportError(str(e)) from None


def check_name(cpu: str) -> str:
    return f"aarch64 {cpu} (QEMU-emulated)"


def _replay(inputs: np.ndarray, outputs: list[list[np.ndarray]]):
    """A runner that answers each input with what the emulated runtime gave for it."""
    table = {np.ascontiguousarray(x).tobytes(): out[0] for x, out in zip(inputs, outputs)}
    return lambda x: table[np.ascontiguousarray(x[0]).tobytes()]


def verify(art: Artifact, result: dict, inputs: np.ndarray, expected: np.ndarray, device: str, int8_set,
           env: arm.ArmEnv) -> dict:
    """`result` (the artifact's own parity) with the ARM cross-checks added; its status fails when they do."""
    runtime = targets.get(art.target).runtime
    if art.delegate not in (None, targets.get(art.target).runtime_delegate):
        return result  # e.g. an ExecuTorch Core ML program: no aarch64 runtime runs that delegate here
    used = int8_set[0] if art.precision == "int8" and int8_set is not None else inputs
    checks, emulated = {}, {}
    for cpu in arm.CPUS:
        outputs, facts = arm.run(env, runtime, art.path, used, cpu)
        replayed = dataclasses.replace(art, runner=_replay(used, outputs), cross_checks={})
        measured = parity.classifier_parity(replayed, inputs, expected, device, int8_set)
        emulated[cpu] = np.concatenate([out[0].reshape(1, -1) for out in outputs])
        checks[check_name(cpu)] = {
            "emulator": facts["emulator"], "cpu_model": facts["cpu_model"], "means": arm.CPUS[cpu]["means"],
            "features": facts["features"], "sve_vector_bits": facts["sve_vector_bits"],
            "runtime_version": facts["runtime_version"],
            **({"precision_hint": facts["precision_hint"]} if "precision_hint" in facts else {}),
            **{k: v for k, v in measured.items() if k not in ("reference_device",)}}
    _judge_disagreement(art, checks, emulated)
    failed = [name for name, c in checks.items() if c["status"] != "pass"]
    result = {**result, "cross_checks": {**result.get("cross_checks", {}), **checks}}
    if failed:
        why = "; ".join(f"{name}: {checks[name]['status']} ({checks[name]['gate']})" for name in failed)
        result.update(status="fail", arm_failure=f"failed on ARM (QEMU-emulated aarch64): {why}")
    return result


def _judge_disagreement(art: Artifact, checks: dict, emulated: dict) -> None:
    """Mark every check an emulator disagreement when the two CPUs do not tell the same story."""
    first, second = emulated.values()
    between = parity.compare(first, second)
    consistent = parity.gate(art.target, art.precision, between)[0] == "pass"
    if len({c["status"] for c in checks.values()}) > 1 or not consistent:
        for c in checks.values():
            c.update(status=DISAGREEMENT, between_cpus=between.as_dict())
