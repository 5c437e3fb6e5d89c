"""Stand-ins for the CUDA libraries the index's aarch64 torch wheel links, so ExecuTorch's Python runtime loads on an
emulated CPU without the nvidia wheels (docs/arm.md: sizes and why).

The aarch64 torch wheel on the package index is a CUDA build: libtorch_cpu, libtorch_cuda and libtorch_python NEED
libcudart, libcublas, libcudnn, ... On a CPU none of their functions is reached, but the dynamic linker still wants
every NEEDED soname, every symbol version and every symbol bound at load time. A stand-in is a tiny aarch64 shared
object with that soname, those version nodes and every symbol the torch libraries import from it; each function
returns 100 (cudaErrorNoDevice / CUDA_ERROR_NO_DEVICE), so a stray call reads as "no GPU" instead of a crash.
Built with binutils for aarch64 (assembler + linker, no C library needed).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

BINUTILS = "binutils-aarch64-linux-gnu"
AS, LD = "aarch64-linux-gnu-as", "aarch64-linux-gnu-ld"
# A function's return value when any stand-in is called: "no device" in both the runtime and the driver API.
NO_DEVICE = 100
DYNSYM = re.compile(r"^\s*\d+:\s+[0-9a-f]+\s+\d+\s+(\w+)\s+(\w+)\s+\w+\s+(\w+)\s+(\S+?)(?:@@?(\S+?))?(?:\s+\(\d+\))?$")


@functools.lru_cache(maxsize=None)
def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def _needed(lib: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _readelf("-d", str(lib)))


def _soname(lib: Path) -> str:
    found = re.findall(r"\(SONAME\)\s+Library soname: \[(.+?)\]", _readelf("-d", str(lib)))
    return found[0] if found else lib.name


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def shared_objects(*folders: Path) -> list[Path]:
    """Every ELF shared object under `folders` (symlinks resolved, each file once)."""
    seen: dict[Path, None] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.so*")):
            real = path.resolve()
            if real.is_file() and _is_elf(real):
                seen.setdefault(real)
    return list(seen)


def _symbols(lib: Path) -> tuple[set[str], list[tuple[str, str, str | None, bool]]]:
    """(defined names, undefined [(name, type, version, weak)]) of a library's dynamic symbol table."""
    defined, undefined = set(), []
    for line in _readelf("--dyn-syms", str(lib)).splitlines():
        m = DYNSYM.match(line)
        if not m:
            continue
        kind, bind, ndx, name, version = m.groups()
        if ndx == "UND":
            if name:
                undefined.append((name, kind, version, bind == "WEAK"))
        else:
            defined.add(name)
    return defined, undefined


def missing_sonames(libs: list[Path], available: set[str]) -> dict[str, list[Path]]:
    """Sonames NEEDED by `libs` that no file provides: soname -> the libraries needing it."""
    missing: dict[str, list[Path]] = {}
    for lib in libs:
        for soname in _needed(lib):
            if soname not in available:
                missing.setdefault(soname, []).append(lib)
    return missing


def _version_files(lib: Path) -> dict[str, str]:
    """Version node -> the soname that must define it (the library's .gnu.version_r)."""
    owners, current = {}, None
    for line in _readelf("-V", str(lib)).splitlines():
        if m := re.search(r"File: (\S+)", line):
            current = m.group(1)
        elif (m := re.search(r"Name: (\S+)", line)) and current:
            owners[m.group(1)] = current
    return owners


def plan(libs: list[Path], system_libs: list[Path]) -> dict[str, dict[str, dict[str, str]]]:
    """What each stand-in must hold: soname -> {version node ("" for none) -> {symbol: FUNC|OBJECT}}.

    Versioned imports go to the soname that owns the version; unversioned imports that nothing defines go to the
    first missing soname their library NEEDS (the dynamic linker searches every loaded library for them)."""
    available = {p.name for p in libs + system_libs} | {_soname(p) for p in libs + system_libs}
    missing = missing_sonames(libs, available)
    defined: set[str] = set()
    for lib in libs + system_libs:
        defined |= _symbols(lib)[0]
    stubs: dict[str, dict[str, dict[str, str]]] = {soname: {} for soname in missing}
    for lib in {lib for needing in missing.values() for lib in needing}:
        own = [s for s in _needed(lib) if s in missing]
        owners = _version_files(lib)
        for name, kind, version, weak in _symbols(lib)[1]:
            if owners.get(version) in stubs:
                stubs[owners[version]].setdefault(version, {})[name] = kind
            elif version is None and not weak and name not in defined:
                stubs[own[0]].setdefault("", {})[name] = kind
    return stubs


def _assembly(symbols: dict[str, dict[str, str]]) -> str:
    lines = ["\t.text", "\t.p2align 2", "__stub_no_device:", f"\tmov x0, #{NO_DEVICE}", "\tret"]
    for name, kind in sorted({n: k for syms in symbols.values() for n, k in syms.items()}.items()):
        if kind == "OBJECT":
            # Bound at load time; a zeroed slot big enough for the vtables / typeinfo a CUDA library exports.
            lines += ["\t.data", "\t.p2align 4", f"\t.globl {name}", f"\t.type {name}, %object",
                      f"\t.size {name}, 64", f"{name}:", "\t.zero 64", "\t.text"]
        else:
            lines += [f"\t.globl {name}", f"\t.type {name}, %function", f"{name}:", "\tb __stub_no_device"]
    return "\n".join(lines) + "\n"


def _version_script(symbols: dict[str, dict[str, str]]) -> str:
    """One node per symbol version. Unversioned imports join the last named node: an unversioned reference binds
    to a default (@@) version, and ld refuses an anonymous node beside named ones."""
    named = sorted(v for v in symbols if v)
    if not named:
        return "{\n global:\n" + "".join(f"  {n};\n" for n in sorted(symbols.get("", {}))) + " local: *;\n};\n"
    blocks = []
    for version in named:
        names = sorted(symbols[version]) + (sorted(symbols.get("", {})) if version == named[-1] else [])
        blocks.append(f"{version} {{\n global:\n" + "".join(f"  {n};\n" for n in names) + " local: *;\n};\n")
    return "".join(blocks)


def build(stubs: dict[str, dict[str, dict[str, str]]], out: Path) -> list[Path]:
    """Assemble and link one aarch64 stand-in per soname into `out`."""
    for tool in (AS, LD):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} not found: apt-get install {BINUTILS}")
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for soname, symbols in sorted(stubs.items()):
        src, obj, script = out / f"{soname}.s", out / f"{soname}.o", out / f"{soname}.map"
        src.write_text(_assembly(symbols) if symbols else _assembly({"": {"__stub_unused": "FUNC"}}))
        script.write_text(_version_script(symbols) if symbols else "{ global: *; };\n")
        subprocess.run([AS, "-o", str(obj), str(src)], check=True, capture_output=True)
        subprocess.run([LD, "-shared", "-soname", soname, "--version-script", str(script), "-o",
                        str(out / soname), str(obj)], check=True, capture_output=True)
        for scratch in (src, obj, script):
            scratch.unlink()
        made.append(out / soname)
    return made
