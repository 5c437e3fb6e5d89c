"""Backbones (features_only): the faithful det / seg backbone, its export-friendly rewrite at one size and at every
size in a range, checkpoint layouts (mmdet / mmseg, classification), and bad requests.

The faithful backbone was checked by hand against upstream's own detection and segmentation backbone code and its
weights layout (docs/backbone.md); here it is the oracle, cross-checked against the faithful classifier."""

import pytest
import torch

from edge_crossformer import CheckpointError, Spelling, create_model, get_config
from edge_crossformer.backbone import BackboneConfigError, min_dynamic_size, output_specs
from edge_crossformer.reference_backbone import CrossFormerBackbone, grid_geometry

from conftest import perturb

SPELLINGS = [Spelling(), Spelling(decompose_layernorm=True), Spelling(matmul_4d=True, fold_norms=True),
             Spelling(flat_linears=True)]


def _max_rel(got, ref) -> float:
    return max(float((g - r).abs().max() / r.abs().max()) for g, r in zip(got, ref))


def test_geometry_follows_upstream_det_rules():
    # A grid larger than the group: SDA pads each side to G, LDA to G x I, separately.
    assert grid_geometry(12, 20, 7, 2, 0) == (7, 0, 14, 21)
    assert grid_geometry(12, 20, 7, 2, 1) == (7, 2, 14, 28)
    # Not larger than the group in one direction: one SDA group of max(H, W), the grid padded to a square.
    assert grid_geometry(7, 20, 7, 1, 1) == (20, 0, 20, 20)
    assert grid_geometry(3, 4, 7, 8, 0) == (4, 0, 4, 4)


def test_backbone_maps_equal_the_classifier_stages():
    """At the classifier's size both oracles (upstream's classification and detection code) compute the same maps."""
    torch.manual_seed(0)
    cls = perturb(create_model("crossformer-fmnist"))
    backbone = CrossFormerBackbone(get_config("crossformer-fmnist").backbone()).eval()
    backbone.load_state_dict({k: v for k, v in cls.state_dict().items() if not k.startswith(("norm.", "head."))})
    seen = []
    hooks = [layer.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o)) for layer in cls.layers]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls(x)
        maps = backbone(x)
    for h in hooks:
        h.remove()
    for tokens, fmap in zip(seen, maps):
        b, c, hh, ww = fmap.shape
        assert torch.allclose(tokens.reshape(b, hh, ww, c).permute(0, 3, 1, 2), fmap, atol=1e-6)


