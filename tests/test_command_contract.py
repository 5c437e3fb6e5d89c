"""Every command keeps the export's failure contract (issue 28): an input the user gave that the command would
overwrite is refused before any work (exit 2, one line naming it), however it is reached (here: through a symlink),
the input is still there, and nothing new is left beside the output or in $TMPDIR.

The entry points come from the dispatch tables (quantize/__main__.py, benchmarks/__main__.py), so a new subcommand
fails `test_every_entry_point_has_a_case` until it gets a case below, and with it the check."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from edge_crossformer.registry import ASSETS

# Which flags are inputs and which are outputs, per entry point; `CASES` puts one input inside what one output
# replaces. A command without input paths says so here (and its case checks its output alone).
FLAGS = {
    "export": {"inputs": ["--checkpoint", "--backbone-checkpoint", "--labels", "--calib-data", "--val-data"],
               "outputs": ["--output (a directory, replaced whole with --overwrite)"]},
    "quantize qat": {"inputs": ["--checkpoint", "--data", "--val-data"],
                     "outputs": ["--output (a file, with .json and .ranges.safetensors beside it)",
                                 "--workdir (a directory: resume state)"]},
    "quantize sensitivity": {"inputs": ["--checkpoint", "--calib-data", "--data"],
                             "outputs": ["--output (a directory: sensitivity.json, sensitivity.png)"]},
    "benchmarks": {"inputs": ["--checkpoint", "--calib-data", "--accuracy"],
                   "outputs": ["--output (a directory: artifacts/, results.json, results.md, *.png)"]},
    "benchmarks accuracy": {"inputs": ["--checkpoint", "--qat-checkpoint (and its .json)", "--data", "--calib-data"],
                            "outputs": ["--output (a directory: accuracy.json, accuracy.png)"]},
    "benchmarks merge": {"inputs": ["FILES"], "outputs": ["--output (a directory: merged.json, results.md, "
                                                          "latency.png)"]},
    "benchmarks golden": {"inputs": ["--samples"], "outputs": ["--output (a file, and samples/ beside it)"]},
    "benchmarks android": {"inputs": ["--artifacts (its manifest.json, .pte, labels.txt)"],
                           "outputs": ["--output (a file)"]},
    "benchmarks ddp": {"inputs": [], "outputs": ["--output (a directory: ddp.json)"]},
    "benchmarks profile": {"inputs": ["--checkpoint", "--calib-data"],
                           "outputs": ["--output (a directory: artifacts/ shared with the latency benchmark, "
                                       "profile.json, profile.md, *.png)"]},
    "edge_crossformer.train": {"inputs": ["--data"], "outputs": ["--workdir (a directory: resume state)"]},
}


def entry_points() -> list[str]:
    from benchmarks.__main__ import SUBCOMMANDS as BENCHMARKS
    from quantize.__main__ import SUBCOMMANDS as QUANTIZE

    # The training command is not in a table; it is the third command torchrun runs (README), so it is listed.
    return (["export"] + [f"quantize {c}" for c in QUANTIZE] + ["benchmarks"]
            + [f"benchmarks {c}" for c in BENCHMARKS] + ["edge_crossformer.train"])


def run(entry: str, argv: list) -> int:
    """The entry point in-process; its exit code (argparse refusals included)."""
    if entry == "export":
        from export.__main__ import main
        words = []
    elif entry == "edge_crossformer.train":
        from edge_crossformer.train import main
        words = []
    elif entry.startswith("quantize"):
        from quantize.__main__ import main
        words = entry.split()[1:]
    else:
        from benchmarks.__main__ import main
        words = entry.split()[1:]
    try:
        return main([*words, *map(str, argv)])
    except SystemExit as e:
        return e.code


def _checkpoint(path: Path) -> Path:
    """A real (loadable) checkpoint, so no command refuses it for its content before it looks at the output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / "crossformer_fmnist.safetensors", path)
    return path


def _export_dir(path: Path) -> Path:
    """A folder that looks like an earlier export (what --overwrite may replace), with one XNNPACK .pte."""
    path.mkdir(parents=True)
    pte = path / "model.pte"
    pte.write_bytes(b"not really a program, but the manifest vouches for these bytes")
    digest = hashlib.sha256(pte.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps({"artifacts": [
        {"target": "executorch", "delegate": "xnnpack", "precision": "fp32", "file": pte.name, "sha256": digest,
         "bytes": pte.stat().st_size}]}))
    return path


# Each case: (entry point, what it checks, setup(root, link) -> (argv, the input that must survive)). `root/out` is
# the output; `link` is a symlink to it (created by the test once setup has made `root/out`).
Setup = Callable[[Path, Path], tuple[list, Path]]


def _export(root, link):
    _export_dir(root / "out")
    victim = _checkpoint(root / "out" / "ck.safetensors")
    return ["--target", "onnx", "--checkpoint", link / victim.name, "--output", root / "out", "--overwrite"], victim


