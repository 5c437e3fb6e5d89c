"""Every export entry path refuses an input that --overwrite would delete with the output, however it is reached
(a symlink outside the output, a path through '..'): exit 2, every input still there, nothing new beside the output
or in $TMPDIR. No export runs (the refusal comes before any work)."""

from __future__ import annotations

import json
import tempfile

import pytest

from conftest import run_cli

# Entry paths: the arguments that pick each, and which input the test puts inside the output.
PATHS = {
    "classify fixed": (["--target", "onnx"], "checkpoint"),
    "classify range": (["--target", "onnx", "--dynamic-size", "64", "256"], "checkpoint"),
    "features fixed": (["--target", "onnx", "--task", "features"], "checkpoint"),
    "features --sizes": (["--target", "coreml", "--task", "features", "--sizes", "64x64", "64x96"], "checkpoint"),
    "features --dynamic-size": (["--target", "onnx", "--task", "features", "--dynamic-size", "64", "256"],
                                "checkpoint"),
    "int8 --calib-data": (["--target", "onnx", "--precision", "int8"], "calib"),
    "features int8 --calib-data": (["--target", "onnx", "--task", "features", "--precision", "int8"], "calib"),
    "--labels": (["--target", "onnx"], "labels"),
}


@pytest.fixture
def area(tmp_path, monkeypatch):
    """An earlier export (the output --overwrite would replace), a work folder beside it, a private $TMPDIR."""
    work, tmp = tmp_path / "work", tmp_path / "tmpdir"
    out = work / "out"
    out.mkdir(parents=True)
    tmp.mkdir()
    (out / "manifest.json").write_text(json.dumps({"status": "pass"}))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return work, out, tmp


def _input(kind: str, out, checkpoint) -> tuple[str, object]:
    """The input of `kind`, created inside the output; (its flag, its path)."""
    if kind == "checkpoint":
        path = out / "model.pth"
        path.write_bytes(checkpoint.read_bytes())
        return "--checkpoint", path
    if kind == "labels":
        path = out / "labels.txt"
        path.write_text("".join(f"c{i}\n" for i in range(10)))
        return "--labels", path
    path = out / "calib"
    path.mkdir()
    (path / "a.png").write_bytes(b"not read before the refusal")
    return "--calib-data", path


@pytest.mark.parametrize("reach", ["symlink", "dotdot"])
@pytest.mark.parametrize("entry", sorted(PATHS))
def test_input_inside_the_output_is_refused(entry, reach, area, checkpoints, capsys):
    work, out, tmp = area
    args, kind = PATHS[entry]
    flag, inside = _input(kind, out, checkpoints("crossformer-fmnist"))
    if reach == "symlink":
        given = work / f"link-{inside.name}"
        given.symlink_to(inside)
    else:
        given = out / ".." / out.name / inside.name
    extra = [] if kind == "checkpoint" or "--task" in args else ["--checkpoint", checkpoints("crossformer-fmnist")]
    before = sorted(p.name for p in work.iterdir())
    outputs = sorted(p.name for p in out.iterdir())
    code = run_cli(*args, *extra, flag, given, "--output", out, "--overwrite")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "inside the output directory" in err and "--overwrite" in err, err
    assert inside.exists() and sorted(p.name for p in out.iterdir()) == outputs
    assert sorted(p.name for p in work.iterdir()) == before
    assert list(tmp.iterdir()) == []
