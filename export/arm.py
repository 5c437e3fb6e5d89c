"""Artifacts run on the runtimes' aarch64 builds under QEMU user-mode emulation (issue 26; docs/arm.md).

The emulated environment (qemu-aarch64, a Debian arm64 root with python3.11, the aarch64 wheels of the host's
runtime versions) is made once by `python -m export setup-arm` (export/arm_setup.py) under CACHE. `run` starts one
emulated Python per (artifact, CPU) that runs every input through export/arm_worker.py.

Output convention of `run`: one entry per input, each a list of arrays in the artifact's output order (a classifier:
[logits]; a backbone: its maps), every array with the batch dimension (1, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("EDGE_CROSSFORMER_CACHE", "~/.cache/edge-crossformer")).expanduser() / "arm"
ENV_DIR = CACHE / "env"
STAMP = "env.json"
SETUP_COMMAND = "python -m export setup-arm"
EMULATOR = "qemu-aarch64"

# The registry's `Target.runtime` (edge_crossformer/targets.py) -> the package that ships its aarch64 build.
PACKAGES = {"executorch": "executorch", "onnxruntime": "onnxruntime", "openvino": "openvino",
            "litert": "ai-edge-litert"}
RUNTIMES = tuple(PACKAGES)
# The emulated Python needs the host's versions of these: the same kernels the host's parity judged, built for ARM.
PINNED = (*PACKAGES.values(), "numpy")

CPUS = {
    # Features phones have: Armv9 with dotprod, i8mm, bf16 and SVE/SVE2 at the 128-bit vector length phone cores
    # implement (QEMU's default for -cpu max is 512). SME off: few phones have it, and the kernels would switch to
    # SME paths no phone-class check should hinge on.
    "phone": {"cpu_model": "max,sve-default-vector-length=16,sme=off",
              "means": "Armv9-class core: NEON, dotprod, i8mm, bf16, SVE/SVE2 at 128 bits; no SME"},
    # A plain NEON core (Armv8.2: dotprod but no i8mm, no SVE): Raspberry Pi 5 / Graviton 2 class.
    "neon": {"cpu_model": "neoverse-n1",
             "means": "Neoverse-N1 (Cortex-A76 class): NEON with dotprod, no i8mm, no SVE"},
}
# Emulated runs are slow (docs/arm.md); this bounds one (artifact, CPU) subprocess, imports included.
TIMEOUT_S = 900
THREADS = 2
# Tests only: a wrong answer that exists only on the emulated side (arm_worker._fault).
FAULT_ENV = "EDGE_CROSSFORMER_ARM_FAULT"


class ArmUnavailable(Exception):
    """The emulated ARM environment is missing or stale: a user error (exit 2), fixed by the setup command."""

    def __init__(self, why: str):
        super().__init__(f"ARM emulation environment not usable: {why}; run `{SETUP_COMMAND}` "
                         f"(prepares it once under {CACHE})")


@dataclasses.dataclass(frozen=True)
class ArmEnv:
    """A prepared emulation environment: where its parts lie and the versions it holds."""
    root: Path          # Debian arm64 root (the emulator's -L prefix)
    qemu: Path          # static qemu-aarch64 (user mode)
    site: Path          # aarch64 wheels, pip --target
    stubs: Path         # stand-ins for the CUDA sonames of the aarch64 torch wheel (export/arm_stubs.py)
    versions: dict      # package -> version in the emulated environment
    emulator: str       # e.g. "qemu-aarch64 10.0.13 (user mode)"

    @property
    def python(self) -> Path:
        return self.root / "usr/bin/python3.11"

    def runtime_version(self, runtime: str) -> str | None:
        """The version of `runtime`'s package in the emulated environment."""
        return self.versions.get(PACKAGES[runtime])


def host_versions() -> dict[str, str]:
    """The versions the emulated environment must match: those installed on this host."""
    found = {}
    for name in PINNED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def environment(path: Path | None = None) -> ArmEnv:
    """The cached environment; ArmUnavailable if it is missing, incomplete or built for other versions."""
    env_dir = path or ENV_DIR
    stamp = env_dir / STAMP
    if not stamp.is_file():
        raise ArmUnavailable(f"{env_dir} not found")
    info = json.loads(stamp.read_text())
    env = ArmEnv(root=env_dir / "root", qemu=env_dir / EMULATOR, site=env_dir / "site", stubs=env_dir / "stubs",
                 versions=info["versions"], emulator=info["emulator"])
    missing = [str(p) for p in (env.qemu, env.python, env.site, env.stubs) if not p.exists()]
    if missing:
        raise ArmUnavailable(f"incomplete, {', '.join(missing)} missing")
    stale = {name: (ver, env.versions.get(name)) for name, ver in host_versions().items()
             if env.versions.get(name) != ver}
    if stale:
        named = ", ".join(f"{n} host {h} vs emulated {e}" for n, (h, e) in stale.items())
        raise ArmUnavailable(f"built for other versions ({named})")
    return env


