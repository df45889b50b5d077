"""save_pretrained / from_pretrained: round trips, what is stored, what is refused."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers import (
    assert_same_state,
    make_classifier,
    mlp_backbone,
    save_tiny_hf_encoder,
    state_snapshot,
    tiny_cnn,
)
from safetensors.torch import load_file, save_file
from torch import nn

from sktune import Adapter, Backbone, FineTuneClassifier, FineTuneRegressor, Freeze


def round_trip(estimator, X, path, **kwargs):
    estimator.save_pretrained(path)
    loaded = type(estimator).from_pretrained(path, **kwargs)
    proba = "predict_proba" if hasattr(estimator, "classes_") else "predict"
    np.testing.assert_array_equal(
        getattr(loaded, proba)(X), getattr(estimator, proba)(X)
    )
    return loaded


def saved_keys(path) -> set:
    return set(load_file(os.fspath(path / "model.safetensors")))


def test_module_backbone_round_trip(blobs, tmp_path):
    X, y = blobs
    labels = np.array(["ant", "bee", "wasp"])[y]
    clf = make_classifier(freeze=1).fit(X, labels)
    loaded = round_trip(clf, X, tmp_path, backbone=mlp_backbone())
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.classes_.tolist() == ["ant", "bee", "wasp"]
    assert loaded.get_params()["freeze"] == 1
    assert loaded.history_[:, "train_loss"] == clf.history_[:, "train_loss"]
    # Only the trained part: the head and the two blocks freeze=1 leaves.
    assert saved_keys(tmp_path) == {
        "backbone.2.weight",
        "backbone.2.bias",
        "backbone.5.weight",
        "backbone.5.bias",
        "head.weight",
        "head.bias",
    }
    # No pickle anywhere: the config is JSON.
    config = json.loads((tmp_path / "sktune_config.json").read_text())
    assert config["class"] == "FineTuneClassifier"
    assert config["params"] == {
        "freeze": 1,
        "lr": 0.01,
        "max_epochs": 5,
        "random_state": 0,
    }


def test_regressor_with_dataframe_features(blobs, tmp_path):
    pd = pytest.importorskip("pandas")
    X, _ = blobs
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(8)])
    reg = FineTuneRegressor(mlp_backbone(), max_epochs=2).fit(frame, X[:, :2])
    loaded = round_trip(reg, frame, tmp_path, backbone=mlp_backbone())
    assert loaded.predict(frame).shape == (150, 2)
    assert loaded.feature_names_in_.tolist() == [f"f{i}" for i in range(8)]


@pytest.mark.parametrize(
    ("class_weight", "saved"),
    [
        ({0: 2.0, 2: 0.5}, {"__items__": [[0, 2.0], [2, 0.5]]}),  # int keys
        ({"ant": 2.0}, {"ant": 2.0}),
        ("balanced", "balanced"),
    ],
)
def test_class_weight_round_trips_with_its_keys(blobs, tmp_path, class_weight, saved):
    X, y = blobs
    labels = y if 0 in list(class_weight) else np.array(["ant", "bee", "wasp"])[y]
    clf = make_classifier(class_weight=class_weight, max_epochs=1).fit(X, labels)
    loaded = round_trip(clf, X, tmp_path, backbone=mlp_backbone())
    assert loaded.class_weight == class_weight
    assert list(map(type, loaded.class_weight)) == list(map(type, class_weight))
    config = json.loads((tmp_path / "sktune_config.json").read_text())
    assert config["params"]["class_weight"] == saved


def test_a_multilabel_model_round_trips(blobs, tmp_path):
    X, y = blobs
    Y = np.c_[y == 0, y == 1, X[:, 0] > 0].astype(int)
    clf = make_classifier(max_epochs=2).fit(X, Y)
    loaded = round_trip(clf, X, tmp_path, backbone=mlp_backbone())
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.predict(X).shape == (150, 3)
    assert isinstance(loaded.criterion_, nn.BCEWithLogitsLoss)
    np.testing.assert_array_equal(loaded.classes_, [0, 1, 2])


def test_nested_parameters_and_trained_batchnorm_statistics(images, tmp_path):
    X, y = images
    clf = make_classifier(
        tiny_cnn(),
        freeze=Freeze(1, train_bn=True),
        optimizer=torch.optim.SGD,
        max_epochs=2,
    ).fit(X, y)
    loaded = round_trip(clf, X, tmp_path, backbone=tiny_cnn())
    assert isinstance(loaded.freeze, Freeze)
    assert loaded.freeze.get_params() == Freeze(1, train_bn=True).get_params()
    assert loaded.optimizer is torch.optim.SGD
    # The running statistics of every BatchNorm trained, the frozen block's
    # included, so they are saved and loaded back.
    stats = "backbone.stem.1.running_mean"
    assert stats in saved_keys(tmp_path)
    trained = clf.module_.state_dict()[stats]
    assert not torch.equal(trained, tiny_cnn().stem[1].running_mean)
    assert torch.equal(loaded.module_.state_dict()[stats], trained)


def test_timm_spec_with_local_weights(tmp_path):
    timm = pytest.importorskip("timm")
    spec = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **spec)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, weights)
    backbone = Backbone("timm:vit_tiny_patch16_224", weights=weights, **spec)
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(24, 16, 16, 3)).astype(np.uint8)
    y = np.arange(24) % 2
    clf = FineTuneClassifier(backbone, freeze=1, max_epochs=1).fit(X, y)
    round_trip(clf, X, tmp_path / "model")  # the backbone comes from the spec


def test_hf_spec_text_round_trip(reviews, tmp_path):
    texts, labels = reviews
    encoder = save_tiny_hf_encoder(tmp_path / "encoder", texts)
    clf = FineTuneClassifier(f"hf:{encoder}", max_epochs=1, max_length=16).fit(
        texts, labels
    )
    loaded = round_trip(clf, texts, tmp_path / "model")
    assert loaded.input_spec_ == clf.input_spec_


@pytest.mark.parametrize("merged", [False, True])
def test_adapter_model_saves_only_adapters_and_head(blobs, tmp_path, merged):
    pytest.importorskip("peft")
    X, y = blobs
    clf = make_classifier(adapter=Adapter("lora", r=2), max_epochs=2).fit(X, y)
    if merged:
        clf.merge_adapters()
    loaded = round_trip(clf, X, tmp_path, backbone=mlp_backbone())
    keys = saved_keys(tmp_path)
    assert keys and all("lora_" in k or k.startswith("head.") for k in keys)
    assert loaded.get_params()["adapter__r"] == 2


# -- what is refused ------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (os.fspath(self.marker), "w"))


def test_a_pickle_in_place_of_the_weights_is_refused_unrun(blobs, tmp_path):
    X, y = blobs
    make_classifier(max_epochs=1).fit(X, y).save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "model.safetensors", "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        FineTuneClassifier.from_pretrained(tmp_path, backbone=mlp_backbone())
    assert not marker.exists()


def test_weights_of_another_shape_are_refused(blobs, tmp_path):
    X, y = blobs
    make_classifier(freeze=1, max_epochs=1).fit(X, y).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(os.fspath(path))
    state["head.weight"] = torch.zeros(5, 16)  # 5 classes instead of 3
    save_file(state, os.fspath(path))
    backbone = mlp_backbone()
    pristine = state_snapshot(backbone)
    with pytest.raises(
        ValueError,
        match=r"model.safetensors does not fit the network the config builds: 0 "
        r"unknown tensors .* 1 of another shape \(e.g. \['head.weight'\]\)",
    ):
        FineTuneClassifier.from_pretrained(tmp_path, backbone=backbone)
    assert_same_state(pristine, state_snapshot(backbone))


def test_config_naming_a_foreign_class_is_refused(blobs, tmp_path):
    X, y = blobs
    make_classifier(max_epochs=1).fit(X, y).save_pretrained(tmp_path)
    path = tmp_path / "sktune_config.json"
    config = json.loads(path.read_text())
    config["params"]["optimizer"] = {"__class__": "os.system"}
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"names 'os.system'; only classes from"):
        FineTuneClassifier.from_pretrained(tmp_path, backbone=mlp_backbone())


def test_module_backbone_must_be_passed_back_and_match(blobs, tmp_path):
    X, y = blobs
    make_classifier(max_epochs=1).fit(X, y).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"saved from a module backbone \(Sequential\)"
    ):
        FineTuneClassifier.from_pretrained(tmp_path)
    other = mlp_backbone()
    with torch.no_grad():
        other[0].weight.add_(1)
    with pytest.raises(ValueError, match="pristine weights differ"):
        FineTuneClassifier.from_pretrained(tmp_path, backbone=other)
    with pytest.raises(ValueError, match="holds a FineTuneClassifier, not a"):
        FineTuneRegressor.from_pretrained(tmp_path, backbone=mlp_backbone())
    with pytest.raises(FileNotFoundError, match=r"no sktune_config\.json"):
        FineTuneClassifier.from_pretrained(tmp_path / "nowhere")


def test_a_head_factory_is_not_saved_and_must_be_passed_back(blobs, tmp_path):
    X, y = blobs

    def head(n_in, n_out):
        return nn.Sequential(nn.Linear(n_in, 4), nn.ReLU(), nn.Linear(4, n_out))

    clf = make_classifier(head=head, max_epochs=1).fit(X, y)
    clf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "sktune_config.json").read_text())
    assert config["not_saved"] == ["head"]
    with pytest.raises(ValueError, match=r"\['head'\] could not be saved as JSON"):
        FineTuneClassifier.from_pretrained(tmp_path, backbone=mlp_backbone())
    loaded = FineTuneClassifier.from_pretrained(
        tmp_path, backbone=mlp_backbone(), head=head
    )
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_unfitted_estimator_cannot_be_saved(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        make_classifier().save_pretrained(tmp_path)
