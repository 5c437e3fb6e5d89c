"""Quantization-aware fine-tuning (`python -m quantize qat`): short real runs of both schemes (NNCF for OpenVINO /
ONNX, PT2E XNNPACK for ExecuTorch / Core ML), resume, export, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edge_crossformer.data import find_fashion_mnist
from edge_crossformer.registry import create_model

from conftest import load_manifest, run_cli

needs_fmnist = pytest.mark.skipif(find_fashion_mnist() is None,
                                  reason="Debian package dataset-fashion-mnist is not installed (.ci/run installs it)")

QUICK = ["--train-limit", "512", "--val-limit", "200", "--calib-size", "32", "--batch-size", "128"]


def qat(*args) -> int:
    from quantize.__main__ import main

    return main(["qat", *map(str, args)])


def assert_trained_checkpoint(out, record: dict):
    """A strict-loading float checkpoint whose weights moved, from a run whose fake-quantized model classifies."""
    # The fake-quantized model of a trained classifier must still classify (a broken quantizer drops to ~10%).
    assert record["val_top1_int8_simulated_start"] > record["val_top1_fp32_start"] - 3
    assert record["val_top1_int8_simulated_end"] > 80
    tuned = create_model("crossformer-fmnist", checkpoint=out)  # strict load in upstream's layout
    bundled = create_model("crossformer-fmnist")
    moved = [k for k, v in bundled.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, tuned.state_dict()[k])]
    assert len(moved) > 50, "QAT did not update the weights"
    return bundled, tuned


def interrupt_then_resume(args: list, work, out, monkeypatch, capsys) -> None:
    """Stop a 2-epoch run after epoch 1 (nothing written but the resume state), then rerun it to the end."""
    import quantize.qat as qat_module

    real_fit = qat_module.fit

    def interrupted_fit(*a, **kw):
        def stop(state):
            raise KeyboardInterrupt

        return real_fit(*a, **kw, on_epoch=stop)

    monkeypatch.setattr(qat_module, "fit", interrupted_fit)
    assert qat(*args) == 130  # run_cli: 128 + SIGINT, after every cleanup ran
    assert "interrupted (SIGINT)" in capsys.readouterr().err
    assert (work / "last.pt").exists() and not out.exists()
    assert not list(out.parent.glob(".*.tmp")) and not list(work.glob(".*.tmp"))
    monkeypatch.setattr(qat_module, "fit", real_fit)
    capsys.readouterr()
    assert qat(*args) == 0
    assert "at epoch 1/2" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text())["epochs_run"] == 2


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    out = root / "fmnist-qat.safetensors"
    code = qat(*QUICK, "--epochs", "1", "--workdir", root / "work", "--output", out)
    return code, out


@needs_fmnist
def test_qat_writes_a_loadable_float_checkpoint_and_record(qat_run):
    code, out = qat_run
    assert code == 0 and out.exists()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["epochs_run"] == 1 and record["train_images"] == 512 and record["val_images"] == 200
    assert_trained_checkpoint(out, record)


@needs_fmnist
def test_qat_checkpoint_exports_int8_to_every_target(qat_run, tmp_path):
    _, ckpt = qat_run
    out = tmp_path / "int8"
    code = run_cli("--target", "all", "--checkpoint", ckpt, "--precision", "int8", "--calib-size", "64",
                   "--output", out)
    m = load_manifest(out)
    assert {(a["target"], a["delegate"]) for a in m["artifacts"]} >= {
        ("onnx", None), ("openvino", None), ("executorch", "xnnpack"), ("coreml", None)}
    for art in m["artifacts"]:
        if art["parity"]["status"] != "skipped":
            assert art["parity"]["top1_agreement"] >= 0.98, art
    assert code == 0 and m["status"] == "pass"


@needs_fmnist
def test_qat_interrupted_run_resumes_and_writes_nothing_half_done(tmp_path, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "q.safetensors"
    interrupt_then_resume([*QUICK, "--epochs", "2", "--workdir", work, "--output", out], work, out, monkeypatch, capsys)

    # Same workdir, different settings: refuse rather than mix two runs.
    assert qat(*QUICK, "--epochs", "2", "--lr", "1e-4", "--workdir", work, "--output", out) == 2
    assert "different settings" in capsys.readouterr().err


@pytest.fixture(scope="module")
def xnnpack_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat_xnnpack")
    out = root / "fmnist-qat-xnnpack.safetensors"
    code = qat(*QUICK, "--target", "executorch", "--ranges", "learned", "--epochs", "1", "--workdir", root / "work",
               "--output", out)
    return code, out


@needs_fmnist
def test_qat_xnnpack_scheme_trains_the_executorch_graph(xnnpack_run):
    code, out = xnnpack_run
    assert code == 0 and out.exists()
    record = json.loads(out.with_suffix(".json").read_text())
    from edge_crossformer import targets

    # The targets that export with XNNPACK's scheme (the registry's fact; LiteRT joined Core ML and ExecuTorch).
    served = sorted(targets.names(lambda t: t.int8_scheme == "xnnpack"))
    assert record["scheme"] == "xnnpack" and sorted(record["targets"]) == served
    assert {"coreml", "executorch"} <= set(served)
    from edge_crossformer.checkpoint import ranges_path

    assert ranges_path(out).is_file()
    bundled, tuned = assert_trained_checkpoint(out, record)
    # The position MLP is folded to constants in the trained graph: carried over unchanged, not dropped.
    pos = [k for k in bundled.state_dict() if ".pos." in k]
    assert pos and all(torch.equal(bundled.state_dict()[k], tuned.state_dict()[k]) for k in pos)


@needs_fmnist
def test_qat_xnnpack_checkpoint_exports_to_executorch(xnnpack_run, tmp_path):
    _, ckpt = xnnpack_run
    out = tmp_path / "int8"
    code = run_cli("--target", "executorch", "--checkpoint", ckpt, "--precision", "int8",
                   "--output", out)
    m = load_manifest(out)
    art = next(a for a in m["artifacts"] if a["delegate"] == "xnnpack")
    assert art["info"]["int8_ranges"] == "learned in QAT"
    # Ranges learned on 512 images for one epoch may miss the release gate (98% agreement, 0.5 pp on 500 images),
    # and the exit code must then say so; ranges that landed on the wrong quantizers would not classify at all.
    assert code == (0 if m["status"] == "pass" else 1), (code, m["status"])
    assert art["parity"]["top1_agreement"] >= 0.9, art["parity"]


@needs_fmnist
def test_qat_ranges_that_do_not_fit_the_model_are_refused(xnnpack_run, tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    from edge_crossformer.checkpoint import ranges_path

    _, ckpt = xnnpack_run
    copy = tmp_path / "copy.safetensors"
    shutil.copy(ckpt, copy)
    save_file({"activation_post_process_0.scale": torch.ones(1)}, str(ranges_path(copy)))
    out = tmp_path / "never"
    assert run_cli("--target", "executorch", "--checkpoint", copy, "--precision", "int8", "--output", out) == 2
    assert "do not fit this model" in capsys.readouterr().err and not out.exists()


@needs_fmnist
def test_qat_xnnpack_scheme_resumes(tmp_path, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "q.safetensors"
    args = [*QUICK, "--train-limit", "256", "--target", "executorch", "--epochs", "2", "--workdir", work,
            "--output", out]
    interrupt_then_resume(args, work, out, monkeypatch, capsys)
    from edge_crossformer.checkpoint import ranges_path

    assert not ranges_path(out).exists()  # calibrated ranges (the default): the export recalibrates


def test_accuracy_benchmark_gives_each_runtime_the_qat_checkpoint_for_its_target(tmp_path):
    from benchmarks.accuracy import qat_assignment

    def ckpt(name, targets=None):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(b"x")
        if targets is not None:
            path.with_suffix(".json").write_text(json.dumps({"targets": targets}))
        return path

    nncf, xnn = ckpt("nncf", ["openvino", "onnx"]), ckpt("xnn", ["executorch", "coreml"])
    runtimes = ("onnx", "openvino", "executorch")
    assert qat_assignment([nncf, xnn], runtimes) == {nncf: ("onnx", "openvino"), xnn: ("executorch",)}
    plain = ckpt("plain")
    assert qat_assignment([plain], runtimes) == {plain: runtimes}
    assert qat_assignment([xnn, plain], runtimes) == {plain: ("onnx", "openvino"), xnn: ("executorch",)}
    with pytest.raises(ValueError, match="two QAT checkpoints are for openvino"):
        qat_assignment([nncf, ckpt("again", ["openvino"])], runtimes)
    with pytest.raises(ValueError, match="not found"):
        qat_assignment([tmp_path / "missing.safetensors"], runtimes)


def _png_folder(root, classes: int, per_class: int = 3, flat: bool = False):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root if flat else root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{c}_{i}.png")
    return root


def test_qat_bad_input_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "never.safetensors"
    assert qat("--data", _png_folder(tmp_path / "flat", 1, flat=True), "--output", out) == 2
    assert "no class sub-folders" in capsys.readouterr().err
    assert qat("--data", _png_folder(tmp_path / "three", 3), "--output", out) == 2
    err = capsys.readouterr().err
    assert "has 3 classes but the model has 10" in err and "--num-classes 3" in err
    assert qat("--model", "crossformer-t", "--output", out) == 2
    assert "no bundled weights; pass --checkpoint" in capsys.readouterr().err
    assert qat("--data", tmp_path / "missing", "--output", out) == 2
    assert "not found" in capsys.readouterr().err
    assert qat("--target", "executorch", "--keep-float", "head", "--output", out) == 2
    assert "--keep-float applies to NNCF's scheme" in capsys.readouterr().err
    assert qat("--ranges", "learned", "--output", out) == 2
    assert "--ranges learned applies to XNNPACK's scheme" in capsys.readouterr().err
    assert not out.exists()
