"""Backbone specs, lazy resolution, sharing, offline errors.

Everything builds tiny models with random weights; nothing is downloaded.
"""

import copy
import pickle
import urllib.error

import pytest
import torch
from helpers import TINY_VIT
from sklearn.base import clone
from torch import nn

from sktune import Backbone, FineTuneClassifier
from sktune.backbones import (
    WeightsUnavailableError,
    as_backbone,
)

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")
transformers = pytest.importorskip("transformers")


def test_spec_is_resolved_lazily_and_shared():
    bad = Backbone("timm:no_such_model_anywhere")  # construction never resolves
    assert repr(bad) == "Backbone('timm:no_such_model_anywhere')"
    with pytest.raises(ValueError, match="timm has no model 'no_such_model_anywhere'"):
        bad.module()

    calls = []

    def factory():
        calls.append(1)
        return nn.Linear(2, 2)

    bb = Backbone(factory)
    clf = FineTuneClassifier(bb)
    assert calls == []
    copies = [copy.deepcopy(bb), clone(clf).backbone, copy.deepcopy(clf).backbone]
    modules = {id(c.module()) for c in copies} | {id(bb.module())}
    assert len(modules) == 1 and calls == [1]  # built once, shared by all


def test_unknown_prefix_lists_accepted_ones():
    with pytest.raises(ValueError) as info:
        Backbone("keras:resnet").module()
    assert str(info.value) == (
        "Backbone spec 'keras:resnet' has an unknown prefix 'keras'; accepted "
        "prefixes are 'timm:', 'torchvision:', 'hf:', or give a local directory or "
        "file path."
    )
    with pytest.raises(ValueError, match="neither a spec with a prefix"):
        Backbone("resnet18").module()
    with pytest.raises(ValueError, match="names no model after 'hf:'"):
        Backbone("hf:").module()


def test_timm_spec_without_pretrained_weights():
    bb = Backbone("timm:vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    module = bb.module()
    assert bb.module() is module
    assert isinstance(module.head, nn.Identity)  # num_classes=0: pooled features
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 24)
    config = bb.data_config()
    assert config["mean"] == pytest.approx((0.5, 0.5, 0.5))
    assert config["input_size"] == (3, 32, 32)
    assert set(config) == {"mean", "std", "input_size", "interpolation", "crop_pct"}
    assert bb.tokenizer() is None and bb.default_pooling() is None


def test_timm_unknown_model_suggests_names():
    with pytest.raises(ValueError, match=r"Did you mean one of \[.*'resnet18'"):
        Backbone("timm:resnet18x", pretrained=False).module()


@pytest.mark.parametrize(
    ("name", "removed"),
    [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")],
)
def test_torchvision_spec_removes_classifier(name, removed):
    bb = Backbone(f"torchvision:{name}", pretrained=False)
    module = bb.module()
    assert isinstance(module.get_submodule(removed), nn.Identity)
    config = bb.data_config()
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert config["input_size"] == (3, 224, 224)
    assert config["crop_pct"] == pytest.approx(224 / 256)
    module.eval()
    width = 512 if name == "resnet18" else 1024
    assert module(torch.zeros(1, 3, 32, 32)).shape == (1, width)


def test_pickle_keeps_parameters_and_drops_built_module():
    bb = Backbone("timm:vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    bb.module()
    restored = pickle.loads(pickle.dumps(bb))
    assert restored.kwargs == TINY_VIT and restored.pretrained is False
    assert restored._state.loaded is None


def test_string_spec_is_shared_between_fits():
    spec = "torchvision:resnet18"
    assert as_backbone(spec) is as_backbone(spec)
    bb = Backbone("timm:vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    assert as_backbone(bb) is bb
    with pytest.raises(TypeError, match="backbone must be"):
        as_backbone(3)


def test_offline_timm_error_names_local_weights(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the cache.")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        Backbone("timm:resnet18").module()
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert (
        "Could not fetch the pretrained weights of backbone 'timm:resnet18'" in message
    )
    assert "(offline?)" in message
    assert (
        "Backbone('timm:resnet18', weights='/path/to/weights.safetensors')" in message
    )


def test_offline_torchvision_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvm, "get_model", offline)
    with pytest.raises(WeightsUnavailableError, match="weights='/path/to/"):
        Backbone("torchvision:resnet18").module()


def test_offline_hf_error_names_local_directory(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError) as info:
        Backbone("hf:sktune-tests/not-a-cached-model").module()
    assert "Backbone('/path/to/model_dir')" in str(info.value)


def test_checkpoint_file_naming_its_architecture(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    path = tmp_path / "checkpoint.pth.tar.pth"
    torch.save({"arch": "vit_tiny_patch16_224", "state_dict": model.state_dict()}, path)
    module = Backbone(str(path), **TINY_VIT).module()
    assert torch.equal(module.cls_token, model.cls_token)
