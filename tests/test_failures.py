"""Every way `python -m export` can fail, by class: the exit code (2 bad input, 1 a failed gate, 128+N a signal), one
message that names what was wrong, and nothing new left in the output's parent or in $TMPDIR."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import export.onnx_target
from edge_crossformer.files import output_lock

from conftest import ROOT, load_manifest


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A work area, an output path inside it and a private $TMPDIR; `check(code, *words)` runs the command and
    asserts the exit code, that stderr holds every word, and that neither place holds anything new."""
    work = tmp_path / "work"
    tmp = tmp_path / "tmpdir"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    class Sandbox:
        out = work / "out"
        root = work

        def run(self, *args) -> int:
            from export.__main__ import main

            try:
                return main([str(a) for a in ("--output", self.out, *args)])
            except SystemExit as e:  # argparse
                return e.code

        def check(self, capsys, code: int, *args, words=(), keep=()):
            before = sorted(p.name for p in work.iterdir())
            got = self.run(*args)
            err = capsys.readouterr().err
            assert got == code, err
            for word in words:
                assert word.lower() in err.lower(), err
            after = sorted(p.name for p in work.iterdir())
            assert after == before or set(after) - set(before) <= set(keep), after
            assert list(tmp.iterdir()) == [], list(tmp.iterdir())
            return err

    return Sandbox()


# --- checkpoints -----------------------------------------------------------------------------------------------

def _truncated(checkpoints, work: Path) -> Path:
    data = checkpoints("crossformer-fmnist").read_bytes()
    path = work / "truncated.pth"
    path.write_bytes(data[:len(data) // 2])
    return path


def _nan_weights(checkpoints, work: Path) -> Path:
    state = torch.load(checkpoints("crossformer-fmnist"), weights_only=True)["model"]
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    path = work / "nan.pth"
    torch.save({"model": state}, path)
    return path


def _pickled_code(checkpoints, work: Path) -> Path:
    path = work / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "run": os.system}, path)
    return path


def _file(name: str, data: bytes):
    def make(checkpoints, work: Path) -> Path:
        (work / name).write_bytes(data)
        return work / name
    return make


