"""The other half of issue 28's contract, for the commands besides the export: corrupt or foreign state (a cached
export, a resume state) named in one line with its fix (exit 2, no traceback), nothing timed that its manifest does
not vouch for, and files that belong together replaced together."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main as benchmarks_main
from edge_crossformer.cli import Terminated


def bench(argv) -> int:
    try:
        return benchmarks_main([str(a) for a in argv])
    except SystemExit as e:
        return e.code

# ------------------------------------------------------------------------------ benchmarks: cached exports

LATENCY = ["--model", "crossformer-fmnist", "--quick", "--runtimes", "onnxruntime,openvino", "--no-baseline",
           "--no-memory"]


def _fake_export(req, console=None):
    """Stands in for run_export (seconds instead of minutes): one file per target, OpenVINO's with a .bin beside
    it, each recorded in the manifest with its sha256 as the export records it."""
    out = Path(req.output)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    artifacts = []
    for target in req.targets:
        art = out / f"model_{target}.{'xml' if target == 'openvino' else 'bin'}"
        art.write_bytes(f"{target} {req.precision} graph".encode())
        entry = {"target": target, "delegate": None, "precision": req.precision or "fp32", "file": art.name,
                 "sha256": hashlib.sha256(art.read_bytes()).hexdigest(), "bytes": art.stat().st_size, "info": {}}
        if target == "openvino":
            weights = art.with_suffix(".bin")
            weights.write_bytes(b"openvino weights")
            entry["extra_files"] = [{"file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                                     "bytes": weights.stat().st_size}]
        artifacts.append(entry)
    manifest = {"status": "pass", "artifacts": artifacts, "failures": []}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return 0, manifest


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A latency output whose export cache is filled (by the stand-in export), ready to be damaged."""
    import export

    monkeypatch.setattr(export, "run_export", _fake_export)
    monkeypatch.setattr(export, "validate", lambda req: req)
    out = tmp_path / "bench"
    assert bench([*LATENCY, "--export-only", "--output", out]) == 0
    return out / "artifacts" / "project-fp32"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


