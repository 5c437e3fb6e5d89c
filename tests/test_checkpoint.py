"""Every upstream checkpoint layout loads into both models; every bad checkpoint gets a clear error."""

import pickle
import warnings
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from edge_crossformer import CheckpointError, build_model, create_model
from edge_crossformer.reference import relative_offsets, relative_position_index

from conftest import perturb, rel_err

SMALL = 64  # input size for layout tests: the state dict does not depend on it


@pytest.fixture(scope="module")
def tiny_state():
    model = perturb(build_model("crossformer-t", img_size=SMALL, num_classes=10), seed=7).eval()
    return model, model.state_dict()


def _v1_state(model) -> OrderedDict:
    """The v1 branch's layout: each attention also saves its offset table and relative-position index."""
    state = OrderedDict(model.state_dict())
    for name, module in model.named_modules():
        if name.endswith(".attn"):
            state[f"{name}.biases"] = relative_offsets(module.group_size)
            state[f"{name}.relative_position_index"] = relative_position_index(module.group_size)
    return state


def _check_both(path, reference, size=SMALL, classes=10):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        for friendly in (False, True):
            model = create_model(reference.model_name, checkpoint=path, img_size=size, num_classes=classes,
                                 export_friendly=friendly)
            got = model(x)
            assert rel_err(got, expected) <= 1e-5
            assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("layout", ["upstream", "bare", "state_dict", "dataparallel", "v1", "safetensors"])
def test_layouts_load_into_both_models(layout, tiny_state, tmp_path):
    model, state = tiny_state
    path = tmp_path / ("ckpt.safetensors" if layout == "safetensors" else "ckpt.pth")
    if layout == "upstream":
        torch.save({"model": state, "optimizer": {}, "epoch": 299, "max_accuracy": 81.5}, path)
    elif layout == "bare":
        torch.save(state, path)
    elif layout == "state_dict":
        torch.save({"state_dict": state}, path)
    elif layout == "dataparallel":
        torch.save({"model": OrderedDict((f"module.{k}", v) for k, v in state.items())}, path)
    elif layout == "v1":
        torch.save({"model": _v1_state(model)}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    _check_both(path, model)


@pytest.mark.parametrize("name,size", [("crossformer-t", 224), ("crossformer-t", 384), ("crossformerpp-s", 224),
                                       ("crossformerpp-s", 256),
                                       pytest.param("crossformer-s", 224, marks=pytest.mark.heavy),
                                       pytest.param("crossformer-b", 224, marks=pytest.mark.heavy),
                                       pytest.param("crossformer-l", 224, marks=pytest.mark.heavy),
                                       pytest.param("crossformerpp-b", 224, marks=pytest.mark.heavy),
                                       pytest.param("crossformerpp-l", 224, marks=pytest.mark.heavy),
                                       pytest.param("crossformerpp-h", 224, marks=pytest.mark.heavy)])
def test_upstream_checkpoint_reproduces_reference_logits(name, size, tmp_path):
    reference = perturb(build_model(name, img_size=size), seed=11).eval()
    path = tmp_path / "upstream.pth"
    torch.save({"model": reference.state_dict()}, path)
    _check_both(path, reference, size=size, classes=1000)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        create_model("crossformer-t", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        create_model("crossformer-t", checkpoint=tmp_path)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        create_model("crossformer-t", checkpoint=path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        create_model("crossformer-t", checkpoint=bad)


class Trainer:  # an arbitrary object weights_only=True must refuse to unpickle
    pass


def test_pickle_that_weights_only_refuses(tmp_path, tiny_state):
    path = tmp_path / "full.pth"
    torch.save({"model": tiny_state[1], "trainer": Trainer()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        create_model("crossformer-t", checkpoint=path, img_size=SMALL, num_classes=10)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        create_model("crossformer-t", checkpoint=path)


@pytest.mark.parametrize("source,hint", [("crossformer-s", "crossformer-s"), ("crossformerpp-s", "crossformerpp-s")])
def test_checkpoint_of_another_variant_or_family_names_it(source, hint, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": build_model(source, img_size=SMALL).state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        create_model("crossformer-t", checkpoint=path, img_size=SMALL)
    text = str(err.value)
    assert f"try --model {hint}" in text
    assert "missing keys" in text or "unexpected keys" in text or "other shapes" in text


def test_head_with_other_class_count_is_an_error_unless_reset(tmp_path, tiny_state):
    model, state = tiny_state
    path = tmp_path / "ten.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="10-class head.*--num-classes 10"):
        create_model("crossformer-t", checkpoint=path, img_size=SMALL, num_classes=37)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = create_model("crossformer-t", checkpoint=path, img_size=SMALL, num_classes=37, reset_head=True)
    assert any("head dropped" in str(w.message) for w in caught)
    assert fresh.head.out_features == 37
    torch.testing.assert_close(fresh.patch_embed.projs[0].weight, state["patch_embed.projs.0.weight"])


def test_v1_buffers_that_disagree_are_an_error(tmp_path, tiny_state):
    model, _ = tiny_state
    state = _v1_state(model)
    key = next(k for k in state if k.endswith("relative_position_index"))
    state[key] = state[key].flip(0)
    path = tmp_path / "v1bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="v1 buffer"):
        create_model("crossformer-t", checkpoint=path, img_size=SMALL, num_classes=10)


def test_truncated_checkpoint_lists_missing_keys(tmp_path, tiny_state):
    _, state = tiny_state
    partial = {k: v for k, v in state.items() if not k.startswith("layers.3")}
    path = tmp_path / "partial.pth"
    torch.save({"model": partial}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(e\.g\. 'layers\.3"):
        create_model("crossformer-t", checkpoint=path, img_size=SMALL, num_classes=10)
