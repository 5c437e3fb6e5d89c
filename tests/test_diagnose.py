"""python -m export diagnose: a fault injected at a known block of crossformer-fmnist is named first, on every
runtime; a healthy INT8 export shows where quantization error grows; bad input is one message, exit 2, nothing
written; a failed gate during an export is diagnosed in the manifest, with the command on the console.

Exports are shared: one FP32 export of every runtime (module-scoped; its run also checks the export's own hook, with
ONNX's gate at 0) and one INT8 export. Default: one fault per runtime, one INT8 test, bad input, the hook; the rest
is `heavy`."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_crossformer import targets
from export import pipeline
from export.base import Artifact
from export.diagnose import main
from export.diagnose.run import DiagnoseError, ModelSource, read_manifest, request_from_manifest

pytestmark = pytest.mark.filterwarnings("ignore")

FAULT_BLOCK = "layers.1.blocks.0"
# The block's last linear: scaling it by 2 changes the block's output, nothing before it.
FAULT_PARAM = f"model.{FAULT_BLOCK}.mlp.fc2.weight"
SAMPLES = "2"


def _export(out, *flags):
    from tests.conftest import run_cli

    # INT8 is judged on held-out images: the flag table refuses --parity-samples there.
    fewer = () if "int8" in flags else ("--parity-samples", "2")
    assert run_cli("--target", *flags, "--output", out, *fewer) == 0
    return out


@dataclasses.dataclass
class Exported:
    directory: Path
    code: int
    console: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One FP32 export per runtime of crossformer-fmnist (Core ML at its default FP16). ONNX's FP32 gate is 0 during
    it, so its (healthy) artifact fails parity and the pipeline's brief diagnosis runs: test_export_diagnoses_*."""
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("diag") / "fp32"
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
        mp.setitem(targets.TARGETS, "onnx", dataclasses.replace(targets.get("onnx"), fp32_gate=0.0))
        code = run_cli("--target", "onnx,openvino,executorch,coreml", "--output", out, "--parity-samples", "2")
    return Exported(out, code, stderr.getvalue())


@pytest.fixture(scope="module")
def fp32(exported):
    return exported.directory


def _diagnose(directory, artifact, tmp_path, *extra):
    out = tmp_path / "report"
    assert main([str(directory), "--artifact", artifact, "--samples", SAMPLES, "--output", str(out), *extra]) == 0
    return json.loads((out / "diagnose.json").read_text())["artifacts"][0], out


def _copy(fp32, tmp_path):
    faulty = tmp_path / "faulty"
    shutil.copytree(fp32, faulty)
    return faulty


def _file(directory, suffix):
    return next(e["file"] for e in read_manifest(directory)["artifacts"] if e["file"].endswith(suffix))


def test_export_diagnoses_a_failed_gate(exported):
    """The export's ONNX artifact failed its (zeroed) gate: the manifest holds where it departs, the console the
    command; the other artifacts passed and were not diagnosed; the export's exit code is the gate's (1)."""
    assert exported.code == 1
    entries = {e["file"]: e for e in read_manifest(exported.directory)["artifacts"]}
    onnx = entries[_file(exported.directory, "onnx_fp32.onnx")]
    found = onnx["parity"]["diagnosis"]
    assert onnx["parity"]["status"] == "fail" and "error" not in found, found
    assert found["first_over_gate"] is not None and found["gate"] == 0.0
    assert 1 <= len(found["worst"]) <= 5 and all(row["rel"] > 0 for row in found["worst"])
    assert found["samples"] == 2 and found["seconds"] < 120
    assert found["command"] == f"python -m export diagnose {exported.directory} --artifact {onnx['file']}"
    assert found["command"] in exported.console.replace("\n", "")
    assert all("diagnosis" not in e["parity"] for name, e in entries.items() if name != onnx["file"])


def _fake_artifact(tmp_path) -> Artifact:
    return Artifact("onnx", None, "fp32", tmp_path / "m.onnx")


def test_brief_diagnosis_records_errors_and_keeps_its_budget(tmp_path, monkeypatch):
    """A diagnosis that raises is recorded, not raised; once the budget is spent, the rest point to the command."""
    def boom(*args, **kwargs):
        raise RuntimeError("runtime fell over\nsecond line")

    monkeypatch.setattr(pipeline, "diagnose_artifact", boom)
    diagnose = pipeline.BriefDiagnosis(None, tmp_path / "out dir", budget_s=0.5)
    found = diagnose(_fake_artifact(tmp_path))
    assert found["error"] == "RuntimeError: runtime fell over"
    assert found["command"] == f"python -m export diagnose '{tmp_path / 'out dir'}' --artifact m.onnx"
    diagnose.spent_s = 1.0
    later = diagnose(_fake_artifact(tmp_path))
    assert "budget" in later["skipped"] and "error" not in later


