"""`python -m export setup-arm`: prepares the emulated aarch64 environment that export/arm.py runs artifacts in.

Made once under export.arm.CACHE and reused while the host's runtime versions stay the same:
  qemu-aarch64   Debian trixie's static QEMU user-mode emulator (10.x; bookworm's 7.2 miscomputes XNNPACK INT8 when
                 SME is advertised and shows the host's x86 /proc/cpuinfo), taken from its .deb, nothing installed
  root/          a Debian bookworm arm64 root (python3.11 = the host's 3.11, libstdc++6, libgomp1, zlib1g) made by
                 mmdebstrap --variant=extract: no emulation needed to build it
  site/          aarch64 wheels of the host's executorch / onnxruntime / openvino / numpy / torch versions
  stubs/         stand-ins for the CUDA libraries the index's aarch64 torch wheel links (export/arm_stubs.py)
Built in a temporary folder and renamed, so an interrupted setup never looks complete. Needs root (apt-get) when
mmdebstrap or aarch64 binutils are missing, and the network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from rich.console import Console

from . import arm, arm_stubs, x86_emulation

MIRROR = "http://deb.debian.org/debian"
ROOT_SUITE = "bookworm"          # its python3.11 matches the host's cp311 wheels
QEMU_SUITE, QEMU_PACKAGE = "trixie", "qemu-user"
ROOT_PACKAGES = ("python3.11", "libstdc++6", "libgomp1", "zlib1g")
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", arm_stubs.AS: arm_stubs.BINUTILS, arm_stubs.LD: arm_stubs.BINUTILS,
              "readelf": "binutils", "dpkg-deb": "dpkg"}
# What the worker imports besides the pinned runtimes: torch (ExecuTorch's pybindings link libtorch_python) and the
# pure-Python packages torch, ONNX Runtime and OpenVINO import. Pinned to the host's versions where it has them.
SUPPORT = ("torch", "typing-extensions", "sympy", "mpmath", "filelock", "fsspec", "networkx", "jinja2", "markupsafe",
           "flatbuffers", "protobuf", "packaging", "backports.strenum", "tqdm", "ml_dtypes")
# pip matches an explicit --platform exactly; list every manylinux tag bookworm's glibc (2.36) can load.
PLATFORMS = [f"manylinux_2_{n}_aarch64" for n in range(17, 37)] + ["manylinux2014_aarch64"]
# Bump when what setup makes changes shape, so older caches are rebuilt.
RECIPE = 1

console = Console(stderr=True, highlight=False)


class SetupError(Exception):
    """A setup step that cannot go on: exit 2 with the reason."""


def _step(text: str) -> None:
    console.print(f"[bold]setup-arm[/bold] {text}")


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise SetupError(f"{what} failed (exit {done.returncode}): {' '.join(cmd[:4])} ...\n{tail}")
    return done


def pins() -> dict[str, str]:
    """package -> version for the emulated site: the host's versions (torch without its local '+cpu' tag: the
    aarch64 wheel of that release is the index's CUDA build)."""
    wanted = {}
    for name in arm.PINNED + SUPPORT:
        try:
            wanted[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            if name in arm.PINNED:
                raise SetupError(f"{name} is not installed on this host; the emulated environment pins the "
                                 f"host's version (pip install -e '.[all]')") from None
            wanted[name] = ""
    return wanted


def _host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise SetupError(f"missing host tools; as root: apt-get install {' '.join(missing)}")
    _step(f"apt-get install {' '.join(missing)}")
    # The lock timeout: CI installs the apps' toolchains with apt-get at the same time.
    _run(["apt-get", "install", "-o", "DPkg::Lock::Timeout=900", "-y", "-qq", "--no-install-recommends", *missing],
         "apt-get install",
         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _qemu_user_deb(apt: Path) -> Path:
    """trixie's qemu-user .deb, downloaded into `apt` through a private apt state (the host's sources stay
    untouched)."""
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb {MIRROR} {QEMU_SUITE} main\n")
    opts = [f"-o=Dir::Etc::sourcelist={apt / 'sources.list'}", "-o=Dir::Etc::sourceparts=-",
            f"-o=Dir::State::Lists={apt / 'lists'}", f"-o=Dir::Cache={apt / 'cache'}",
            "-o=Dir::State::status=/dev/null", "-o=APT::Sandbox::User=root"]
    _run(["apt-get", "-q", *opts, "update"], f"apt-get update ({QEMU_SUITE})")
    _run(["apt-get", "-q", *opts, "download", QEMU_PACKAGE], f"apt-get download {QEMU_PACKAGE}", cwd=apt)
    return next(apt.glob(f"{QEMU_PACKAGE}_*.deb"))


def _extract(deb: Path, binary: str, into: Path) -> None:
    # Only the one binary: the package holds a static emulator for every architecture.
    _run(["sh", "-c", f'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" ./usr/bin/{binary}', "sh", str(deb),
          str(into)], f"extracting {binary}")


def _qemu(work: Path) -> str:
    """qemu-aarch64 (and, on x86 hosts, qemu-x86_64 for export.x86_emulation) from trixie's qemu-user .deb."""
    apt = work / "apt"
    _step(f"{QEMU_PACKAGE} from Debian {QEMU_SUITE} (static qemu-aarch64, user mode)")
    deb = _qemu_user_deb(apt)
    _extract(deb, "qemu-aarch64", apt)
    _x86_emulator(deb)
    qemu = work / arm.EMULATOR
    shutil.move(apt / "usr/bin/qemu-aarch64", qemu)
    shutil.rmtree(apt)
    version = _run([str(qemu), "--version"], "qemu-aarch64 --version").stdout.splitlines()[0]
    return f"{arm.EMULATOR} {version.split()[2]} (user mode)"


def _root(work: Path) -> None:
    _step(f"Debian {ROOT_SUITE} arm64 root with {', '.join(ROOT_PACKAGES)} (mmdebstrap --variant=extract)")
    _run(["mmdebstrap", "--quiet", "--arch=arm64", "--variant=extract", f"--include={','.join(ROOT_PACKAGES)}",
          "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
          "--dpkgopt=path-exclude=/usr/share/locale/*", ROOT_SUITE, str(work / "root"), MIRROR], "mmdebstrap")


def _wheels(work: Path, wanted: dict[str, str]) -> None:
    specs = [f"{name}=={ver}" if ver else name for name, ver in wanted.items()]
    _step(f"aarch64 wheels (cp311): {', '.join(specs)}")
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    # --no-deps: the list is complete for what the worker imports; torch's declared deps would pull 2.9 GB of
    # nvidia wheels that the stand-ins replace.
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target",
          str(work / "site"), *platforms, "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
          *specs], "pip install (aarch64 wheels)")