CHECKPOINTS = {
    "missing": (lambda c, w: w / "nope.pth", ["not found"]),
    "directory": (lambda c, w: w, ["not a file"]),
    "empty": (_file("empty.pth", b""), ["not a pytorch checkpoint"]),
    "text": (_file("notes.pth", b"hello"), ["not a pytorch checkpoint"]),
    "truncated": (_truncated, ["not a pytorch checkpoint"]),
    "nan weights": (_nan_weights, ["non-finite", "diverged"]),
    "python objects": (_pickled_code, ["refuses to unpickle"]),
    "other variant": (lambda c, w: c("crossformer-t"), ["does not fit", "crossformer-t"]),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_bad_checkpoint(case, sandbox, checkpoints, capsys):
    make, words = CHECKPOINTS[case]
    path = make(checkpoints, sandbox.root)
    sandbox.check(capsys, 2, "--target", "onnx", "--checkpoint", path, words=words)


# --- labels ----------------------------------------------------------------------------------------------------

LABELS = {
    "latin-1": ("Ångström\n".encode("latin-1") * 10, ["not utf-8", "offset"]),
    "utf-16": ("\n".join(f"c{i}" for i in range(10)).encode("utf-16"), ["utf-16"]),
    "nul bytes": (b"\0" * 40, ["nul"]),
    "line count": (b"a\nb\n", ["2 lines", "10 classes"]),
    "empty line": (b"a\nb\n\nd\ne\nf\ng\nh\ni\nj\n", ["empty labels", "line(s) 3"]),
}


@pytest.mark.parametrize("case", sorted(LABELS))
def test_bad_labels(case, sandbox, capsys):
    content, words = LABELS[case]
    path = sandbox.root / "labels.txt"
    path.write_bytes(content)
    sandbox.check(capsys, 2, "--target", "onnx", "--labels", path, words=words)


def test_labels_directory_and_bom(sandbox, capsys, tmp_path):
    sandbox.check(capsys, 2, "--target", "onnx", "--labels", sandbox.root, words=["directory"])
    from export.request import read_labels

    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff".encode() + "\r\n".join(f"cls {i}" for i in range(3)).encode() + b"\r\n")
    assert read_labels(path, 3) == ["cls 0", "cls 1", "cls 2"]


# --- sizes and knobs -------------------------------------------------------------------------------------------

ARGUMENTS = {
    "img-size not /32": (["--img-size", "33"], ["--img-size", "multiple of 32", "32 or 64"]),
    "img-size huge": (["--img-size", "4096"], ["--img-size", "1024"]),
    "img-size negative": (["--img-size", "-32"], ["--img-size"]),
    "img-size text": (["--img-size", "big"], ["--img-size", "integer"]),
    "num-classes 0": (["--num-classes", "0"], ["--num-classes"]),
    "num-classes huge": (["--num-classes", "1000000000"], ["--num-classes", "100000"]),
    "keep-float regex": (["--precision", "int8", "--keep-float", "("], ["--keep-float", "regular expression"]),
    "calib-size 0": (["--precision", "int8", "--calib-size", "0"], ["--calib-size"]),
    "calib-size without int8": (["--calib-size", "50"], ["--calib-size", "int8"]),
    "keep-float without int8": (["--keep-float", "head"], ["--keep-float", "int8"]),
    "alpha above 1": (["--precision", "int8", "--smooth-quant-alpha", "2"], ["--smooth-quant-alpha", "[0, 1]"]),
    "alpha nan": (["--precision", "int8", "--smooth-quant-alpha", "nan"], ["--smooth-quant-alpha", "finite"]),
    "accuracy drop negative": (["--precision", "int8", "--max-accuracy-drop", "-1"], ["--max-accuracy-drop"]),
    "accuracy drop 100": (["--precision", "int8", "--max-accuracy-drop", "100"], ["--max-accuracy-drop"]),
    "parity samples 0": (["--parity-samples", "0"], ["--parity-samples"]),
    "parity samples huge": (["--parity-samples", "100000"], ["--parity-samples", "256"]),
    "dynamic int8 on onnx": (["--precision", "int8", "--int8-activations", "dynamic"], ["executorch"]),
    "dynamic batch without onnx": (["--dynamic-batch", "--target", "openvino"], ["--dynamic-batch", "onnx"]),
    "reset head without checkpoint": (["--reset-head"], ["--reset-head", "--checkpoint"]),
    "precision for target": (["--precision", "fp16", "--target", "onnx"], ["fp16", "onnx"]),
    "unknown target": (["--target", "tflite"], ["unknown target"]),
    "unknown model": (["--model", "crossformer-z"], ["unknown model"]),
}


@pytest.mark.parametrize("case", sorted(ARGUMENTS))
def test_bad_argument(case, sandbox, capsys):
    args, words = ARGUMENTS[case]
    target = [] if "--target" in args else ["--target", "onnx"]
    sandbox.check(capsys, 2, *target, *args, words=words)


def test_bounds_are_stated_in_help(capsys):
    from export.__main__ import build_parser

    text = " ".join(build_parser().format_help().split())
    for bound in ("[32, 1024]", "1 to 100000", "1 to 256", "[0, 1]"):
        assert bound in text


# --- data ------------------------------------------------------------------------------------------------------

def test_calibration_data_missing_file_or_empty(sandbox, capsys, tmp_path):
    sandbox.check(capsys, 2, "--target", "onnx", "--precision", "int8", "--calib-data", tmp_path / "none",
                  words=["not found"])
    (tmp_path / "file.png").write_bytes(b"x")
    sandbox.check(capsys, 2, "--target", "onnx", "--precision", "int8", "--calib-data", tmp_path / "file.png",
                  words=["must be a folder"])
    (tmp_path / "empty").mkdir()
    sandbox.check(capsys, 2, "--target", "onnx", "--precision", "int8", "--calib-data", tmp_path / "empty",
                  words=["empty"])


def test_missing_fashion_mnist_names_the_package(sandbox, capsys, monkeypatch):
    import export.int8

    monkeypatch.setattr(export.int8, "find_fashion_mnist", lambda *a, **k: None)
    sandbox.check(capsys, 2, "--target", "onnx", "--precision", "int8", words=["dataset-fashion-mnist", "--calib-data"])


# --- output paths ----------------------------------------------------------------------------------------------

def test_output_is_a_file_or_below_one(sandbox, capsys):
    sandbox.out.write_text("x")
    sandbox.check(capsys, 2, "--target", "onnx", words=["is a file"])
    sandbox.out = sandbox.root / "out" / "sub"
    sandbox.check(capsys, 2, "--target", "onnx", words=["is a file"])


def test_output_is_the_current_directory(sandbox, capsys, monkeypatch):
    monkeypatch.chdir(sandbox.root)
    (sandbox.root / "manifest.json").write_text("{}")
    sandbox.out = Path(".")
    sandbox.check(capsys, 2, "--target", "onnx", "--overwrite", words=["current directory"])
    sandbox.out = Path("..")
    sandbox.check(capsys, 2, "--target", "onnx", "--overwrite", words=["current directory"])


def test_overwrite_only_replaces_an_earlier_export(sandbox, capsys, checkpoints):
    sandbox.out.mkdir()
    (sandbox.out / "thesis.tex").write_text("years of work")
    sandbox.check(capsys, 2, "--target", "onnx", words=["--overwrite"])
    sandbox.check(capsys, 2, "--target", "onnx", "--overwrite", words=["no manifest.json"])
    assert (sandbox.out / "thesis.tex").read_text() == "years of work"
    (sandbox.out / "manifest.json").write_text("{}")
    inside = sandbox.out / "ckpt.pth"
    inside.write_bytes(checkpoints("crossformer-fmnist").read_bytes())
    sandbox.check(capsys, 2, "--target", "onnx", "--overwrite", "--checkpoint", inside, words=["inside the output"])


# --- targets that fail half-way --------------------------------------------------------------------------------

def test_failed_target_leaves_no_file(sandbox, capsys, monkeypatch):
    def half(ctx):
        ctx.file_name("onnx", None, "onnx").write_bytes(b"half an artifact")
        (Path(tempfile.gettempdir()) / "converter-scratch").write_bytes(b"x")
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(export.onnx_target, "export", half)
    sandbox.check(capsys, 1, "--target", "onnx,openvino", keep=("out",))
    manifest = load_manifest(sandbox.out)
    assert sorted(p.name for p in sandbox.out.iterdir()) == sorted(
        ["manifest.json", "labels.txt"] + [a["file"] for a in manifest["artifacts"]]
        + [f["file"] for a in manifest["artifacts"] for f in a.get("extra_files", [])])
    assert manifest["failures"][0]["target"] == "onnx" and manifest["status"] == "fail"


def test_disk_full_up_front_and_in_the_middle(sandbox, capsys, monkeypatch):
    import export.pipeline

    monkeypatch.setattr(export.pipeline, "free_bytes", lambda path: 1 << 20)
    sandbox.check(capsys, 2, "--target", "onnx", words=["not enough free disk space", "MB"])
    monkeypatch.undo()
    monkeypatch.setenv("TMPDIR", str(Path(tempfile.gettempdir())))

    def full(ctx):
        ctx.file_name("onnx", None, "onnx").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.staging / "x.onnx"))

    monkeypatch.setattr(export.onnx_target, "export", full)
    sandbox.check(capsys, 2, "--target", "onnx", words=["disk is full"])


