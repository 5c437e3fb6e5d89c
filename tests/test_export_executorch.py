"""ExecuTorch target: XNNPACK .pte with nothing outside the delegate, run through executorch.runtime; Core ML .pte,
its embedded Core ML program run through the MIL evaluator."""

import numpy as np
import pytest
import torch
from executorch.runtime import Runtime

from edge_crossformer import build_model

from conftest import load_manifest, run_cli
from edge_crossformer.targets import get as _target

GATE = _target("executorch").fp32_gate  # docs/parity.md


def _by_delegate(manifest):
    return {a["delegate"]: a for a in manifest["artifacts"]}


def test_small_model(checkpoints, tmp_path):
    out = tmp_path / "out"
    assert run_cli("--target", "executorch", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--output", out) == 0
    arts = _by_delegate(load_manifest(out))
    xnn, coreml = arts["xnnpack"], arts["coreml"]
    assert xnn["file"] == "crossformer-fmnist_executorch-xnnpack_fp32.pte"
    assert xnn["info"]["ops_outside_delegate"] == 0 and xnn["info"]["delegates"] == 1
    assert xnn["parity"]["status"] == "pass" and xnn["parity"]["rel_max"] <= GATE
    assert coreml["file"] == "crossformer-fmnist_executorch-coreml_fp16.pte"
    assert coreml["info"]["ops_outside_delegate"] == 0
    # The delegate runs only on Apple devices; the Core ML program it embeds is evaluated here (export/coreml_mil.py).
    p = coreml["parity"]
    assert p["status"] == "pass" and p["psnr_db"] >= 60 and p["runtime"].startswith("MIL evaluator"), p
    # The .pte really runs here and matches the faithful model on a fresh input.
    state = torch.load(checkpoints("crossformer-fmnist"), weights_only=True)["model"]
    reference = build_model("crossformer-fmnist")
    reference.load_state_dict(state)
    x = torch.rand(1, 3, 32, 32)
    method = Runtime.get().load_program(str(out / xnn["file"])).load_method("forward")
    got = method.execute([x])[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.eval()((x - mean) / std)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= GATE


def test_reference_model_failure_is_reported_cleanly(checkpoints, tmp_path, capsys):
    out = tmp_path / "ref"
    code = run_cli("--target", "executorch", "--model", "crossformer-fmnist", "--checkpoint",
                   checkpoints("crossformer-fmnist"), "--output", out, "--reference-model")
    manifest = load_manifest(out)
    assert code == 1 and manifest["status"] == "fail"
    assert manifest["source"]["exported_model"] == "reference"
    broken = [a for a in manifest["artifacts"] if a["parity"]["status"] == "fail"] + manifest["failures"]
    assert broken, "upstream's structure must not pass as deployable on ExecuTorch"
    assert "Traceback" not in capsys.readouterr().err


def test_full_size_crossformer_t(checkpoints, tmp_path):
    out = tmp_path / "t224"
    assert run_cli("--target", "executorch", "--model", "crossformer-t", "--checkpoint",
                   checkpoints("crossformer-t", 1000), "--output", out) == 0
    xnn = _by_delegate(load_manifest(out))["xnnpack"]
    assert xnn["info"]["ops_outside_delegate"] == 0
    assert xnn["parity"]["rel_max"] <= GATE and xnn["parity"]["top1_agreement"] == 1.0
