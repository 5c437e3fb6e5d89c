#!/usr/bin/env bash
# Builds and tests the demo apps' platform-free cores on Linux, against apps/golden/golden.json:
#   kotlin     apps/android/core (pure JVM): compile, run its JUnit tests
#   executorch apps/android/app/.../ExecuTorchProgram.kt compiled against the ExecuTorch API stub (apps/ci/executorch-stub)
#   swift      apps/ios/CrossFormerKit's CrossFormerCore: `swift build` + `swift test` in the trixie root
# Usage: apps/ci/build_cores.sh [kotlin|executorch [FILE.kt]|swift|all]   (default: all)
# Toolchains come from .ci/apps-toolchains (same cache folder); a missing one is an error that names it.
set -euo pipefail
APPS="$(cd "$(dirname "$0")/.." && pwd)"
REPO="$(dirname "$APPS")"
CACHE="${EDGE_CROSSFORMER_CACHE:-$HOME/.cache/edge-crossformer}"
KOTLIN_HOME="${KOTLIN_HOME:-$CACHE/kotlin/node_modules/kotlin-compiler}"
SWIFT_ROOT="${EDGE_CROSSFORMER_SWIFT_ROOT:-$CACHE/trixie-swift}"
OUT="${EDGE_CROSSFORMER_APPS_BUILD:-$APPS/android/build/ci}"   # git-ignored (apps/android/.gitignore)
JAVA_LIBS=/usr/share/java
JSON_JAR="$JAVA_LIBS/com.android.json.jar"   # Debian's libandroid-json-java: Android's own org.json
TEST_JARS="$JAVA_LIBS/junit4.jar:$JAVA_LIBS/hamcrest-core.jar:$JSON_JAR"

need() { [ -e "$1" ] || [ -L "$1" ] || { echo "missing $1 ($2); run .ci/apps-toolchains" >&2; exit 3; }; }

kotlinc() {
    need "$KOTLIN_HOME/bin/kotlinc" "JetBrains' Kotlin compiler, npm kotlin-compiler"
    # -Werror: a deprecation in the API the app calls is worth failing CI for.
    "$KOTLIN_HOME/bin/kotlinc" -jvm-target 17 -Werror "$@" 2>&1 | grep -v "^warning: unable to find kotlin-stdlib" || return "${PIPESTATUS[0]}"
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

# swift in a Debian trixie root (this host is bookworm): /proc for the toolchain's $ORIGIN runpath, /dev, and the
# repository bind-mounted at /src, all in a private mount namespace that ends with the command.
build_swift() {
    need "$SWIFT_ROOT/usr/bin/swift" "Swift 6 in a trixie root"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    mkdir -p "$OUT"
    $sudo mkdir -p "$SWIFT_ROOT/src"
    $sudo unshare --mount --fork sh -euc '
        root=$1; repo=$2
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --bind "$repo" "$root/src"
        # The build folder stays in the root (cached between runs), never in the repository.
        exec chroot "$root" env HOME=/root PATH=/usr/bin:/bin sh -euc "
            cd /src/apps/ios/CrossFormerKit
            swift build --scratch-path /var/tmp/crossformerkit -c debug
            swift test --scratch-path /var/tmp/crossformerkit
        "' sh "$SWIFT_ROOT" "$REPO"
}

case "${1:-all}" in
    kotlin) build_kotlin ;;
    executorch) check_executorch "${2:-}" ;;
    swift) build_swift ;;
    all) build_kotlin; check_executorch; build_swift ;;
    *) echo "usage: $0 [kotlin|executorch [FILE.kt]|swift|all]" >&2; exit 2 ;;
esac
