"""Registry contract and export-friendly vs faithful reference, for every variant."""

import pytest
import torch

from edge_crossformer import ModelConfigError, Spelling, build_model, create_model, list_models
from edge_crossformer.reference import model_macs

from conftest import perturb, rel_err

UPSTREAM = ["crossformer-t", "crossformer-s", "crossformer-b", "crossformer-l",
            "crossformerpp-s", "crossformerpp-b", "crossformerpp-l", "crossformerpp-h"]
# Sizes beyond 224 that make main pad the token grid (CrossFormer-T: stage 1 96 -> 112; ++-S: 64 -> 64/72 ...).
PADDED = [("crossformer-t", 384), ("crossformerpp-s", 256),
          pytest.param("crossformer-s", 288, marks=pytest.mark.heavy),
          pytest.param("crossformer-b", 320, marks=pytest.mark.heavy),
          pytest.param("crossformer-l", 384, marks=pytest.mark.heavy),
          pytest.param("crossformerpp-b", 288, marks=pytest.mark.heavy),
          pytest.param("crossformerpp-l", 256, marks=pytest.mark.heavy),
          pytest.param("crossformerpp-h", 320, marks=pytest.mark.heavy)]


def test_list_models_has_every_upstream_variant_and_the_bundled_one():
    names = list_models()
    assert set(UPSTREAM) <= set(names)
    assert "crossformer-fmnist" in names


def test_hyper_parameters_follow_upstream_configs():
    t = build_model("crossformer-t", num_classes=3)
    assert [len(layer.blocks) for layer in t.layers] == [1, 1, 8, 6]
    assert [proj.kernel_size[0] for proj in t.patch_embed.projs] == [4, 8, 16, 32]
    assert [proj.out_channels for proj in t.patch_embed.projs] == [32, 16, 8, 8]
    assert [r.kernel_size[0] for r in t.layers[0].downsample.reductions] == [2, 4]
    # main keeps the configured interval: LDA blocks of stage 1..3 use 8, 4, 2; stage 4 (7x7) is one group.
    assert [(b.group, b.interval) for b in t.layers[2].blocks[:2]] == [(7, 0), (7, 2)]
    assert t.layers[3].blocks[1].group == 7 and t.layers[3].blocks[1].interval == 0
    pp = build_model("crossformerpp-s", num_classes=3)
    assert [len(layer.blocks) for layer in pp.layers] == [2, 2, 18, 2]
    assert [(b.group, b.interval) for b in pp.layers[0].blocks] == [(4, 0), (4, 4)]
    # Cooling layers after blocks 3, 6, ... of a stage, never after its last block.
    acl = [i for i, b in enumerate(pp.layers[2].blocks) if b.use_extra_conv]
    assert acl == [2, 5, 8, 11, 14]
    # ++ at 224 pads in stages 1 and 2 (56 -> 64 for G*I = 16, 28 -> 32 for G*I = 8), nowhere else.
    padded = [(i, j) for i, layer in enumerate(pp.layers) for j, b in enumerate(layer.blocks) if b.attn_mask is not None]
    assert padded == [(0, 1), (1, 1)]


def test_crossformer_t_macs_match_the_paper():
    # Paper: CrossFormer-T 2.9 GFLOPs (multiply-accumulates) at 224.
    assert model_macs(build_model("crossformer-t")) / 1e9 == pytest.approx(2.86, abs=0.05)


@pytest.mark.parametrize("bad,fix", [(230, "224 or 256"), (100, "96 or 128"), (16, "32"), (0, "32")])
def test_bad_img_size_names_valid_neighbours(bad, fix):
    with pytest.raises(ModelConfigError, match=fix):
        create_model("crossformer-t", img_size=bad)


def test_bad_num_classes_and_unknown_name():
    with pytest.raises(ModelConfigError, match="num_classes must be"):
        create_model("crossformer-t", num_classes=0)
    with pytest.raises(ModelConfigError, match="known models: .*crossformer-t") as err:
        create_model("crossformer-xl")
    assert "crossformerpp-h" in str(err.value)


def _pair(name: str, size: int, classes: int = 17, seed: int = 0):
    reference = perturb(build_model(name, img_size=size, num_classes=classes), seed=seed).eval()
    friendly = build_model(name, img_size=size, num_classes=classes, export_friendly=True)
    friendly.load_state_dict(reference.state_dict())
    from edge_crossformer import fold_position_bias
    return reference, fold_position_bias(friendly.eval())


@pytest.mark.parametrize("name", UPSTREAM)
def test_export_friendly_matches_reference_at_224(name, seeded_input):
    reference, friendly = _pair(name, 224)
    x = seeded_input(224)
    with torch.no_grad():
        expected, got = reference(x), friendly(x)
    assert rel_err(got, expected) <= 1e-5
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("name,size", PADDED)
def test_export_friendly_matches_reference_with_padding(name, size, seeded_input):
    reference, friendly = _pair(name, size)
    assert any(b.attn_mask is not None for layer in reference.layers for b in layer.blocks), "size must pad"
    x = seeded_input(size, batch=2)
    with torch.no_grad():
        expected, got = reference(x), friendly(x)
    assert rel_err(got, expected) <= 1e-5
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_decomposed_layernorm_model_matches_reference(seeded_input):
    reference = perturb(build_model("crossformerpp-s", img_size=64, num_classes=5)).eval()
    friendly = build_model("crossformerpp-s", img_size=64, num_classes=5,
                           spelling=Spelling(decompose_layernorm=True))
    friendly.load_state_dict(reference.state_dict())
    x = seeded_input(64)
    with torch.no_grad():
        assert rel_err(friendly.eval()(x), reference(x)) <= 1e-5


def test_unfolded_model_trains_and_folds_to_the_same_function(seeded_input):
    from edge_crossformer import fold_position_bias
    model = perturb(build_model("crossformer-fmnist", export_friendly=True))
    model.train()
    loss = model(seeded_input(32, batch=2)).logsumexp(1).mean()
    loss.backward()
    pos_grad = model.layers[0].blocks[1].attn.pos.pos3[2].weight.grad
    assert pos_grad is not None and pos_grad.abs().sum() > 0, "position-bias MLP must be trainable before folding"
    model.eval()
    x = seeded_input(32)
    with torch.no_grad():
        assert rel_err(fold_position_bias(model)(x), model(x)) <= 1e-6


def test_folded_model_refolds_when_weights_load(seeded_input):
    model = create_model("crossformer-t", img_size=64, num_classes=4, export_friendly=True)
    other = perturb(build_model("crossformer-t", img_size=64, num_classes=4), seed=3).eval()
    model.load_state_dict(other.state_dict())
    x = seeded_input(64)
    with torch.no_grad():
        assert rel_err(model(x), other(x)) <= 1e-5
