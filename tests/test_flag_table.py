"""The flag table (export.flags.FLAGS) walked whole: for every flag x task x size mode x precision (INT8 with
calibrated, dynamic and QAT-learned ranges) x target, validate() refuses it or accepts it exactly as the table says.
No export runs: validate works before any work."""

from __future__ import annotations

import itertools

import pytest

from conftest import run_cli
from edge_crossformer import targets
from edge_crossformer.compression import is_compressed
from export.__main__ import build_parser
from export.request import ExportError, ExportRequest
from export.flags import FLAGS, used
from export.validate import validate

# The axes of the walk: (task, size mode) -> what sets them, and the precisions (INT8's range sources included).
MODES = {
    ("classify", "fixed"): {},
    ("classify", "range"): {"dynamic_size": (64, 256)},
    ("classify", "list"): {"sizes": ((64, 64), (64, 96))},
    ("features", "fixed"): {"task": "features"},
    ("features", "range"): {"task": "features", "dynamic_size": (64, 256)},
    ("features", "list"): {"task": "features", "sizes": ((64, 64), (64, 96))},
}
PRECISIONS = {"fp32": {"precision": "fp32"}, "fp16": {"precision": "fp16"}, "int8": {"precision": "int8"},
              "int8 dynamic": {"precision": "int8", "int8_activations": "dynamic"},
              "int8 QAT ranges": {"precision": "int8", "checkpoint": "qat"},
              # Weight compression (edge_crossformer.compression), on the targets whose registry entry offers it.
              **{p: {"precision": p} for p in targets.PRECISIONS if is_compressed(p)}}