@pytest.mark.parametrize("spelling", SPELLINGS, ids=lambda s: "-".join(k for k, v in vars(s).items() if v) or "plain")
def test_rewrite_matches_oracle_fixed_and_range(spelling, tmp_path):
    torch.manual_seed(0)
    ref = perturb(create_model("crossformer-fmnist", features_only=True))
    torch.save({"model": ref.state_dict()}, tmp_path / "w.pth")
    build = lambda **kw: create_model("crossformer-fmnist", features_only=True, spelling=spelling,  # noqa: E731
                                      checkpoint=tmp_path / "w.pth", **kw)
    ranged = build(dynamic_size=(64, 256))
    for hw in [(64, 64), (96, 160), (224, 64), (128, 128)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            want = ref(x)
            assert [tuple(t.shape) for t in want] == [(2, 32 * 2 ** i, hw[0] // s, hw[1] // s)
                                                      for i, s in enumerate((4, 8, 16, 32))]
            assert _max_rel(build(img_size=hw)(x), want) <= 1e-5
            assert _max_rel(ranged(x), want) <= 1e-5


def test_full_size_crossformer_s_non_square():
    """CrossFormer-S's detection backbone at 384 x 640 (every stage padded in one direction)."""
    torch.manual_seed(0)
    ref = create_model("crossformer-s", features_only=True)
    fixed = create_model("crossformer-s", features_only=True, export_friendly=True, img_size=(384, 640))
    fixed.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 384, 640)
    with torch.no_grad():
        assert _max_rel(fixed(x), ref(x)) <= 1e-5


def test_crossformerpp_backbone_uses_upstreams_detection_groups():
    cfg = get_config("crossformerpp-s")
    assert cfg.group_size == (4, 4, 14, 7)  # the classifier
    assert cfg.backbone().group_size == (7, 7, 7, 7) and cfg.backbone().interval == (8, 4, 2, 1)
    assert get_config("crossformer-s").backbone() == get_config("crossformer-s")
    assert min_dynamic_size(cfg.backbone()) == 256


def test_out_indices_and_output_specs():
    model = create_model("crossformer-fmnist", features_only=True, out_indices=(1, 3))
    with torch.no_grad():
        maps = model(torch.rand(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 8, 12), (1, 256, 2, 3)]
    specs = output_specs(get_config("crossformer-fmnist"), (1, 3), (64, 96))
    assert [(s["name"], s["stride"], s["channels"], s["shape"]) for s in specs] == [
        ("stage2", 8, 64, [1, 64, 8, 12]), ("stage4", 32, 256, [1, 256, 2, 3])]


@pytest.mark.parametrize("kwargs, message", [
    ({"out_indices": (0, 4)}, "out_indices must be distinct stage indices in 0..3"),
    ({"out_indices": ()}, "out_indices must be distinct"),
    ({"img_size": (64, 100), "export_friendly": True}, "multiple of 32"),
    ({"dynamic_size": (32, 256), "export_friendly": True}, "only for sides >= 64"),
    ({"dynamic_size": (256, 64), "export_friendly": True}, "is empty"),
])
def test_bad_backbone_requests(kwargs, message):
    with pytest.raises(BackboneConfigError, match=message):
        create_model("crossformer-fmnist", features_only=True, **kwargs)


def test_classifier_for_a_range_of_sizes():
    """The any-size classifier (oracle and rewrite) gives the fixed-size classifier's logits at square sizes."""
    torch.manual_seed(0)
    oracle = create_model("crossformer-fmnist", dynamic_size=(64, 256))
    rewrite = create_model("crossformer-fmnist", dynamic_size=(64, 256), export_friendly=True)
    for size in (64, 96, 256):
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            want = create_model("crossformer-fmnist", img_size=size)(x)
            assert float((oracle(x) - want).abs().max()) <= 1e-5 * float(want.abs().max())
            assert float((rewrite(x) - want).abs().max()) <= 1e-5 * float(want.abs().max())
    x = torch.rand(1, 3, 96, 224)
    with torch.no_grad():
        assert float((rewrite(x) - oracle(x)).abs().max()) <= 1e-5 * float(oracle(x).abs().max())
    with pytest.raises(BackboneConfigError, match="only for sides >= 64"):
        create_model("crossformer-fmnist", dynamic_size=(32, 128))


def test_checkpoint_layouts(tmp_path):
    torch.manual_seed(0)
    ref = perturb(create_model("crossformer-fmnist", features_only=True))
    backbone = ref.state_dict()
    mmdet = {"meta": {"epoch": 12}, "state_dict": {**{f"backbone.{k}": v for k, v in backbone.items()},
                                                   "neck.lateral_convs.0.conv.weight": torch.zeros(8, 32, 1, 1),
                                                   "bbox_head.retina_cls.bias": torch.zeros(9)}}
    torch.save(mmdet, tmp_path / "det.pth")
    loaded = create_model("crossformer-fmnist", features_only=True, checkpoint=tmp_path / "det.pth")
    assert loaded.checkpoint_kind == "detection / segmentation"
    assert sorted(loaded.ignored_keys) == ["bbox_head.retina_cls.bias", "neck.lateral_convs.0.conv.weight"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert _max_rel(loaded(x), ref(x)) == 0
    friendly = create_model("crossformer-fmnist", features_only=True, checkpoint=tmp_path / "det.pth",
                            export_friendly=True, img_size=64)
    with torch.no_grad():
        assert _max_rel(friendly(x), ref(x)) <= 1e-5
    # A backbone-only file (upstream's "backbone-crossformer-s.pth" style, no prefix) and the bundled classifier.
    torch.save({"model": backbone}, tmp_path / "bare.pth")
    assert create_model("crossformer-fmnist", features_only=True,
                        checkpoint=tmp_path / "bare.pth").checkpoint_kind == "backbone"
    assert create_model("crossformer-fmnist", features_only=True).checkpoint_kind == "classification"


def test_wrong_checkpoint_kinds_are_clear_errors(tmp_path):
    backbone = create_model("crossformer-fmnist", features_only=True).state_dict()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.items()}}, tmp_path / "det.pth")
    with pytest.raises(CheckpointError, match="detection / segmentation checkpoint.*--task features"):
        create_model("crossformer-fmnist", checkpoint=tmp_path / "det.pth")
    torch.save(backbone, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="backbone only.*--task features"):
        create_model("crossformer-fmnist", checkpoint=tmp_path / "bare.pth")
    # Another variant's detection checkpoint: strictly checked, the error names the variant.
    other = create_model("crossformer-t", features_only=True).state_dict()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in other.items()}}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="try --model crossformer-t"):
        create_model("crossformer-fmnist", features_only=True, checkpoint=tmp_path / "t.pth")