def _stubs(work: Path) -> None:
    libs = arm_stubs.shared_objects(work / "site" / "torch")
    system = arm_stubs.shared_objects(work / "root/lib/aarch64-linux-gnu", work / "root/usr/lib/aarch64-linux-gnu")
    plan = arm_stubs.plan(libs, system)
    _step(f"stand-ins for {len(plan)} CUDA libraries torch links: {', '.join(sorted(plan))}")
    arm_stubs.build(plan, work / "stubs")


# The versions the stamp records: the pinned runtimes and torch, as the emulated Python reports them.
REPORTED = (*arm.PINNED, "torch")
SMOKE = ("import json, platform, numpy, onnxruntime, openvino, torch, ai_edge_litert.interpreter\n"
         "from importlib.metadata import version\n"
         "from executorch.extension.pybindings import _C\n"
         "print(json.dumps({'machine': platform.machine(), 'backends': list(_C._get_registered_backend_names()),\n"
         f"  **{{p: version(p) for p in {REPORTED!r}}}}}))\n")


def _smoke(work: Path, emulator: str) -> dict:
    """Import every runtime in the emulated Python: the environment counts as made only if this works."""
    env = arm.ArmEnv(root=work / "root", qemu=work / arm.EMULATOR, site=work / "site", stubs=work / "stubs",
                     versions={}, emulator=emulator)
    _step("checking: the emulated python3.11 imports every runtime (about a minute under emulation)")
    done = _run(arm.command(env, "neon", "-c", SMOKE), "emulated import check", env=arm.process_env(env),
                timeout=arm.TIMEOUT_S)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if seen["machine"] != "aarch64" or "XnnpackBackend" not in seen["backends"]:
        raise SetupError(f"emulated import check: unexpected {seen}")
    return seen


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _cached(wanted: dict[str, str]) -> bool:
    stamp = arm.ENV_DIR / arm.STAMP
    if not stamp.is_file():
        return False
    info = json.loads(stamp.read_text())
    return info.get("recipe") == RECIPE and info.get("pins") == wanted