# Flags that are the axes themselves (every request has them).
AXES = {"--target", "--task", "--precision"}


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A stand-in checkpoint, a QAT checkpoint with its learned ranges beside it, labels and a calibration folder;
    Fashion-MNIST counted as installed (the bundled model's calibration fallback), whatever this host has."""
    import export.int8

    monkeypatch.setattr(export.int8, "find_fashion_mnist", lambda *a, **k: ("images", "labels"))
    paths = {"ckpt": tmp_path / "plain.pth", "qat": tmp_path / "qat.safetensors", "labels": tmp_path / "labels.txt",
             "calib": tmp_path / "calib", "out": tmp_path / "out"}
    paths["ckpt"].write_bytes(b"x")
    paths["qat"].write_bytes(b"x")
    paths["qat"].with_suffix(".ranges.safetensors").write_bytes(b"x")
    paths["labels"].write_text("".join(f"c{i}\n" for i in range(10)))
    paths["calib"].mkdir()
    return paths


def samples(files, base: dict) -> dict[str, dict]:
    """A valid value for every flag (ExportRequest fields), on top of `base`."""
    return {
        "--model": {"model": "crossformer-fmnist"},
        "--checkpoint": {"checkpoint": base.get("checkpoint") or files["ckpt"]},
        "--img-size": {"img_size": 64},
        "--out-indices": {"out_indices": (1, 2)},
        "--sizes": {"sizes": ((64, 64), (64, 96))},
        "--dynamic-size": {"dynamic_size": (64, 256)},
        "--num-classes": {"num_classes": 10},
        "--labels": {"labels_source": str(files["labels"])},
        "--reset-head": {"reset_head": True, "checkpoint": base.get("checkpoint") or files["ckpt"]},
        "--calib-data": {"calib_data": files["calib"]},
        "--calib-size": {"calib_size": 50},
        "--smooth-quant-alpha": {"smooth_quant_alpha": 0.5},
        "--keep-float": {"keep_float": ("head",)},
        "--int8-activations": {"int8_activations": "static"},
        "--full-range-int8-weights": {"full_range_int8_weights": True},
        "--cpu": {"cpu": "avx2"},
        # 0: the value a truthiness test lets through.
        "--max-accuracy-drop": {"max_accuracy_drop": 0.0},
        "--labels-map-by-order": {"labels_map_by_order": True},
        "--output": {"output": files["out"]},
        "--overwrite": {"overwrite": True},
        "--reference-model": {"reference_model": True},
        "--dynamic-batch": {"dynamic_batch": True},
        "--parity-samples": {"parity_samples": 4},
        # 64: every w4 target takes it (XNNPACK: multiples of 32) and it divides crossformer-fmnist's 4-bit layers.
        "--group-size": {"group_size": 64},
    }


def request(files, target: str, fields: dict) -> ExportRequest:
    fields = {"output": files["out"], **fields}
    if fields.get("checkpoint") == "qat":
        fields["checkpoint"] = files["qat"]
    return ExportRequest(targets=(target,), **fields)


def accepted(req: ExportRequest) -> str | None:
    """None where validate accepts the request, else its refusal."""
    try:
        validate(req)
    except ExportError as e:
        return str(e)
    return None


def test_every_option_has_a_row():
    options = {s for action in build_parser()._actions for s in action.option_strings if s.startswith("--")}
    missing = options - {f.flag for f in FLAGS} - {"--help"}
    assert not missing, f"flags without a row in export.flags.FLAGS: {sorted(missing)}"


def test_the_table_walked_whole(files):
    """Each valid (task, size mode, precision, target) base request, with each flag added: refused, naming the
    flag, exactly where the table says no target uses it."""
    bases = walked = 0
    for (task, mode), precision, target in itertools.product(MODES, PRECISIONS, targets.names()):
        base = {**MODES[task, mode], **PRECISIONS[precision]}
        if accepted(request(files, target, base)) is not None:
            continue  # the combination itself cannot be exported (e.g. INT8 with --sizes, FP16 ONNX)
        bases += 1
        for flag, extra in samples(files, base).items():
            req = request(files, target, {**base, **extra})
            field = next(f.field for f in FLAGS if f.flag == flag)
            expected = used(field, req, target)
            refusal = accepted(request(files, target, {**base, **extra}))
            where = f"{flag} with {task} / {mode} / {precision} / {target}"
            if expected:
                assert refusal is None, f"{where}: the table says used, validate refused: {refusal}"
            else:
                assert refusal is not None, f"{where}: the table says unused, validate accepted it"
                assert flag in refusal, f"{where}: the refusal does not name the flag: {refusal}"
            walked += 1
    # Every task and size mode has exportable combinations; a shrinking count means a base broke.
    assert bases >= 30 and walked >= 30 * (len(FLAGS) - len(AXES) - 2), (bases, walked)


def test_axes_are_used_wherever_an_export_is_valid(files):
    for (task, mode), precision, target in itertools.product(MODES, PRECISIONS, targets.names()):
        req = request(files, target, {**MODES[task, mode], **PRECISIONS[precision]})
        if accepted(req) is None:
            for field in ("targets", "task", "precision", "model", "output"):
                assert used(field, req, target), (field, task, mode, precision, target)


@pytest.mark.parametrize("args, words", [
    # Silent before: each accepted and ignored (or half honoured) without a word.
    (["--target", "onnx", "--int8-activations", "static"], ["--int8-activations", "add --precision int8"]),
    (["--target", "onnx", "--precision", "int8", "--parity-samples", "8"], ["--parity-samples", "held-out"]),
    (["--target", "onnx", "--task", "features", "--precision", "int8", "--max-accuracy-drop", "0"],
     ["--max-accuracy-drop", "--task features"]),
    (["--target", "coreml", "--task", "features", "--sizes", "64x64", "64x96", "--reference-model"],
     ["--reference-model", "--sizes"]),
    (["--target", "onnx", "--precision", "int8", "--dynamic-batch"], ["--dynamic-batch", "onnx is int8"]),
    (["--target", "executorch", "--precision", "int8", "--int8-activations", "dynamic", "--calib-size", "50"],
     ["--calib-size", "per row at run time"]),
    (["--target", "executorch", "--precision", "int8", "--int8-activations", "dynamic", "--smooth-quant-alpha",
      "0.5"], ["--smooth-quant-alpha", "per row at run time"]),
    (["--target", "onnx", "--task", "features", "--precision", "int8", "--int8-activations", "dynamic"],
     ["--int8-activations dynamic is supported by executorch only"]),
])
def test_silent_cases_are_refused(args, words, files, tmp_path, capsys):
    out = tmp_path / "o"
    assert run_cli(*args, "--output", out) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert not out.exists()


def test_qat_ranges_make_calibration_flags_unused(files, tmp_path, capsys):
    """ExecuTorch INT8 from a QAT checkpoint uses its learned ranges: nothing is calibrated."""
    for args in (["--calib-size", "50"], ["--keep-float", "head"], ["--smooth-quant-alpha", "0.5"]):
        assert run_cli("--target", "executorch", "--precision", "int8", "--checkpoint", files["qat"], *args,
                       "--output", tmp_path / "o") == 2
        assert "ranges learned in QAT" in capsys.readouterr().err
    # Core ML calibrates beside it: used there, and the manifest records it per artifact.
    req = validate(ExportRequest(targets=("executorch", "coreml"), precision="int8", checkpoint=files["qat"],
                                 calib_size=50, output=tmp_path / "o"))
    from export.flags import flags_for

    assert "--calib-size" in flags_for(req, "coreml", "int8")
    assert "--calib-size" not in flags_for(req, "executorch", "int8")
