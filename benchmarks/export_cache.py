"""The latency benchmark's export cache (OUTPUT/artifacts): one export per (variant, precision), made once and
reused while the settings it was made with (`.benchmark-settings.json`) still hold, and then only as its manifest
vouches for it (benchmarks/verify.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console

from edge_crossformer import targets as registry
from edge_crossformer.compression import is_compressed
from edge_crossformer.files import atomic_path, remove

from .verify import verified_export

# PyTorch eager, then the runtime of every export target that runs here (edge_crossformer.targets).
TARGET_OF = {t.runtime: t.name for t in registry.runnable()}
# ExecuTorch's INT8 with dynamic activations (`--int8-activations dynamic`), timed as its own precision.
DYNAMIC = "int8-dynamic"
# OpenVINO / ONNX Runtime INT8 with full-range weights (`--full-range-int8-weights`): what the default 7-bit weights
# (saturation-safe on x86 CPUs without VNNI) cost in speed, measured in the same run.
FULL_RANGE = "int8-full-range"
# INT8 made for x86 CPUs without VNNI (`--cpu avx2`), where a target's INT8 differs per CPU (Target.cpu_keep_float):
# timed beside the default INT8 on every host (on a VNNI host it shows what the AVX2 choice costs there).
CPU_AVX2 = "int8-avx2"


def weights(args, cfg, img_size: int, root: Path, console: Console) -> Path | None:
    """The checkpoint to time: --checkpoint (absolute: the memory probes run elsewhere), the bundled weights (None),
    or, for a model without bundled weights, seeded random ones (latency does not depend on the values)."""
    if args.checkpoint is not None:
        return args.checkpoint.resolve()
    if cfg.bundled_checkpoint:
        return None
    path = _random_checkpoint(args.model, img_size, root)
    console.print(f"no --checkpoint: timing {args.model} with seeded random weights ({path.name}); latency does "
                  "not depend on the weights' values")
    return path


def _calibration_folder(args, model: str, root: Path) -> Path | None:
    from edge_crossformer.data import find_fashion_mnist, load_fashion_mnist
    from edge_crossformer.registry import get_config

    if args.calib_data:
        return args.calib_data
    if get_config(model).bundled_checkpoint:
        return None  # the bundled model has its own calibration set
    folder = root / "calibration"
    if folder.exists() and len(list(folder.glob("*.png"))) >= 64:
        return folder
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if find_fashion_mnist(None, "test") is not None:
        images, _ = load_fashion_mnist(None, "test")
        pictures = [images[i * 97] for i in range(64)]
    else:  # seeded smooth synthetic pictures: latency does not depend on what the pixels show
        rng = np.random.default_rng(0)
        pictures = [np.kron(rng.integers(0, 255, (7, 7, 3)), np.ones((32, 32, 1))).astype(np.uint8)
                    for _ in range(64)]
    for i, pic in enumerate(pictures):
        Image.fromarray(np.asarray(pic, dtype=np.uint8)).save(folder / f"calib_{i:03d}.png")
    return folder


def _random_checkpoint(model: str, img_size: int, root: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from edge_crossformer.registry import build_model

    path = root / f"{model}_random-weights_seed0.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        # Upstream's init leaves biases at 0 and LayerNorm at (1, 0), constants that exporters and graph optimizers
        # special-case (ONNX Runtime fused QDQ Gemms with a zero bias that it would not fuse with a trained one):
        # every tensor gets a little noise so the graph is timed as a trained checkpoint's would be.
        state = {k: (v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v).contiguous()
                 for k, v in build_model(model, img_size=img_size).state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"model": model, "note": "random init, seed 0 (latency only)"})
    return path


def export_sets(args, model: str, img_size: int, runtimes: tuple[str, ...], root: Path, console: Console
                 ) -> dict[tuple[str, str], dict]:
    """(variant, precision) -> manifest, exporting what OUTPUT/artifacts does not have yet."""
    from export import ExportRequest, run_export, validate, with_options
    targets = tuple(TARGET_OF[r] for r in runtimes if r in TARGET_OF)
    saturation = tuple(t for t in targets if registry.get(t).x86_pair_sums)
    dynamic = tuple(t for t in targets if "dynamic" in registry.get(t).int8_activations)
    per_cpu = tuple(t for t in targets if registry.get(t).cpu_keep_float)
    if not targets:
        return {}
    calib = _calibration_folder(args, model, root)
    plan = [("project", "fp32"), ("project", "int8")]
    # --quick is a smoke test of the whole tool: the INT8 variants that only compare schemes wait for a full run.
    if dynamic and not args.quick:
        plan.append(("project", DYNAMIC))
    if saturation and not args.quick:
        plan.append(("project", FULL_RANGE))
    # Compressed weights (edge_crossformer.compression) where a target offers them: latency, size, load time and
    # memory (a full run: --quick stays the smoke test it was).
    plan += [("project", p) for p in registry.PRECISIONS if not args.quick
             and is_compressed(p) and any(registry.get(t).supports(p) for t in targets)]
    if per_cpu and not args.quick:
        plan.append(("project", CPU_AVX2))
    if not args.no_baseline:
        plan += [("baseline", "fp32"), ("baseline", "int8")]
    manifests = {}
    from export.manifest import sha256_of

    ckpt_digest = sha256_of(args.checkpoint)[0] if args.checkpoint else "bundled"
    for variant, precision in plan:
        out = root / f"{variant}-{precision}"
        want = targets
        if variant == "project" and precision == "fp32":
            want = tuple(dict.fromkeys(targets + ("coreml",)))  # Core ML structure: op histogram, placement
        if variant == "baseline" and precision == "int8":
            want = tuple(t for t in targets if t != "executorch")  # its FP32 already cannot be lowered
            if not want:
                continue
        if precision == DYNAMIC:
            want = dynamic
        if precision == FULL_RANGE:
            want = saturation
        if is_compressed(precision):
            want = tuple(t for t in targets if registry.get(t).supports(precision))
        if precision == CPU_AVX2:
            want = per_cpu
        settings = {"model": model, "img_size": img_size, "checkpoint": ckpt_digest, "targets": want,
                    "int8_weights": "full range" if precision == FULL_RANGE else "7-bit",
                    "calib": str(calib)}
        stamp = out / ".benchmark-settings.json"
        fix = f"delete {out} (the next run exports it again) or pass --reexport"
        if not args.reexport and _covers(_stamp(stamp), settings):
            # Timed only as the manifest vouches for it: edited, truncated or deleted files stop the run here.
            manifests[(variant, precision)] = verified_export(out, fix)
            continue
        if stamp.exists() and not (out / "manifest.json").exists():
            remove(out)  # this benchmark's own cache folder, its manifest lost: the export would not replace it
        req = ExportRequest(
            targets=want, model=model, checkpoint=args.checkpoint, img_size=img_size,
            precision=base(precision) if not (variant == "project" and precision == "fp32") else None,
            int8_activations="dynamic" if precision == DYNAMIC else None,
            full_range_int8_weights=precision == FULL_RANGE, cpu="avx2" if precision == CPU_AVX2 else None,
            output=out, overwrite=True, reference_model=variant == "baseline",
            # The baseline gets NNCF's default transformer recipe (SmoothQuant on: plain_int8); the project its
            # measured one (the default).
            plain_int8=variant == "baseline")
        # One set of knobs for every variant, each set only where the variant's export uses it (validate refuses
        # a knob an export would ignore).
        with_options(req, calib_data=calib, calib_size=48 if calib is not None or args.quick else 300,
                     parity_samples=2)
        console.print(f"[bold]exporting {variant} {precision}[/] ({', '.join(want)}) -> {out}")
        validate(req)
        _, manifest = run_export(req, console)
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps(settings) + "\n")
        manifests[(variant, precision)] = verified_export(out, fix, manifest)
    return manifests


def _covers(cached: dict | None, wanted: dict) -> bool:
    """A cached export serves a run whose settings it was made with, for the targets it has (a run over fewer
    runtimes, e.g. `python -m benchmarks profile` after the latency benchmark, reuses it)."""
    wanted = json.loads(json.dumps(wanted))
    return cached is not None and set(wanted["targets"]) <= set(cached.get("targets") or ()) and (
        {k: v for k, v in cached.items() if k != "targets"} == {k: v for k, v in wanted.items() if k != "targets"})


def _stamp(path: Path) -> dict | None:
    """The settings a cached export was made with; None when there is none or it is unreadable (export again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def base(precision: str) -> str:
    """The artifact precision behind a benchmarked one ("int8-dynamic", "int8-full-range" -> "int8")."""
    return precision.split("-")[0]