def _qat_output(root, link):
    victim = _checkpoint(root / "out" / "q.safetensors")
    return ["--checkpoint", link / victim.name, "--workdir", root / "work", "--output", victim], victim


def _qat_workdir(root, link):
    (root / "out").mkdir()
    victim = root / "out" / "train" / "c0" / "a.png"
    victim.parent.mkdir(parents=True)
    shutil.copy(sorted((Path(__file__).parents[1] / "export" / "samples").glob("*.png"))[0], victim)
    return ["--data", link / "train", "--workdir", root / "out", "--output", root / "q.safetensors"], victim


def _sensitivity(root, link):
    victim = _checkpoint(root / "out" / "sensitivity.json")
    return ["--checkpoint", link / victim.name, "--output", root / "out"], victim


def _latency(root, link):
    victim = _checkpoint(root / "out" / "artifacts" / "ck.safetensors")
    return ["--model", "crossformer-fmnist", "--checkpoint", link / "artifacts" / victim.name,
            "--output", root / "out"], victim


def _profile(root, link):
    victim = _checkpoint(root / "out" / "artifacts" / "ck.safetensors")
    return ["--model", "crossformer-fmnist", "--checkpoint", link / "artifacts" / victim.name,
            "--output", root / "out"], victim


def _accuracy(root, link):
    victim = _checkpoint(root / "out" / "accuracy.json")
    return ["--checkpoint", link / victim.name, "--output", root / "out"], victim


def _merge(root, link):
    victim = root / "out" / "merged.json"
    victim.parent.mkdir()
    victim.write_text(json.dumps({"schema": "edge-crossformer/results", "source": "merged", "reports": []}))
    return [link / victim.name, "--output", root / "out"], victim


def _golden(root, link):
    victim = root / "out" / "samples" / "a.png"
    victim.parent.mkdir(parents=True)
    shutil.copy(sorted((Path(__file__).parents[1] / "export" / "samples").glob("*.png"))[0], victim)
    return ["--samples", link / "samples", "--output", root / "out" / "golden.json"], victim


def _android(root, link):
    _export_dir(root / "out")
    return ["--artifacts", link, "--output", root / "out" / "manifest.json"], root / "out" / "manifest.json"


def _ddp(root, link):
    """No input paths: the output alone is checked (a file where the folder goes), before any run."""
    victim = root / "out" / "ddp-output-is-a-file"
    victim.parent.mkdir()
    victim.write_text("keep me")
    return ["--output", victim], victim


def _train(root, link):
    victim = root / "out" / "fmnist" / "train-images-idx3-ubyte"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"images")
    return ["--data", link / "fmnist", "--workdir", root / "out"], victim


CASES: list[tuple[str, str, Setup]] = [
    ("export", "checkpoint inside the export --overwrite replaces", _export),
    ("quantize qat", "checkpoint that is the output checkpoint", _qat_output),
    ("quantize qat", "training data inside the workdir", _qat_workdir),
    ("quantize sensitivity", "checkpoint at the JSON it writes", _sensitivity),
    ("benchmarks", "checkpoint inside the export cache", _latency),
    ("benchmarks accuracy", "checkpoint at the JSON it writes", _accuracy),
    ("benchmarks merge", "an earlier merged.json in the output", _merge),
    ("benchmarks golden", "samples in the folder it writes decoded copies to", _golden),
    ("benchmarks android", "the export's manifest as the output file", _android),
    ("benchmarks ddp", "no input paths; a file as the output folder", _ddp),
    ("benchmarks profile", "checkpoint inside the export cache", _profile),
    ("edge_crossformer.train", "training data inside the workdir", _train),
]


def test_every_entry_point_has_a_case():
    points = entry_points()
    assert set(FLAGS) == set(points), "describe the new entry point's input and output flags in FLAGS"
    assert {entry for entry, _, _ in CASES} == set(points), "give the new entry point a case in CASES"


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("entry, what, setup", CASES, ids=[f"{e}: {w}" for e, w, _ in CASES])
def test_input_inside_the_output_is_refused_before_any_work(entry, what, setup, tmp_path, monkeypatch, capsys):
    root, scratch = tmp_path / "work", tmp_path / "tmp"
    root.mkdir()
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(root)  # default paths of anything the command would write land here, and would show
    link = root / "link"
    argv, victim = setup(root, link)
    link.symlink_to(root / "out", target_is_directory=True)
    before = _tree(root)

    assert run(entry, argv) == 2, what
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().startswith("error:"), err
    assert len(err.strip().splitlines()) == 1, err
    named = next((str(a) for a in argv if str(link) in str(a)), str(victim))  # the input as given, or the output
    assert named in err, f"the message should name {named}: {err}"
    assert _tree(root) == before, "the command changed or left files beside its output"
    assert victim.exists()
    assert not list(scratch.iterdir()), "the command left files in $TMPDIR"