def test_a_target_without_taps_is_named(tmp_path):
    """A LiteRT artifact (no taps yet): the export's diagnosis records why, the command refuses before any work."""
    found = pipeline.BriefDiagnosis(None, tmp_path)(Artifact("litert", None, "fp32", tmp_path / "m.tflite"))
    assert "no layer taps for LiteRT" in found["error"]


def test_python_m_export_diagnose_dispatches(tmp_path, capsys):
    """`python -m export diagnose ...` is the subcommand's command line; the export's --help names it."""
    from export.__main__ import SUBCOMMANDS, build_parser
    from tests.conftest import run_cli

    assert SUBCOMMANDS["diagnose"][0] is main
    assert run_cli("diagnose", tmp_path) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert "diagnose" in build_parser().format_help()


@pytest.mark.heavy
def test_healthy_fp32_every_runtime(fp32, tmp_path):
    """No layer over the gate on any runtime, every point exposed, taps leave the logits as they were."""
    for suffix in ("onnx_fp32.onnx", "openvino_fp32.xml", "xnnpack_fp32.pte", "coreml_fp16.mlpackage"):
        result, out = _diagnose(fp32, _file(fp32, suffix), tmp_path)
        assert result["first_over_gate"] is None, (suffix, result["summary"])
        assert result["not_exposed"] == [], (suffix, result["not_exposed"])
        assert result["tapped_output_rel"] < 1e-5
        assert len(result["layers"]) == 42  # stem, 7 blocks and their 5 parts, 3 merges, norm, head, output
        assert (out / "diagnose.png").stat().st_size > 10_000


def test_onnx_block_output_scaled_by_two(fp32, tmp_path):
    import onnx

    faulty = _copy(fp32, tmp_path)
    path = faulty / _file(faulty, "onnx_fp32.onnx")
    model = onnx.load(str(path))
    last = [n for n in model.graph.node if any(p.key == "pkg.torch.onnx.name_scopes" and
                                                f"'model.{FAULT_BLOCK}'" in p.value for p in n.metadata_props)][-1]
    tensor = last.output[0]
    for node in model.graph.node:
        node.input[:] = [f"{tensor}_x2" if name == tensor else name for name in node.input]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "diag_two"))
    scaled = onnx.helper.make_node("Mul", [tensor, "diag_two"], [f"{tensor}_x2"])
    # Inside the block, as a converter's own wrong op would be: the block's name scopes (a node without them belongs
    # to no module, and its output would be no module's output).
    scaled.metadata_props.extend(last.metadata_props)
    model.graph.node.append(scaled)
    onnx.save(_sorted(model), str(path))
    result, _ = _diagnose(faulty, path.name, tmp_path)
    assert result["first_block_over_gate"] == FAULT_BLOCK, result["summary"]


def _sorted(model):
    """Nodes in topological order again after appending one (ONNX requires it)."""
    produced = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    pending, ordered = list(model.graph.node), []
    while pending:
        for node in pending:
            if all(not name or name in produced for name in node.input):
                ordered.append(node)
                produced.update(node.output)
                pending.remove(node)
                break
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def test_openvino_weight_constant_scaled(fp32, tmp_path):
    import openvino as ov
    from openvino import opset13

    faulty = _copy(fp32, tmp_path)
    path = faulty / _file(faulty, "openvino_fp32.xml")
    model = ov.Core().read_model(str(path))
    weight = next(op for op in model.get_ordered_ops() if op.get_friendly_name() == f"self.{FAULT_PARAM}")
    scaled = opset13.constant(weight.get_data() * 2)
    weight.output(0).replace(scaled.output(0))
    # Saved beside, then renamed: the .bin being read is memory-mapped (writing it in place is a bus error).
    staged = path.with_name("staged.xml")
    ov.save_model(model, str(staged), compress_to_fp16=False)
    del model, weight
    staged.with_suffix(".bin").replace(path.with_suffix(".bin"))
    staged.replace(path)
    result, _ = _diagnose(faulty, path.name, tmp_path)
    assert result["first_block_over_gate"] == FAULT_BLOCK, result["summary"]


