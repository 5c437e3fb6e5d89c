"""The demo apps' platform-free cores, built and tested on Linux (apps/ci/build_cores.sh).

Kotlin: apps/android/core compiled with JetBrains' kotlinc and its JUnit tests run against apps/golden; the app's
ExecuTorch calls (ExecuTorchProgram.kt) compiled against the API stub of the pinned executorch-android version, and
a deliberately wrong call shown to fail. Swift: CrossFormerCore built and `swift test` run in a Debian trixie root.
A missing toolchain skips with the reason (install: .ci/apps-toolchains), or fails when
EDGE_CROSSFORMER_REQUIRE_APP_TOOLCHAINS is set, as .ci/run does, so CI cannot pass by skipping.
What only a Mac or a phone can check is in apps/README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "apps"
BUILD = APPS / "ci" / "build_cores.sh"
STUB = APPS / "ci" / "executorch-stub"
EXECUTORCH_CALLS = APPS / "android" / "app" / "src" / "main" / "java" / "org" / "edgecrossformer" / "demo" / \
    "ExecuTorchProgram.kt"
CACHE = Path(os.environ.get("EDGE_CROSSFORMER_CACHE", Path.home() / ".cache" / "edge-crossformer"))
KOTLINC = Path(os.environ.get("KOTLIN_HOME", CACHE / "kotlin" / "node_modules" / "kotlin-compiler")) / "bin" / \
    "kotlinc"
SWIFT_ROOT = Path(os.environ.get("EDGE_CROSSFORMER_SWIFT_ROOT", CACHE / "trixie-swift"))
JAVA_LIBS = Path("/usr/share/java")


def require(available: bool, what: str) -> None:
    """Skip without the toolchain, unless CI demands it (then it is a failure)."""
    if available:
        return
    reason = f"{what} not installed; run .ci/apps-toolchains"
    if os.environ.get("EDGE_CROSSFORMER_REQUIRE_APP_TOOLCHAINS"):
        pytest.fail(f"{reason} (EDGE_CROSSFORMER_REQUIRE_APP_TOOLCHAINS is set)")
    pytest.skip(reason)


def kotlin_toolchain() -> None:
    jars = ("junit4.jar", "hamcrest-core.jar", "com.android.json.jar")
    require(KOTLINC.exists() and shutil.which("java") is not None, f"the Kotlin compiler ({KOTLINC}) or java")
    require(all((JAVA_LIBS / j).exists() for j in jars), f"{', '.join(jars)} in {JAVA_LIBS} (apt junit4 "
            "libhamcrest-java libandroid-json-java)")


def build(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGE_CROSSFORMER_APPS_BUILD": str(tmp_path / "build")}
    return subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True, env=env, timeout=1200,
                          check=False)


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr)[-6000:]


# ------------------------------------------------------------------------------------------------- without tools
def test_executorch_stub_is_the_version_the_app_pins():
    gradle = (APPS / "android" / "app" / "build.gradle.kts").read_text()
    pinned = re.search(r'val executorchVersion = "([^"]+)"', gradle).group(1)
    assert '"org.pytorch:executorch-android:$executorchVersion"' in gradle
    stub = (STUB / "VERSION").read_text().strip()
    assert stub == pinned, (f"apps/ci/executorch-stub describes executorch-android {stub} but build.gradle.kts pins "
                            f"{pinned}; re-read Module.kt / Tensor.kt / EValue.kt at v{pinned}, update the stub "
                            "(see its README.md), then its VERSION")


def test_only_one_app_file_calls_executorch():
    """Everything else that touches org.pytorch would escape the stub check."""
    callers = sorted(p.relative_to(APPS).as_posix() for p in (APPS / "android").rglob("*.kt")
                     if "org.pytorch.executorch" in p.read_text())
    assert callers == [EXECUTORCH_CALLS.relative_to(APPS).as_posix()]


@pytest.mark.parametrize("folder,forbidden", [
    ("android/core/src", r"^import (android|androidx|org\.pytorch)\."),
    ("ios/CrossFormerKit/Sources/CrossFormerCore", (r"^(@_exported )?import (CoreML|Vision|CoreGraphics|CoreVideo|"
                                                    r"ImageIO|UIKit|SwiftUI|AVFoundation|CoreImage)\b")),
    ("ios/CrossFormerKit/Tests", r"^(@testable )?import (CrossFormerKit|CoreML|Vision|CoreGraphics|ImageIO)\b"),
])
def test_cores_are_platform_free(folder, forbidden):
    """What CI builds on Linux must not need a platform SDK (it would fail there, or worse, be left out)."""
    offenders = [f"{p.relative_to(APPS)}: {line}" for p in (APPS / folder).rglob("*.*") if p.suffix in (".kt", ".swift")
                 for line in p.read_text().splitlines() if re.match(forbidden, line)]
    assert not offenders, "platform imports in a core:\n" + "\n".join(offenders)


# --------------------------------------------------------------------------------------------------- with tools
def test_kotlin_core_passes_its_golden_tests(tmp_path):
    kotlin_toolchain()
    proc = build(tmp_path, "kotlin")
    assert proc.returncode == 0, output(proc)
    ran = re.search(r"^OK \((\d+) tests\)", proc.stdout, re.MULTILINE)
    assert ran and int(ran.group(1)) >= 14, output(proc)


def test_executorch_calls_compile_against_the_pinned_api(tmp_path):
    kotlin_toolchain()
    proc = build(tmp_path, "executorch")
    assert proc.returncode == 0, output(proc)


def test_a_wrong_executorch_call_fails_the_build(tmp_path):
    """The check has teeth: getDataAsFloatArray() (the pre-1.4 Java getter) does not exist in the Kotlin API."""
    kotlin_toolchain()
    source = EXECUTORCH_CALLS.read_text()
    assert ".dataAsFloatArray" in source
    wrong = tmp_path / EXECUTORCH_CALLS.name
    wrong.write_text(source.replace(".dataAsFloatArray", ".getDataAsFloatArray()"))
    proc = build(tmp_path, "executorch", str(wrong))
    assert proc.returncode != 0, "a call that does not exist in executorch-android compiled against the stub"
    assert "unresolved reference 'getDataAsFloatArray'" in output(proc), output(proc)


def test_swift_core_passes_its_golden_tests(tmp_path):
    require((SWIFT_ROOT / "usr" / "bin" / "swift").is_symlink() or (SWIFT_ROOT / "usr" / "bin" / "swift").exists(),
            f"Swift 6 in a trixie root ({SWIFT_ROOT})")
    require(os.geteuid() == 0 or shutil.which("sudo") is not None, "root or sudo (chroot into the Swift root)")
    proc = build(tmp_path, "swift")
    assert proc.returncode == 0, output(proc)
    summary = re.findall(r"Executed (\d+) tests?, with (\d+) failures?", proc.stdout)
    assert summary and int(summary[-1][0]) >= 5 and summary[-1][1] == "0", output(proc)


def test_cores_are_formatted(tmp_path):
    """ktlint (apps/.editorconfig) and swift-format (CrossFormerKit/.swift-format); `build_cores.sh format` fixes."""
    ktlint = Path(os.environ.get("KTLINT", CACHE / "kotlin" / "node_modules" / "@naturalcycles" / "ktlint" /
                                 "resources" / "ktlint"))
    require(ktlint.exists() and shutil.which("java") is not None, f"ktlint ({ktlint}) or java")
    require((SWIFT_ROOT / "usr" / "bin" / "swift").is_symlink(), f"Swift 6 in a trixie root ({SWIFT_ROOT})")
    proc = build(tmp_path, "lint")
    assert proc.returncode == 0, "formatting findings; fix with apps/ci/build_cores.sh format\n" + output(proc)
    assert "swift-format: no findings" in proc.stdout, output(proc)