def test_manifest_is_json_even_with_non_finite_numbers(tmp_path):
    from edge_crossformer.files import json_safe

    text = json.dumps(json_safe({"psnr": float("inf"), "x": [float("nan"), 1.0]}), allow_nan=False)
    assert json.loads(text) == {"psnr": None, "x": [None, 1.0]}


# --- concurrency -----------------------------------------------------------------------------------------------

def test_second_export_to_the_same_output_is_refused(sandbox, capsys):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from edge_crossformer.files import output_lock\n"
        f"with output_lock(Path({str(sandbox.out)!r})):\n    print('held', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        sandbox.check(capsys, 2, "--target", "onnx", words=["another export", f"pid {holder.pid}"],
                      keep=(".out.lock",))
    finally:
        holder.kill()
        holder.wait()
    with output_lock(sandbox.out):  # a killed holder's lock is free again (and its file removed on release)
        pass
    assert not (sandbox.root / ".out.lock").exists()


# --- signals and killed runs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_export_leaves_nothing(sig, tmp_path):
    out, tmp = tmp_path / "work" / "out", tmp_path / "tmpdir"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "export", "--target", "coreml,onnx", "--output", str(out)],
                            cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "work").glob(".out.staging-*/*.mlpackage")):
        time.sleep(0.2)
    assert proc.poll() is None, "the export ended before it could be interrupted"
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + sig, err
    assert signal.Signals(sig).name in err
    assert list((tmp_path / "work").iterdir()) == [] and list(tmp.iterdir()) == []