def test_coreml_weight_in_the_program_scaled(fp32, tmp_path):
    """The FP16 weight of the block's fc2, found in the package's weight blob and doubled in place."""
    from export import coreml_mil

    faulty = _copy(fp32, tmp_path)
    package = faulty / _file(faulty, "coreml_fp16.mlpackage")
    loaded = coreml_mil.load(package)
    blob = next((package / "Data").rglob("weight.bin"))
    data = bytearray(blob.read_bytes())
    # fc2 of FAULT_BLOCK: the first [64, 256] weight in program order (stage 1 has 64 channels, MLP ratio 4).
    weights = [op.outputs[0].val for op in loaded.function.operations if op.op_type == "const"
               and getattr(op.outputs[0].val, "shape", None) == (64, 256)]
    raw = np.asarray(weights[0], np.float16).tobytes()
    at = bytes(data).find(raw)
    assert at >= 0 and bytes(data).count(raw) == 1
    data[at:at + len(raw)] = (np.asarray(weights[0], np.float16) * 2).astype(np.float16).tobytes()
    blob.write_bytes(bytes(data))
    result, _ = _diagnose(faulty, package.name, tmp_path)
    assert result["first_block_over_gate"] == FAULT_BLOCK, result["summary"]


def test_xnnpack_pte_from_a_perturbed_model(fp32, tmp_path):
    """The .pte lowered from the model with one weight of the block doubled; the diagnosis rebuilds the clean one."""
    import copy

    import torch

    from edge_crossformer import targets
    from export.executorch_target import lower_xnnpack, save_program

    faulty = _copy(fp32, tmp_path)
    path = faulty / _file(faulty, "xnnpack_fp32.pte")
    source = ModelSource(request_from_manifest(read_manifest(faulty), None))
    model = copy.deepcopy(source.deployable(targets.get("executorch").spelling))
    with torch.no_grad():
        dict(model.named_parameters())[FAULT_PARAM].mul_(2)
        program = torch.export.export(model, (source.example(),))
    save_program(lower_xnnpack(program), path)
    result, _ = _diagnose(faulty, path.name, tmp_path)
    assert result["first_block_over_gate"] == FAULT_BLOCK, result["summary"]
    assert "1 moved in" in result["granularity"]


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    """One INT8 export of crossformer-fmnist for ONNX and OpenVINO (NNCF on each runtime's graph)."""
    return _export(tmp_path_factory.mktemp("diag") / "int8", "onnx,openvino", "--precision", "int8",
                   "--calib-size", "64")


def _quantization_error_grows(result):
    rows = [row for row in result["layers"] if row.get("sim_rel") is not None]
    assert len(rows) > 30, result["not_exposed"]
    by_name = {row["layer"]: row for row in rows}
    # Quantization error grows through the network: the logits carry more of it than the stem.
    assert by_name["output"]["sim_rel"] > by_name["patch_embed"]["sim_rel"] > 1e-3
    # The runtime's kernels add less than quantization costs by design, at the logits.
    assert by_name["output"]["kernel_rel"] < by_name["output"]["sim_rel"]
    # Where it grows: every block-level point once, ranked by what it adds, the first adding some.
    growth = result["error_growth"]
    assert growth and growth[0]["added"] > 0 and len({g["block"] for g in growth}) == len(growth)
    assert [g["added"] for g in growth] == sorted((g["added"] for g in growth), reverse=True)
    return by_name


def test_error_growth_names_the_block_that_adds_error():
    """Accumulated error (1 - cosine) that a block adds is charged to that block, not to those after it."""
    from export.diagnose.report import error_growth

    cosines = {"patch_embed": 0.9999, "layers.0.blocks.0.attn": 0.5, "layers.0.blocks.0": 0.999,
               "layers.0.blocks.1": 0.99, "norm": 0.9895, "head": 0.9905}
    rows = [{"layer": name, "block": name.rsplit(".attn", 1)[0], "sim_cosine": cos} for name, cos in cosines.items()]
    growth = error_growth(rows, "sim_cosine")
    assert [g["block"] for g in growth][:2] == ["layers.0.blocks.1", "layers.0.blocks.0"]
    assert "layers.0.blocks.0.attn" not in {g["block"] for g in growth}  # parts roll up into their block
    assert growth[-1] == {"block": "head", "added": pytest.approx(-1e-3), "one_minus_cosine": pytest.approx(0.0095)}