def _make(work: Path, wanted: dict[str, str]) -> None:
    emulator = _qemu(work)
    _root(work)
    _wheels(work, wanted)
    _stubs(work)
    seen = _smoke(work, emulator)
    versions = {name: seen[name] for name in REPORTED}
    (work / arm.STAMP).write_text(json.dumps({"recipe": RECIPE, "pins": wanted, "versions": versions,
                                              "emulator": emulator, "root": f"debian {ROOT_SUITE} arm64"},
                                             indent=1) + "\n")


def _x86_emulator(deb: Path | None = None) -> None:
    """qemu-x86_64 under x86_emulation.DIR (x86 hosts only), from `deb` or a download of its own."""
    target = x86_emulation.DIR / x86_emulation.EMULATOR
    if target.is_file() or platform.machine() != "x86_64":
        return
    with tempfile.TemporaryDirectory(prefix="qemu-x86-", dir=arm.CACHE) as tmp:
        _step(f"{x86_emulation.EMULATOR} for the emulated AVX2-only x86 CPU ({x86_emulation.CPU_MODEL})")
        _extract(deb or _qemu_user_deb(Path(tmp) / "apt"), x86_emulation.EMULATOR, Path(tmp))
        x86_emulation.DIR.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / "usr/bin" / x86_emulation.EMULATOR, target.with_suffix(".part"))
        target.with_suffix(".part").rename(target)


def _usable() -> bool:
    """A stamped environment with a part missing (deleted by hand) is rebuilt, not reported."""
    try:
        arm.environment()
    except arm.ArmUnavailable:
        return False
    return True


def build(force: bool = False) -> Path:
    wanted = pins()
    if not force and _cached(wanted) and _usable():
        _step(f"cached, versions unchanged: {arm.ENV_DIR} ({_size(arm.ENV_DIR) / 1e9:.2f} GB)")
        arm.CACHE.mkdir(parents=True, exist_ok=True)
        _x86_emulator()
        return arm.ENV_DIR
    _host_tools()
    arm.CACHE.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="env.tmp-", dir=arm.CACHE))
    try:
        _make(work, wanted)
        shutil.rmtree(arm.ENV_DIR, ignore_errors=True)
        work.rename(arm.ENV_DIR)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env = arm.environment()
    parts = {"root": _size(env.root), "site": _size(env.site), "stubs": _size(env.stubs),
             "qemu": env.qemu.stat().st_size}
    parts = {k: v / 1e6 for k, v in parts.items()}
    _step(f"ready in {time.monotonic() - start:.0f} s: {env.emulator}, " + ", ".join(
        f"{k} {v}" for k, v in env.versions.items()))
    _step("disk: " + ", ".join(f"{k} {v:.0f} MB" for k, v in parts.items()) + f" = {sum(parts.values()):.0f} MB")
    return arm.ENV_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export setup-arm", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached environment is current")
    args = parser.parse_args(argv)
    try:
        build(force=args.force)
    except (SetupError, arm.ArmUnavailable) as e:
        console.print(f"[red]setup-arm: {e}[/red]")
        return 2
    except subprocess.TimeoutExpired as e:
        console.print(f"[red]setup-arm: {e.cmd[0]} timed out after {e.timeout:.0f} s[/red]")
        return 2
    return 0
