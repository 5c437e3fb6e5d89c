#!/usr/bin/env bash
# Copy what `python -m export` wrote into the demo apps (the apps read everything through manifest.json).
#   apps/copy_artifacts.sh [EXPORT_DIR]     default EXPORT_DIR: artifacts/crossformer-fmnist
# iOS gets the .mlpackage, manifest.json, labels.txt (apps/ios/App/Model/); Android gets the XNNPACK .pte,
# manifest.json, labels.txt (apps/android/app/src/main/assets/). A missing artifact is skipped with a hint.
set -euo pipefail

apps="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${1:-$apps/../artifacts/crossformer-fmnist}"
if [[ ! -f "$src/manifest.json" ]]; then
    echo "error: $src/manifest.json not found; run \`python -m export --target coreml,executorch\` first" \
         "(or pass its --output directory)" >&2
    exit 2
fi

ios="$apps/ios/App/Model"
android="$apps/android/app/src/main/assets"

mlpackages=("$src"/*_coreml_*.mlpackage)
if [[ -d "${mlpackages[0]}" ]]; then
    rm -rf "$ios" && mkdir -p "$ios"
    cp -R "${mlpackages[@]}" "$ios/"
    cp "$src/manifest.json" "$src/labels.txt" "$ios/"
    echo "iOS:     $(cd "$ios" && ls | tr '\n' ' ')-> $ios"
else
    echo "iOS:     skipped, no *_coreml_*.mlpackage in $src (export with --target coreml)" >&2
fi

ptes=("$src"/*_executorch-xnnpack_*.pte)
if [[ -f "${ptes[0]}" ]]; then
    rm -rf "$android" && mkdir -p "$android"
    cp "${ptes[@]}" "$src/manifest.json" "$src/labels.txt" "$android/"
    echo "Android: $(cd "$android" && ls | tr '\n' ' ')-> $android"
else
    echo "Android: skipped, no *_executorch-xnnpack_*.pte in $src (export with --target executorch)" >&2
fi