@pytest.mark.parametrize("suffix", ["onnx_int8.onnx", "openvino_int8.xml"])
def test_healthy_int8_shows_quantization_error(int8, tmp_path, suffix):
    """ONNX (QDQ as written, optimizations off) and OpenVINO (FakeQuantize in float): the simulation explains the
    runtime's error; no layer's kernels depart from it by more than the INT8 gate."""
    out = tmp_path / "report"
    files = [_file(int8, suffix)]
    assert main([str(int8), *[a for f in files for a in ("--artifact", f)], "--samples", SAMPLES,
                 "--output", str(out)]) == 0
    results = json.loads((out / "diagnose.json").read_text())["artifacts"]
    assert [r["artifact"] for r in results] == files
    for result in results:
        assert result["first_over_gate"] is None, result["summary"]
        _quantization_error_grows(result)


@pytest.mark.heavy
def test_healthy_int8_xnnpack(tmp_path_factory, tmp_path):
    """ExecuTorch XNNPACK INT8: the PT2E graph is the simulation; the tapped debug build keeps XNNPACK's INT8
    patterns (its logits match the artifact's)."""
    directory = _export(tmp_path_factory.mktemp("diag") / "int8-xnnpack", "executorch", "--precision", "int8",
                        "--calib-size", "64")
    result, _ = _diagnose(directory, _file(directory, "xnnpack_int8.pte"), tmp_path, "--calib-size", "64")
    assert result["tapped_output_rel"] < 1e-5, result["granularity"]
    assert result["first_over_gate"] is None, result["summary"]
    _quantization_error_grows(result)


def test_bad_input_exit_2_nothing_written(fp32, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert list(empty.iterdir()) == []

    missing = _copy(fp32, tmp_path)
    (missing / _file(missing, "onnx_fp32.onnx")).unlink()
    assert main([str(missing)]) == 2
    assert "does not hold" in capsys.readouterr().err
    assert not (missing / "diagnose").exists()

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main([str(fp32), "--artifact", _file(fp32, "onnx_fp32.onnx")]) == 2
    assert "onnxruntime" in capsys.readouterr().err
    assert not (fp32 / "diagnose").exists()
    monkeypatch.undo()

    # --sensitivity: only for INT8 (this export is FP32), and only a sensitivity.json of the same model.
    ranking = tmp_path / "sensitivity.json"
    ranking.write_text(json.dumps({"model": "crossformer-fmnist", "layers": [
        {"unit": "model.head", "only_int8": {"kl": 1e-3}}]}))
    assert main([str(fp32), "--sensitivity", str(ranking)]) == 2
    assert "diagnose an INT8 artifact" in capsys.readouterr().err
    from export.diagnose.run import read_sensitivity

    int8_entry = [{"precision": "int8"}]
    for text, words in (("{not json", "not a sensitivity.json"), ('{"model": "crossformer-fmnist"}', "KeyError"),
                        ('{"model": "crossformer-t", "layers": [{"unit": "model.head", "only_int8": {"kl": 1}}]}',
                         "python -m quantize sensitivity --model crossformer-fmnist")):
        ranking.write_text(text)
        with pytest.raises(DiagnoseError, match=re.escape(words)):
            read_sensitivity(ranking, {"model": "crossformer-fmnist"}, int8_entry, brief=False)
    assert not (fp32 / "diagnose").exists()


def test_against_sensitivity_ranks_blocks():
    """Error growth per block against a sensitivity ranking: parts roll up into their block, overlap and rank
    correlation computed over the blocks both rank."""
    from export.diagnose.report import against_sensitivity

    # 1 - cosine grows by 1e-3, 9e-3, 1.5e-3, 3.5e-3, 3.5e-2.
    cosines = {"patch_embed": 0.999, "layers.0.blocks.0": 0.99, "layers.0.blocks.1": 0.9885, "norm": 0.985,
               "head": 0.95}
    result = {"layers": [{"layer": name, "block": name, "sim_cosine": cos} for name, cos in cosines.items()]}
    kl = {"model.head": 5e-3, "model.norm": 1e-3, "model.layers.0.blocks.0.mlp.fc1": 2e-4,
          "model.layers.0.blocks.0.attn.qkv": 2e-4, "model.layers.0.blocks.1.mlp.fc2": 1e-5, "model.patch_embed": 1e-4}
    sensitivity = {"layers": [{"unit": unit, "only_int8": {"kl": v}} for unit, v in kl.items()]}
    found = against_sensitivity(result, sensitivity, top=2)
    assert found["diagnose"] == ["head", "layers.0.blocks.0"] and found["sensitivity"] == ["head", "norm"]
    assert found["overlap"] == ["head"] and found["blocks"] == 5
    assert found["spearman"] == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24): two pairs of neighbours swapped