DAMAGE = {
    "edited artifact": (lambda f: (f / "model_onnx.bin").write_bytes(b"edited"), "model_onnx.bin does not match"),
    "deleted artifact": (lambda f: (f / "model_onnx.bin").unlink(), "model_onnx.bin is listed in"),
    "truncated OpenVINO weights": (lambda f: _truncate(f / "model_openvino.bin"), "model_openvino.bin does not match"),
    "truncated manifest": (lambda f: _truncate(f / "manifest.json"), "manifest.json is not valid JSON"),
    "foreign manifest": (lambda f: (f / "manifest.json").write_text('{"artifacts": [1]}'), "not an export manifest"),
    "deleted manifest": (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_latency_times_only_what_the_manifest_vouches_for(damage, cached, capsys):
    """A damaged cache stops the benchmark before the GEMM peaks are measured: nothing timed, nothing published;
    the fix the message gives (--reexport) works."""
    harm, message = DAMAGE[damage]
    harm(cached)
    capsys.readouterr()
    out = cached.parents[1]
    assert bench([*LATENCY, "--output", out]) == 2
    err = capsys.readouterr().err
    assert message in err and "--reexport" in err and f"delete {cached}" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (out / "results.json").exists()
    assert bench([*LATENCY, "--export-only", "--reexport", "--output", out]) == 0
    assert bench([*LATENCY, "--export-only", "--output", out]) == 0  # the cache is whole again


def test_android_pushes_only_what_the_manifest_vouches_for(tmp_path, capsys):
    export_dir = tmp_path / "export"
    _fake_export(type("Req", (), {"output": export_dir, "targets": ("executorch",), "precision": "fp32"}))
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["artifacts"][0]["delegate"] = "xnnpack"
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    (export_dir / "model_executorch.bin").write_bytes(b"a .pte that is not the exported one")
    assert bench(["android", "--artifacts", export_dir, "--output", tmp_path / "r.json"]) == 2
    err = capsys.readouterr().err
    assert "model_executorch.bin does not match its manifest" in err and "--overwrite" in err, err
    assert not (tmp_path / "r.json").exists()


def test_latency_accuracy_file_is_checked_before_any_work(tmp_path, capsys):
    bad = tmp_path / "accuracy.json"
    bad.write_text('{"model": ')
    assert bench([*LATENCY, "--accuracy", bad, "--output", tmp_path / "out"]) == 2
    assert "is not an accuracy.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_benchmark_outputs_of_the_wrong_kind_are_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    for argv in ([*LATENCY, "--output", a_file], ["accuracy", "--output", a_file], ["ddp", "--output", a_file],
                 ["merge", a_file, "--output", a_file], ["golden", "--output", tmp_path]):
        assert bench(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is a file; pass a directory" in err or "is a directory; pass a file" in err, (argv, err)
    assert a_file.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_output_file_that_belongs_to_an_input_folder_is_not_replaced(tmp_path, capsys):
    """The reverse of an input inside the output: a data folder that holds a file the command writes."""
    from quantize.__main__ import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "sensitivity.json").write_text("the user's own notes")
    (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    assert main(["sensitivity", "--data", str(tmp_path / "alias"), "--output", str(data)]) == 2
    assert "is inside --data" in capsys.readouterr().err
    assert (data / "sensitivity.json").read_text() == "the user's own notes"


# ------------------------------------------------------------------------------ quantize qat: resume state


def qat(*args) -> int:
    from quantize.__main__ import main

    try:
        return main(["qat", *map(str, args)])
    except SystemExit as e:
        return e.code


def _damaged_truncated(work: Path) -> None:
    torch.save({"model": {"w": torch.zeros(64)}}, work / "last.pt")
    _truncate(work / "last.pt")


RESUME_DAMAGE = {
    "truncated resume state": (_damaged_truncated, "last.pt is not a readable resume state"),
    "not a torch file": (lambda w: (w / "last.pt").write_text("hello"), "last.pt is not a readable resume state"),
    "another tool's state": (lambda w: torch.save({"step": 3}, w / "last.pt"), "last.pt is not a resume state of"),
    "a folder named last.pt": (lambda w: (w / "last.pt").mkdir(), "last.pt is not a readable resume state"),
    "damaged settings": (lambda w: (w / "settings.json").write_text('{"model": "cros'), "settings.json is not a QAT"),
}


@pytest.mark.parametrize("damage", RESUME_DAMAGE)
def test_qat_damaged_resume_state_is_named_with_the_fix_before_any_work(damage, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "q.safetensors"
    work.mkdir()
    harm, message = RESUME_DAMAGE[damage]
    harm(work)
    before = sorted(p.name for p in work.iterdir())
    assert qat("--workdir", work, "--output", out) == 2
    err = capsys.readouterr().err
    assert message in err and "--no-resume" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in work.iterdir()) == before and not out.exists()


def test_resume_state_of_another_model_is_refused_in_one_line(tmp_path):
    """Past the structure check (the keys are there), a state dict that does not fit the model: ResumeError, which
    the commands print as one line, not a RuntimeError traceback from load_state_dict."""
    from edge_crossformer.train import ResumeError, TrainConfig, _save, TrainState, fit

    small, big = torch.nn.Linear(4, 2), torch.nn.Linear(8, 2)
    cfg = TrainConfig(epochs=1, batch_size=2)
    opt = torch.optim.AdamW(small.parameters())
    _save(tmp_path / "last.pt", small, opt, torch.Generator(), TrainState(), cfg)
    with pytest.raises(ResumeError, match="does not fit this run.*--no-resume"):
        fit(big, torch.zeros(2, 1, 2, 4), torch.zeros(2, dtype=torch.long), cfg, workdir=tmp_path)


def test_qat_output_named_like_its_record_is_refused(tmp_path, capsys):
    assert qat("--output", tmp_path / "q.json", "--workdir", tmp_path / "w") == 2
    assert "ends in .json" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ files written together


def test_files_that_belong_together_are_replaced_together_or_not_at_all(tmp_path):
    from edge_crossformer.files import atomic_files

    ckpt, record, stale = tmp_path / "q.safetensors", tmp_path / "q.json", tmp_path / "q.ranges.safetensors"
    for path in (ckpt, record, stale):
        path.write_text("old")
    with pytest.raises(Terminated):
        with atomic_files(ckpt, record, stale=(stale,)) as (a, b):
            a.write_text("new")
            raise Terminated(signal.SIGTERM)  # stopped between writing the checkpoint and its record
    assert [p.read_text() for p in (ckpt, record, stale)] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.ranges.safetensors", "q.safetensors"]
    with atomic_files(ckpt, record, stale=(stale,)) as (a, b):
        a.write_text("new")
        b.write_text("new")
    assert [p.read_text() for p in (ckpt, record)] == ["new"] * 2 and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.safetensors"]


# ------------------------------------------------------------------------------ quantize qat: a real signal


@pytest.mark.skipif(__import__("edge_crossformer.data", fromlist=["x"]).find_fashion_mnist() is None,
                    reason="Debian package dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_qat_killed_while_training_exits_143_and_leaves_nothing_half_written(tmp_path):
    """A real run, in its own process, sent SIGTERM (what `timeout` and torchrun send) once training has begun:
    exit 143, no checkpoint, record or temporary file anywhere, and only complete resume files in the workdir."""
    import os
    import subprocess
    import sys
    import time

    from edge_crossformer.train import read_resume_state

    work, out, scratch = tmp_path / "work", tmp_path / "q.safetensors", tmp_path / "tmp"
    scratch.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "quantize", "qat", "--train-limit", "128", "--val-limit", "32",
                             "--calib-size", "8", "--batch-size", "32", "--epochs", "100", "--threads", "1",
                             "--workdir", str(work), "--output", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # "before QAT on ...": the quantized model is built, training starts next
            if line.startswith("before QAT"):
                break
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM); nothing half-written" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp", "work"]
    assert not list(scratch.iterdir())
    assert set(p.name for p in work.iterdir()) <= {"settings.json", "last.pt"}
    json.loads((work / "settings.json").read_text())
    if (work / "last.pt").exists():  # an epoch finished before the signal: then it is whole
        read_resume_state(work / "last.pt")