SIGNAL_DURING_SWAP = """
import os, signal, sys
from pathlib import Path
out = Path(sys.argv[1])
rename = os.replace
def replace(src, dst, *args, **kwargs):  # SIGTERM arrives between the two renames that swap the new export in
    if Path(src) == out:
        os.kill(os.getpid(), signal.SIGTERM)
    return rename(src, dst, *args, **kwargs)
os.replace = replace
from export.__main__ import main
sys.exit(main(["--target", "onnx", "--output", str(out), "--overwrite", "--parity-samples", "1"]))
"""


def test_signal_during_the_swap_waits_for_it(tmp_path):
    """In a child process (a signal sent to the test process itself is not safe): the new export is whole in place,
    the old one and every staging directory are gone, and the exit code says SIGTERM."""
    out = tmp_path / "out"
    first = subprocess.run([sys.executable, "-m", "export", "--target", "onnx", "--output", str(out),
                            "--parity-samples", "1"], cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = (out / "manifest.json").stat()
    swapped = subprocess.run([sys.executable, "-c", SIGNAL_DURING_SWAP, str(out)], cwd=ROOT, capture_output=True,
                             text=True)
    assert swapped.returncode == 128 + signal.SIGTERM, swapped.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "manifest.json").stat().st_ino != before.st_ino
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([a["file"] for a in manifest["artifacts"]]
                                                           + ["labels.txt", "manifest.json"])


def test_leftovers_of_a_killed_run_are_removed_next_time(sandbox, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    for name in (f".out.staging-{pid}-abc", f".out.old-{pid}-def"):
        (sandbox.root / name).mkdir()
        (sandbox.root / name / "model.onnx").write_bytes(b"x")
    live = sandbox.root / f".out.staging-{os.getpid()}-live"
    live.mkdir()
    assert sandbox.run("--target", "onnx") == 0
    assert sorted(p.name for p in sandbox.root.iterdir()) == sorted(["out", live.name])
    assert "left behind by a run that was killed" in capsys.readouterr().err


def test_reset_head_is_seeded_and_parity_passes(sandbox, checkpoints, tmp_path):
    ckpt = checkpoints("crossformer-fmnist", num_classes=10)
    shas = []
    for name in ("a", "b"):
        sandbox.out = tmp_path / name
        assert sandbox.run("--target", "onnx", "--checkpoint", ckpt, "--num-classes", "4", "--reset-head") == 0
        manifest = load_manifest(sandbox.out)
        assert manifest["artifacts"][0]["parity"]["top1_agreement"] == 1.0
        assert "seed" in manifest["source"]["head"]
        shas.append(manifest["artifacts"][0]["sha256"])
    assert shas[0] == shas[1]


def test_image_too_large_to_decode_is_refused(tmp_path):
    from PIL import Image

    from edge_crossformer.data import DataError, load_image

    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 M pixels in a few kB
    with pytest.raises(DataError, match="bomb.png"):
        load_image(tmp_path / "bomb.png")



@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_integer_outputs_fail_parity_whatever_the_gate(precision):
    """An artifact that returns quantized codes instead of float logits (same top-1: the INT8 gate alone would pass
    it) fails parity, with the reason recorded."""
    import numpy as np

    from export import parity
    from export.base import Artifact

    rng = np.random.default_rng(0)
    inputs = rng.random((6, 3, 32, 32), dtype=np.float32)
    expected = rng.normal(size=(6, 10)).astype(np.float32) * 5
    table = {x.tobytes(): row for x, row in zip(inputs, expected)}
    codes = lambda x: np.clip(np.round(table[x[0].tobytes()] * 10), -128, 127).astype(np.int8)[None]
    labels = expected.argmax(1)
    art = Artifact("onnx", None, precision, Path("model.onnx"), runner=codes)
    held = (inputs, expected, labels, "test") if precision == "int8" else None
    result = parity.classifier_parity(art, inputs, expected, "cpu", held)
    assert result["top1_agreement"] == 1.0
    assert result["status"] == "fail" and "int8" in result["output_contract"]
    floats = Artifact("onnx", None, precision, Path("model.onnx"), runner=lambda x: table[x[0].tobytes()][None])
    assert parity.classifier_parity(floats, inputs, expected, "cpu", held)["status"] == "pass"
