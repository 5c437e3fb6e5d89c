"""Full `--target all` exports at the sizes issue #3 names (heavy: several minutes each on 2 cores)."""

import pytest

from conftest import load_manifest, run_cli
from edge_crossformer import targets


@pytest.mark.heavy
@pytest.mark.parametrize("name,size", [("crossformer-t", 224), ("crossformerpp-s", 224), ("crossformer-t", 384)])
def test_all_targets(name, size, checkpoints, tmp_path):
    out = tmp_path / f"{name}-{size}"
    assert run_cli("--target", "all", "--model", name, "--img-size", size, "--checkpoint",
                   checkpoints(name, 1000), "--output", out) == 0
    m = load_manifest(out)
    assert not m["failures"]
    for art in m["artifacts"]:
        p = art["parity"]
        target = targets.get(art["target"])
        if target.runtime is not None and art["delegate"] == target.runtime_delegate:
            assert p["rel_max"] <= target.fp32_gate and p["top1_agreement"] == 1.0
        if art["delegate"] == "xnnpack":
            assert art["info"]["ops_outside_delegate"] == 0
        if art["target"] == "coreml":
            assert art["info"]["max_rank"] <= 4 and art["info"]["gather_ops"] == 0
