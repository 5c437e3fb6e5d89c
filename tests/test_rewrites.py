"""Each export-friendly rewrite against the reference computation it replaces."""

import tempfile

import pytest
import torch
import torch.nn.functional as F

from edge_crossformer import Spelling
from edge_crossformer import reference as ref
from edge_crossformer.export_friendly import (
    MASK_VALUE, ExportLayerNorm, FriendlyAttention, lsda_merge, lsda_partition, padding_mask,
    relative_position_onehot, _folded_bias,
)

GEOMETRIES = [(56, 7, 0), (56, 7, 8), (28, 7, 4), (64, 4, 4), (32, 4, 2), (14, 7, 2), (16, 4, 1), (8, 4, 2)]


def _groups_as_sets(groups: torch.Tensor) -> list[tuple]:
    return sorted(tuple(g.flatten().tolist()) for g in groups)


@pytest.mark.parametrize("size,group,interval", GEOMETRIES)
def test_partition_gives_upstream_groups_with_upstream_token_order(size, group, interval):
    # Token ids as channel values: each group's rows list its tokens in order.
    x = torch.arange(size * size, dtype=torch.float32).view(1, size, size, 1)
    ours = lsda_partition(x, group, interval)
    theirs = ref.group_tokens(x, group, interval)
    assert ours.shape == theirs.shape
    assert _groups_as_sets(ours) == _groups_as_sets(theirs)


@pytest.mark.parametrize("size,group,interval", GEOMETRIES)
def test_merge_inverts_partition(size, group, interval):
    x = torch.randn(2, size, size, 5)
    assert torch.equal(lsda_merge(lsda_partition(x, group, interval), 2, size, size, group, interval), x)


@pytest.mark.parametrize("resolution,group,interval", [(56, 4, 4), (28, 4, 2), (12, 7, 0), (12, 7, 1), (24, 7, 2)])
def test_padding_mask_hides_the_same_keys_as_upstream(resolution, group, interval):
    ref_mask = ref.build_attn_mask(resolution, group, interval)
    ours = padding_mask(resolution, group, interval)
    assert ref_mask is not None and ours is not None
    # Compare per group: the set of masked key positions (by token id) must match.
    hp = resolution + ref.padding_for(resolution, group * max(interval, 1))
    ids = torch.arange(hp * hp, dtype=torch.float32).view(1, hp, hp, 1)
    ref_ids, our_ids = ref.group_tokens(ids, group, interval), lsda_partition(ids, group, interval)
    ref_masked = sorted(tuple(ref_ids[g, :, 0][ref_mask[g, 0] < 0].tolist()) for g in range(len(ref_ids)))
    our_masked = sorted(tuple(our_ids[g, :, 0][ours[g, 0, 0] < 0].tolist()) for g in range(len(our_ids)))
    assert ref_masked == our_masked
    assert any(len(m) for m in ref_masked)


def test_mask_value_is_fp16_safe_and_still_zeroes_softmax():
    assert torch.isfinite(torch.tensor(MASK_VALUE, dtype=torch.float16))
    logits = torch.tensor([3.0, -2.0, 50.0])
    masked = torch.softmax(logits + torch.tensor([0.0, 0.0, MASK_VALUE]), dim=0)
    assert masked[2].item() == 0.0


@pytest.mark.parametrize("group", [1, 2, 4, 7, 14])
def test_onehot_matmul_equals_gather(group):
    table = torch.randn((2 * group - 1) ** 2, 3)
    index = ref.relative_position_index(group).view(-1)
    assert torch.equal(relative_position_onehot(group) @ table, table[index])


@pytest.mark.parametrize("shape", [(2, 49, 64), (1, 3136, 32), (4, 96)])
def test_decomposed_layernorm_matches_layer_norm(shape):
    ln = ExportLayerNorm(shape[-1], decompose=True)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(shape) * 3 + 1
    expected = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(ln(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("matmul_4d", [False, True], ids=["bmm3d", "matmul4d"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("resolution,group,interval", [(28, 7, 4), (56, 4, 4)])
def test_attention_matches_reference_and_folding_matches_live_bias(resolution, group, interval, batch, matmul_4d):
    torch.manual_seed(0)
    dim, heads = 32, 2
    ref_attn = ref.Attention(dim, group, heads)
    for p in ref_attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    mask = padding_mask(resolution, group, interval)
    ours = FriendlyAttention(dim, group, heads, mask, Spelling(matmul_4d=matmul_4d))
    ours.load_state_dict(ref_attn.state_dict())
    hp = resolution + ref.padding_for(resolution, group * interval)
    grid = torch.randn(batch, hp, hp, dim)
    with torch.no_grad():
        expected = ref.ungroup_tokens(
            ref_attn(ref.group_tokens(grid, group, interval), ref.build_attn_mask(resolution, group, interval)),
            batch, hp, hp, group, interval)
        live = lsda_merge(ours(lsda_partition(grid, group, interval)), batch, hp, hp, group, interval)
        ours.attn_bias = _folded_bias(ours)
        folded = lsda_merge(ours(lsda_partition(grid, group, interval)), batch, hp, hp, group, interval)
    # Only unpadded positions are kept by the block.
    keep = (slice(None), slice(0, resolution), slice(0, resolution))
    torch.testing.assert_close(live[keep], expected[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded[keep], expected[keep], rtol=1e-5, atol=1e-5)


def test_flat_linears_compute_the_same_with_the_same_parameters():
    from edge_crossformer import create_model
    from edge_crossformer.export_friendly import FlatLinear

    torch.manual_seed(0)
    model = create_model("crossformer-fmnist", export_friendly=True).eval()
    keys = list(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        flat = create_model("crossformer-fmnist", spelling=Spelling(flat_linears=True)).eval()
        after = flat(x)
    assert list(flat.state_dict()) == keys
    assert sum(isinstance(m, FlatLinear) for m in flat.modules()) > 10
    assert type(flat.head) is torch.nn.Linear  # the 2-D head is left alone
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,size", [("crossformer-t", 96), ("crossformer-fmnist", 32)])
def test_openvino_spelling_matches_reference(name, size):
    """4-D attention with q / k / v linears and the projection after the merge, LayerNorm scale and shift folded
    into the next linears, channel-axis concat in the cross-scale layers: against the faithful model, with random
    non-trivial norms and biases (upstream's init, LayerNorm (1, 0) and zero biases, would hide folding errors).
    CrossFormer-T at 96 px pads stages 1-3 (24, 12, 6 tokens a side with groups of 7), so the crop comes first."""
    from edge_crossformer import create_model
    from edge_crossformer.export_friendly import ChannelConcatEmbed, ChannelConcatMerging, strip_position_mlp

    torch.manual_seed(0)
    reference = create_model(name, img_size=size, num_classes=10).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(reference.state_dict(), f"{tmp}/ckpt.pth")
        ours = create_model(name, checkpoint=f"{tmp}/ckpt.pth", img_size=size, num_classes=10,
                            spelling=Spelling(matmul_4d=True, fold_norms=True))
    ours = strip_position_mlp(ours).eval()
    assert all(m.matmul_4d for m in ours.modules() if isinstance(m, FriendlyAttention))
    assert isinstance(ours.patch_embed, ChannelConcatEmbed)
    assert all(isinstance(stage.downsample, ChannelConcatMerging) for stage in ours.layers[:-1])
    assert all(not blk.norm1.elementwise_affine for stage in ours.layers for blk in stage.blocks)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)
