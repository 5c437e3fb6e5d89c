"""The torch.export graph of the deployable rewrite: rank <= 4, no gather or index, static shapes."""

import pytest
import torch

from edge_crossformer import Normalized, build_model, create_model, fold_position_bias, strip_position_mlp

GATHERS = ("index", "gather", "embedding", "take", "index_select", "select")


def _graph(name, size, decompose=False, matmul_4d=False):
    from edge_crossformer import Spelling

    spelling = Spelling(decompose_layernorm=decompose, matmul_4d=matmul_4d)
    model = build_model(name, img_size=size, num_classes=10, spelling=spelling)
    deploy = Normalized(strip_position_mlp(fold_position_bias(model.eval()))).eval()
    return torch.export.export(deploy, (torch.rand(1, 3, size, size),)).run_decompositions({})


@pytest.mark.parametrize("name,size,matmul_4d", [
    ("crossformer-t", 224, False), ("crossformerpp-s", 224, False), ("crossformer-t", 384, False),
    ("crossformer-fmnist", 32, False), ("crossformer-t", 224, True), ("crossformerpp-s", 224, True)])
def test_rank_at_most_4_no_gather_static_shapes(name, size, matmul_4d):
    program = _graph(name, size, matmul_4d=matmul_4d)
    ranks, targets = [], []
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            ranks.append(val.dim())
            assert all(isinstance(d, int) for d in val.shape), f"dynamic shape at {node}"
        if node.op == "call_function":
            targets.append(str(node.target))
    assert max(ranks) <= 4
    assert not [t for t in targets if any(f"aten.{g}." in t for g in GATHERS)]
    # The position-bias MLP is gone: no LayerNorm on a (2G-1)^2 table, no ReLU anywhere in the graph.
    assert not [t for t in targets if "relu" in t]


def test_reference_graph_is_what_the_rewrite_removes():
    """Sanity check of the assertions above: upstream's structure does have rank-8 tensors and gathers."""
    model = Normalized(build_model("crossformer-t", num_classes=10)).eval()
    program = torch.export.export(model, (torch.rand(1, 3, 224, 224),)).run_decompositions({})
    ranks = [n.meta["val"].dim() for n in program.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert max(ranks) == 8
    assert any("aten.index." in t for t in targets)


def test_decomposed_layernorm_graph_has_no_layer_norm():
    targets = [str(n.target) for n in _graph("crossformer-fmnist", 32, decompose=True).graph.nodes]
    assert not [t for t in targets if "layer_norm" in t]