def command(env: ArmEnv, cpu: str, *args: str) -> list[str]:
    """The emulated python3.11 on `cpu`, run by the emulator directly (no binfmt_misc: the worker starts no
    child processes, and a child would otherwise run as x86 silently)."""
    return [str(env.qemu), "-L", str(env.root), "-cpu", CPUS[cpu]["cpu_model"], str(env.python), *args]


def process_env(env: ArmEnv) -> dict[str, str]:
    """The emulated process's environment: only what it needs, nothing of the host's Python setup."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(env.site), "LD_LIBRARY_PATH": str(env.stubs),
            "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(CACHE), "LANG": "C.UTF-8",
            # The runtimes' own chatter on stderr would bury a real error's tail.
            "TF_CPP_MIN_LOG_LEVEL": "2", "TORCH_CPP_LOG_LEVEL": "ERROR"}


def run(env: ArmEnv, runtime: str, artifact: Path, inputs: np.ndarray, cpu: str,
        options: dict | None = None) -> tuple[list[list[np.ndarray]], dict]:
    """Run `artifact` on `runtime`'s aarch64 build on the emulated `cpu`, each of `inputs` (float32 [N, 3, H, W])
    as its own batch-1 call. Returns (outputs, facts): outputs[i] = input i's outputs (module docstring).

    options: "precision_hint" (OpenVINO, default "f32": the ARM plugin's own default is f16), "threads",
    "fault" (tests only: the worker adds this fraction of max |output| to every output; default from
    $EDGE_CROSSFORMER_ARM_FAULT, so a test can break the ARM side of a whole export), "timeout_s"."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if cpu not in CPUS:
        raise ValueError(f"cpu {cpu!r}: expected one of {', '.join(CPUS)}")
    options = dict(options or {})
    inputs = np.asarray(inputs, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edge-crossformer-arm-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "inputs.npy", inputs)
        request = {"runtime": runtime, "artifact": str(Path(artifact).resolve()), "inputs": str(tmp / "inputs.npy"),
                   "outputs": str(tmp / "outputs.npz"), "threads": int(options.get("threads", THREADS)),
                   "precision_hint": options.get("precision_hint", "f32"),
                   "fault": float(options.get("fault", os.environ.get(FAULT_ENV, 0.0)))}
        (tmp / "request.json").write_text(json.dumps(request))
        _emulate(env, cpu, tmp, options.get("timeout_s", TIMEOUT_S), runtime, artifact)
        with np.load(tmp / "outputs.npz") as saved:
            worker_facts = json.loads(str(saved["facts"]))
            outputs = [[saved[f"out_{i}_{j}"] for j in range(_count(saved, i))] for i in range(len(inputs))]
    facts = {"emulator": env.emulator, "cpu": cpu, "cpu_model": CPUS[cpu]["cpu_model"],
             "features": worker_facts["features"], "runtime_version": worker_facts["runtime_version"],
             "machine": worker_facts["machine"], "sve_vector_bits": worker_facts["sve_vector_bits"],
             "seconds_per_inference": worker_facts["seconds_per_inference"]}
    if runtime == "openvino":
        facts["precision_hint"] = request["precision_hint"]
    return outputs, facts


def _count(saved, i: int) -> int:
    return sum(1 for key in saved.files if key.startswith(f"out_{i}_"))


def _emulate(env: ArmEnv, cpu: str, tmp: Path, timeout_s: float, runtime: str, artifact: Path) -> None:
    worker = Path(__file__).with_name("arm_worker.py")
    cmd = command(env, cpu, str(worker), str(tmp / "request.json"))
    what = f"{runtime} on emulated aarch64 ({cpu}: -cpu {CPUS[cpu]['cpu_model']}) running {Path(artifact).name}"
    try:
        done = subprocess.run(cmd, env=process_env(env), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what}: no result after {timeout_s:.0f} s") from None
    if done.returncode != 0 or not (tmp / "outputs.npz").is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{what}: exit {done.returncode}\n{tail}")
