"""Export orchestration: build once, export per target, prove parity, write everything atomically."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edge_crossformer import targets
from edge_crossformer.checkpoint import HEAD_SEED
from edge_crossformer.cli import disk_full
from edge_crossformer.compression import is_compressed, weight_scheme
from edge_crossformer.files import (OutputBusy, free_bytes, json_safe, output_lock, private_tmpdir, remove,
                                    signals_deferred, staging_dir, sweep_stale)
from edge_crossformer.host import host_isa
from edge_crossformer.util import progress_bar, quiet_converters

from . import arm_parity, parity
from .base import Artifact, TargetContext
from .compression import held_out_images as judged_on_held_out, manifest_entry as compression_entry
from .diagnose import diagnose_artifact
from .speed_check import warning as speed_warning
from .manifest import build_manifest, sha256_of
from .prepare import SAMPLES, ModelSource
from .request import ExportError, ExportRequest
from .sizes import resize_spec
from .flags import flags_for, flags_given

def check_backends(req: ExportRequest) -> None:
    """Fail before any work when a target's package (or INT8's quantizer) is missing, naming the install command."""
    for name in req.targets:
        packages = targets.get(name).packages
        if req.precision_for(name) == "int8" and req.int8_activations == "static":
            packages += (targets.QUANTIZER[0],)
        if is_compressed(req.precision_for(name)):
            packages += targets.get(name).weight_packages
        for package in packages:
            if importlib.util.find_spec(package) is None:
                raise ExportError(f"target {name} needs the '{package}' package, which is not installed: "
                                  f"{targets.install_hint(package)}")


# This project's own code: an error of the kinds below raised on one of its lines is a bug, not a converter's
# verdict on the model, and propagates with its traceback.
OWN_CODE = tuple(str(Path(__file__).resolve().parents[1] / package) + os.sep
                 for package in ("edge_crossformer", "export", "quantize"))
BUG_TYPES = (NameError, AttributeError, TypeError, KeyError, IndexError, AssertionError, ZeroDivisionError)


def raised_by_converter(error: BaseException) -> bool:
    """Whether a target's exception is a converter or runtime failing on this model (recorded in the manifest, the
    other targets go on) rather than a programming error in this project (raised). Errors raised inside a
    converter's Python code, and any other error a native call raises through ours (RuntimeError, ValueError, a
    converter's own types), count as the converter's."""
    tb, filename = error.__traceback__, ""
    while tb is not None:
        filename, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return not (isinstance(error, BUG_TYPES) and os.path.abspath(filename).startswith(OWN_CODE))


def structural_checks(art: Artifact) -> list[dict]:
    """Facts the rewrite guarantees, checked on the artifact itself (not on the torch graph)."""
    checks = []
    if "ops_outside_delegate" in art.info and art.delegate:
        n = art.info["ops_outside_delegate"]
        checks.append({"check": f"no compute op outside the {art.delegate} delegate", "value": n, "ok": n == 0})
    if "max_rank" in art.info:
        checks.append({"check": "tensor rank <= 4", "value": art.info["max_rank"], "ok": art.info["max_rank"] <= 4})
    if "gather_ops" in art.info:
        checks.append({"check": "no gather ops", "value": art.info["gather_ops"], "ok": art.info["gather_ops"] == 0})
    sat = art.info.get("saturation_check")
    if sat is not None and not art.info["int8_weights"].startswith("full"):
        # Asked for 7-bit weights: the file must prove it. With --full-range-int8-weights the check is recorded, not
        # gated (the user chose VNNI / AMX / Arm-only deployment).
        checks.append({"check": "x86 INT8 weights cannot saturate int16 pair sums (CPUs without VNNI)",
                       "value": sat["layers_at_risk"] + len(sat["unchecked"]), "ok": sat["saturation_safe"]})
    return checks


def run_export(req: ExportRequest, console: Console | None = None) -> tuple[int, dict]:
    """Export every requested target into req.output; returns (exit code, manifest).

    Everything is built in a staging directory beside the output (converters' temporary files included) that
    replaces the output only when complete; on any way out (error, Ctrl-C, SIGTERM, full disk) it is removed, and a
    run killed outright leaves one that the next run removes. One export at a time per output directory."""
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    check_backends(req)
    arm_env = arm_parity.environment(req)
    output = Path(req.output)
    try:
        with output_lock(output):
            for stale in sweep_stale(output):
                console.print(f"removed {stale}, left behind by a run that was killed")
            started = time.time()
            staging = staging_dir(output)
            try:
                with private_tmpdir(staging / SCRATCH), quiet_converters():
                    manifest = _export_into(req, staging, console, arm_env)
                _publish(staging, output)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except OutputBusy as e:
        raise ExportError(str(e)) from None
    _summary(console, manifest, output, time.time() - started)
    return (0 if manifest["status"] == "pass" else 1), manifest


# Converters' temporary files (TMPDIR) inside the staging directory: removed with it, whatever happens.
SCRATCH = ".tmp"
# Bytes per parameter of a target's file at each precision (times the target's files_per_param), doubled below for
# the converters' temporary copies.
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1.2}
# Compressed weights: their bits, plus scales / tables and the layers kept at 8 bits; int8+SCHEME as SCHEME.
BYTES_PER_PARAM.update({p: 1.2 if s.bits == 8 else 0.4 + s.bits / 8 for p in targets.PRECISIONS
                        if (s := weight_scheme(p)) is not None})


def check_free_space(req: ExportRequest, params: int, output: Path) -> None:
    """Refuse up front when the artifacts cannot fit (a full disk in the middle is still caught: cli.run_cli)."""
    needed = 32 << 20
    for name in req.targets:
        needed += int(2 * params * BYTES_PER_PARAM[req.precision_for(name)] * targets.get(name).files_per_param)
    free = free_bytes(output.parent)
    if free < needed:
        raise ExportError(f"not enough free disk space under {output.parent}: the export needs about "
                          f"{needed / 1e6:.0f} MB, {free / 1e6:.0f} MB are free; free some space or choose another "
                          "--output")


def _export_into(req: ExportRequest, staging: Path, console: Console, arm_env=None) -> dict:
    source = ModelSource(req)
    artifacts: list[Artifact] = []
    failures: list[dict] = []
    with progress_bar(console=console, transient=False) as bar:
        task = bar.add_task("loading model", total=len(req.targets) + 2)
        reference = source.reference  # loads the checkpoint: bad checkpoints fail here, before any export
        check_free_space(req, sum(p.numel() for p in reference.parameters()), Path(req.output))
        if req.task == "classify" and req.dynamic_size is None:
            inputs = parity.eight_bit(parity.parity_inputs(req.img_size, resize_spec(req), req.parity_samples,
                                                           SAMPLES))
            expected, device = parity.reference_logits(reference, inputs)
        else:  # a backbone, or a range of sizes: checked per size (and per map), below
            inputs = expected = device = None
        bar.advance(task)
        for target in req.targets:
            precision = req.precision_for(target)
            step = lambda message, t=target: bar.update(task, description=f"{t}: {message}")  # noqa: E731
            ctx = TargetContext(targets.get(target), req, source, staging, precision, step)
            before = {p.name for p in staging.iterdir()}
            made: list[Artifact] = []
            try:
                made = targets.get(target).backend().export(ctx)
            except ExportError:
                raise
            except Exception as e:  # a converter failing on this model: recorded, the other targets go on
                if disk_full(e) or not raised_by_converter(e):
                    raise
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                failures.append({"target": target, "precision": precision,
                                 "error": f"{type(e).__name__}: {first}"})
                if os.environ.get("EDGE_CROSSFORMER_DEBUG"):
                    traceback.print_exc()
            finally:
                # The one rule: what a target leaves in the output is an artifact the manifest lists, or nothing.
                _remove_unlisted(staging, before, made)
            if ctx.weights is not None and req.max_accuracy_drop is not None:
                for art in made:  # the search's outcome, measured on the file itself below
                    art.info["accuracy_control"] = source.weight_control_info(ctx.weights)
            artifacts.extend(made)
            bar.advance(task)
        bar.update(task, description="parity")
        int8_set = None
        if req.task == "classify" and any(judged_on_held_out(a.precision, req) for a in artifacts):
            data = source.int8_data
            held = parity.eight_bit(data.parity.numpy())
            int8_set = (held, parity.reference_logits(reference, held)[0], data.parity_labels.numpy(), data.source)
        if arm_env is not None:
            bar.update(task, description="parity, and again on emulated aarch64 (minutes)")
        diagnosis = BriefDiagnosis(source, Path(req.output),
                                   lambda file: bar.update(task, description=f"parity failed: diagnosing {file}"))
        entries = [_parity_entry(art, inputs, expected, device, int8_set, source, arm_env, diagnosis)
                   for art in artifacts]
        params = sum(p.numel() for p in reference.parameters())
        for entry, art in zip(entries, artifacts):  # what a compressed artifact's weights became, and its size
            if "compression" in art.info:
                entry["compression"] = compression_entry(entry["info"].pop("compression"), entry["bytes"], params)
        entries = [_features_parity(entry, art, reference, req, source) if inputs is None else entry
                   for entry, art in zip(entries, artifacts)]
        for entry in entries:  # what each given flag did to this artifact (export.flags.FLAGS)
            entry["flags"] = flags_for(req, entry["target"], entry["precision"])
        bar.advance(task)
        bar.update(task, description="done")
    if req.task == "classify":
        with open(staging / "labels.txt", "w", encoding="utf-8") as f:
            f.write("\n".join(req.labels) + "\n")
    ckpt = req.checkpoint
    source_info = {"checkpoint": str(ckpt) if ckpt else f"bundled ({req.model})",
                   "checkpoint_sha256": sha256_of(Path(ckpt))[0] if ckpt else None,
                   "exported_model": "reference" if req.reference_model else "export_friendly",
                   "parity_reference": "faithful reference model (edge_crossformer.reference), float32"}
    if req.task == "features":
        source_info["parity_reference"] = ("faithful backbone (edge_crossformer.reference_backbone, upstream's "
                                           "detection / segmentation backbone), float32")
        backbone = reference.model
        if hasattr(backbone, "checkpoint_kind"):
            source_info.update(checkpoint_kind=backbone.checkpoint_kind, ignored_keys=len(backbone.ignored_keys),
                               ignored_key_examples=backbone.ignored_keys[:5])
    if source.head_reset:
        source_info["head"] = (f"reset: a new {req.num_classes}-class head drawn from seed {HEAD_SEED}, to be "
                               "fine-tuned; its logits mean nothing yet")
    manifest = {**build_manifest(req, entries, failures, source_info), "flags": flags_given(req)}
    if "int8_data" in vars(source):  # INT8 images were read: what was read, skipped and how labels matched
        manifest["int8_calibration"] = source.int8_data.report
    manifest = json_safe(manifest)
    shutil.rmtree(staging / SCRATCH, ignore_errors=True)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return manifest


def _features_parity(entry: dict, art: Artifact, reference, req: ExportRequest, source: ModelSource) -> dict:
    """A backbone artifact's parity (per output level), or a range classifier's, at every size it serves that
    parity checks."""
    if art.runner is None:
        return entry
    structure_ok = all(c["ok"] for c in entry["checks"])
    held = source.int8_data if art.precision == "int8" else None
    result = (parity.features_parity(art, reference, req, SAMPLES, held) if req.task == "features"
              else parity.classifier_range_parity(art, reference, req, SAMPLES))
    # The parity gate's own verdict, kept apart from the structural checks' (the console names what failed).
    result["gate_status"] = result["status"]
    result["status"] = result["status"] if structure_ok else "fail"
    result["runtime_host"] = host_isa()
    if "runtime" in art.info:
        result["runtime"] = art.info["runtime"]
    entry["parity"] = result
    return entry


def _remove_unlisted(staging: Path, before: set[str], artifacts: list[Artifact]) -> None:
    """Remove what a target wrote besides its artifacts (a failed target: everything), and its temporary files."""
    listed = {a.path.name for a in artifacts} | {p.name for a in artifacts for p in a.extra_files}
    for entry in staging.iterdir():
        if entry.name == SCRATCH:
            for leftover in entry.iterdir():
                remove(leftover)
        elif entry.name not in before and entry.name not in listed:
            remove(entry)


def _accuracy_control(art: Artifact, source: ModelSource) -> tuple[bool, str | None]:
    """Measure the drop --max-accuracy-drop asked for on the artifact itself (its runtime, the search images);
    where it cannot run here (Core ML off macOS), the search's simulation is what there is. (met, why not)"""
    control = art.info["accuracy_control"]
    if art.runner is not None:
        control["measured_drop_pp"] = source.search_drop(art.runner)
        control["measured_on"] = art.info.get("runtime", f"{art.target} runtime")
        drop = control["measured_drop_pp"]
    else:
        drop = control.get("simulated_drop_pp", float("inf"))
        control["measured_on"] = "simulation only (the runtime cannot run here)"
    met = drop <= control["max_drop_pp"] + 1e-9 and control.get("met_in_simulation", True)
    control["met"] = met
    if met:
        return True, None
    if "kept_8bit" in control:  # compressed weights
        kept, how = control["kept_8bit"], "kept at 8 bits beyond the scheme's defaults"
        hint = "; allow a larger drop, or export --precision w8 (8-bit weights)"
    else:
        kept, how = control.get("kept_float") or [], "kept float"
        target = targets.get(art.target)
        hint = "; allow a larger drop or fine-tune with python -m quantize qat" + (
            f"; {target.runtime_name}'s --int8-activations dynamic keeps activations float between linears (0.02 pp "
            "on crossformer-fmnist with ExecuTorch)" if "dynamic" in target.int8_activations else "")
    if not control.get("met_in_simulation", True):
        detail = (f"with every layer kept at 8 bits it still lost {control['simulated_drop_pp']:.2f} pp"
                  if "kept_8bit" in control else "only every layer kept float would")
        return False, (f"--max-accuracy-drop {control['max_drop_pp']} not met: in simulation on {control['images']}, "
                       f"{detail} (the file measured {drop:.2f} pp), so {art.precision} buys nothing at this bar"
                       + hint)
    return False, (f"--max-accuracy-drop {control['max_drop_pp']} not met: drop {drop:.2f} pp on {control['images']}"
                   f" with {len(kept)} layer(s) {how}" + (f" (e.g. {', '.join(kept[:3])})" if kept else "") + hint)


# A failed gate is diagnosed while the export runs (export.diagnose, brief: 2 inputs, no INT8 simulation); a
# diagnosis starts only while the export's diagnoses together have taken less than this; the rest point to the command.
DIAGNOSIS_BUDGET_S = 300.0
DIAGNOSIS_WORST = 5


class BriefDiagnosis:
    """Where a failed artifact departs, for its manifest entry (`parity.diagnosis`) and the failure line. Never fails
    the export further: any exception is recorded, not raised."""

    def __init__(self, source: ModelSource, output: Path, note=None, budget_s: float = DIAGNOSIS_BUDGET_S):
        self.source, self.output, self.note, self.budget_s, self.spent_s = source, output, note, budget_s, 0.0

    def command(self, file: str) -> str:
        return f"python -m export diagnose {shlex.quote(str(self.output))} --artifact {shlex.quote(file)}"

    def __call__(self, art: Artifact) -> dict:
        found = {"command": self.command(art.path.name)}
        if self.spent_s >= self.budget_s:
            found["skipped"] = f"this export's diagnoses took {self.spent_s:.0f} s already (budget {self.budget_s:g} s)"
            return found
        if self.note:
            self.note(art.path.name)
        started = time.time()
        try:
            result = diagnose_artifact(art.path, art.target, art.precision, self.source, delegate=art.delegate,
                                       brief=True)
            rows = {row["layer"]: row for row in result["layers"]}
            key = "kernel_rel" if result["gated_on"].startswith("runtime vs INT8") else "rel"
            found.update({k: result[k] for k in ("summary", "first_over_gate", "first_block_over_gate", "gate",
                                                 "gated_on", "runtime", "samples")},
                         worst=[{"layer": name, "rel": rows[name].get(key), "cosine": rows[name].get("cosine")}
                                for name in result["worst"][:DIAGNOSIS_WORST]])
        except Exception as e:  # noqa: BLE001 (a failed diagnosis is a note in the manifest, not the export's end)
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            found["error"] = f"{type(e).__name__}: {first}".rstrip(": ")
            if os.environ.get("EDGE_CROSSFORMER_DEBUG"):
                traceback.print_exc()
        found["seconds"] = round(time.time() - started, 1)
        self.spent_s += found["seconds"]
        return found


def _parity_entry(art: Artifact, inputs: np.ndarray, expected: np.ndarray, device: str, int8_set,
                  source: ModelSource, arm_env=None, diagnose=None) -> dict:
    digest, size = sha256_of(art.path)
    entry = {"target": art.target, "delegate": art.delegate, "precision": art.precision, "file": art.path.name,
             "sha256": digest, "bytes": size}
    if art.extra_files:
        entry["extra_files"] = [{"file": p.name, "sha256": digest_, "bytes": size_}
                                for p in art.extra_files for digest_, size_ in [sha256_of(p)]]
        entry["bytes"] += sum(f["bytes"] for f in entry["extra_files"])
    checks = structural_checks(art)
    if "accuracy_control" in art.info:
        met, why = _accuracy_control(art, source)
        what = "INT8" if art.precision == "int8" else f"{art.precision} weights'"
        checks.append({"check": f"{what} drop <= {art.info['accuracy_control']['max_drop_pp']} pp "
                                f"(--max-accuracy-drop)", "value": why or "met", "ok": met})
    structure_ok = all(c["ok"] for c in checks)
    if "saturation_check" in art.info:
        entry["saturation_safe"] = art.info["saturation_check"]["saturation_safe"]
    if art.runner is None:
        result = {"reference_device": device or "cpu", "status": "skipped" if structure_ok else "fail",
                  "reason": art.skip_reason}
    elif inputs is None:
        result = {}  # a backbone: export.features measures it (_features_parity)
    else:
        result = parity.classifier_parity(art, inputs, expected, device, int8_set)
        if result["status"] == "fail" and diagnose is not None:  # this machine's gate: where the artifact departs
            result["diagnosis"] = diagnose(art)
        if arm_env is not None:
            result = arm_parity.verify(art, result, inputs, expected, device, int8_set, arm_env)
        # Where it ran: INT8 (and BF16) arithmetic depends on the CPU's ISA (edge_crossformer.host).
        result.update(status=result["status"] if structure_ok else "fail", gate_status=result["status"],
                      runtime_host=host_isa(),
                      **({"runtime": art.info["runtime"]} if "runtime" in art.info else {}))
    entry["parity"] = result
    entry["checks"] = checks
    entry["info"] = art.info
    return entry


def _publish(staging: Path, output: Path) -> None:
    """Swap the finished staging directory into place; the old output disappears only after that. A signal between
    the two renames would lose both: signals wait until the swap is done."""
    with signals_deferred():
        trash = staging_dir(output, "old") if output.exists() else None
        if trash is not None:
            os.replace(output, trash / output.name)
        os.replace(staging, output)
        os.chmod(output, 0o755)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# What a failed parity gate reports, per precision: the measured values its rule bounds.
GATE_METRICS = {"fp32": ("rel_max", "top1_agreement"), "fp16": ("psnr_db", "top1_agreement"),
                "int8": ("top1_agreement", "top1_drop_pp", "cosine"),
                **{p: ("top1_agreement", "top1_drop_pp", "cosine") for p in targets.PRECISIONS if is_compressed(p)}}


def failed_checks(entry: dict) -> list[str]:
    """Each check a manifest artifact failed, in words: a structural check with what was found, or the parity rule
    with the measured values it bounds."""
    failed = [f"{c['check']} (found: {c['value']})" for c in entry.get("checks", []) if not c["ok"]]
    parity_ = entry["parity"]
    if parity_.get("gate_status", parity_.get("status")) == "fail" and parity_.get("gate"):
        measured = ", ".join(f"{key} {parity_[key]:.4g}" for key in GATE_METRICS.get(entry["precision"], ())
                             if isinstance(parity_.get(key), (int, float)))
        failed.append(f"parity: {parity_['gate']} (measured: {measured or 'see the manifest'})")
    if parity_.get("output_contract"):
        failed.append(f"output contract: {parity_['output_contract']}")
    return failed


def _diagnosis_line(found: dict | None) -> str:
    """What the brief diagnosis of a failed gate found, and the command that shows it layer by layer."""
    if not found:
        return ""
    what = found.get("summary") or (f"diagnosis failed: {found['error']}" if "error" in found
                                    else f"not diagnosed: {found.get('skipped')}")
    return f"\n  [red]{what}[/red]\n  layer by layer: {found['command']}"


def _summary(console: Console, manifest: dict, output: Path, seconds: float) -> None:
    size = manifest["img_size"]
    if manifest.get("task") == "features":
        sizes = manifest["sizes"]
        size = {"fixed": lambda: f"{sizes['height']}x{sizes['width']}",
                "range": lambda: f"{sizes['min']}-{sizes['max']} (any multiple of 32)",
                "list": lambda: ", ".join(f"{h}x{w}" for h, w in sizes["sizes"])}[sizes["kind"]]()
        size = f"backbone, {len(manifest['outputs'])} maps, {size}"
    if manifest.get("task") != "features" and "sizes" in manifest:
        size = f"{manifest['sizes']['min']}-{manifest['sizes']['max']} (any multiple of 32)"
    table = Table(title=f"{manifest['model']} @ {size}px -> {output}  ({seconds:.0f} s)")
    for col in ("artifact", "MB", "max |err| / max|ref|", "cosine", "PSNR dB", "top-1 agree", "outside delegate",
                "status"):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for a in manifest["artifacts"]:
        p = a["parity"]
        outside = a["info"].get("ops_outside_delegate")
        status = p["status"] + (" *" if p.get("reason") else "")
        if p["status"] == "fail":  # which check: structural (their names) or the parity gate
            status += f" ({'; '.join(c.split(' (')[0] for c in failed_checks(a)) or 'see below'})"
        style = {"pass": "green", "fail": "red"}.get(p["status"], "yellow")
        table.add_row(a["file"], f"{a['bytes'] / 1e6:.1f}", _fmt(p.get("rel_max"), ".2e"), _fmt(p.get("cosine"), ".6f"),
                      _fmt(p.get("psnr_db"), ".1f"), _fmt(p.get("top1_agreement"), ".0%"),
                      "-" if outside is None else str(outside), f"[{style}]{status}[/{style}]")
    for f in manifest["failures"]:
        table.add_row(f"{f['target']} ({f['precision']})", "-", "-", "-", "-", "-", "-", f"[red]failed: {f['error']}[/red]")
    console.print(table)
    reasons = sorted({a["parity"]["reason"] for a in manifest["artifacts"] if a["parity"].get("reason")})
    for reason in reasons:
        console.print(f"* prediction skipped: {reason}; structural checks recorded in the manifest")
    for a in manifest["artifacts"]:
        if a["parity"].get("arm_failure"):
            console.print(f"[red]{a['file']}: {a['parity']['arm_failure']}[/red]")
        if a.get("saturation_safe") is False:
            sat = a["info"]["saturation_check"]
            console.print(f"[yellow]{a['file']}: {sat['layers_at_risk']} INT8 layer(s) can saturate on x86 CPUs "
                          f"without VNNI (AVX2, AVX-512 without VNNI); results there will differ from this "
                          f"machine's[/yellow]")
    for a in manifest["artifacts"]:
        slower = speed_warning(a["file"], a["info"].get("int8_speed"))
        if slower:
            console.print(f"[yellow]warning: {slower}[/yellow]")
    for a in manifest["artifacts"]:
        for check in failed_checks(a) if a["parity"]["status"] == "fail" else ():
            where = _diagnosis_line(a["parity"].get("diagnosis")) if check.startswith("parity:") else ""
            console.print(f"[red]{a['file']} failed: {check}[/red]{where}", soft_wrap=bool(where))
    skipped = manifest.get("int8_calibration", {}).get("skipped_files")
    if skipped:
        examples = manifest["int8_calibration"]["examples"]
        console.print(f"[yellow]INT8 data: {skipped} unreadable image file(s) skipped in "
                      f"{manifest['int8_calibration']['source']} (e.g. {examples[0]}); listed in the manifest's "
                      "int8_calibration[/yellow]")
    console.print(f"manifest: {output / 'manifest.json'}   overall: {manifest['status']}")
