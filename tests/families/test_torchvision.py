"""torchvision models: ResNet stages, features children, classifiers."""

import pytest
from helpers import (
    check_partition,
    frozen_after,
    names_under,
)
from torch import nn

tvm = pytest.importorskip("torchvision.models")


def test_torchvision_resnet_stem_then_layers():
    model = tvm.resnet18(weights=None)
    blocks = check_partition(model, excluded=("fc",))
    assert [b.name for b in blocks] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert blocks[0].modules == ("conv1", "bn1", "relu", "maxpool")
    frozen, trainable = frozen_after(model, 3)
    assert frozen == names_under(model, "conv1", "bn1", "layer1", "layer2")
    assert trainable == names_under(model, "layer3", "layer4", "fc")


@pytest.mark.parametrize(
    ("factory", "n_features", "classifier", "head_rest"),
    [
        (tvm.efficientnet_b0, 9, "classifier.1", ()),
        (tvm.mobilenet_v3_small, 13, "classifier.3", ("classifier.0",)),
    ],
)
def test_torchvision_features_children(factory, n_features, classifier, head_rest):
    model = factory(weights=None)
    blocks = check_partition(model, excluded=(classifier,))
    assert [b.name for b in blocks] == [f"features.{i}" for i in range(n_features)]
    frozen, trainable = frozen_after(model, 2)
    assert frozen == names_under(model, "features.0", "features.1")
    # Pre-logits layers of the classifier train with the last block.
    assert set(blocks[-1].params) == names_under(
        model, f"features.{n_features - 1}", *head_rest
    )
    _, trainable = frozen_after(model, n_features)
    assert trainable == names_under(model, classifier)


def test_torchvision_classifier_replaced_by_identity_leaves_no_exclusion():
    model = tvm.mobilenet_v3_small(weights=None)
    model.classifier[3] = nn.Identity()
    blocks = check_partition(model)
    assert "classifier.0.weight" in blocks[-1].params
