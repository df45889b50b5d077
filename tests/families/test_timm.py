"""timm models: blocks from group_matcher, classifier in no block."""

import pytest
from helpers import (
    check_partition,
    family_blocks,
    frozen_after,
    names_under,
)
from torch import nn

from sktune.freeze import apply_freeze, plan_freeze
from sktune.network import FineTuneNetwork

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=0)


def test_timm_resnet_blocks_follow_group_matcher(timm_resnet):
    blocks = check_partition(timm_resnet)
    assert [b.name for b in blocks] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert blocks[0].modules == ("conv1", "bn1", "act1", "maxpool")

    frozen, trainable = frozen_after(timm_resnet, 1)
    assert frozen == {"conv1.weight", "bn1.weight", "bn1.bias"}
    frozen, trainable = frozen_after(timm_resnet, 2)
    assert frozen == names_under(timm_resnet, "conv1", "bn1", "layer1")
    assert trainable == names_under(timm_resnet, "layer2", "layer3", "layer4")
    frozen, trainable = frozen_after(timm_resnet, -1)
    assert trainable == names_under(timm_resnet, "layer4")


def test_timm_frozen_batchnorm_runs_in_eval(timm_resnet):
    plan = plan_freeze(timm_resnet, family_blocks(timm_resnet), 2)
    apply_freeze(timm_resnet, plan)
    FineTuneNetwork(timm_resnet, nn.Identity(), plan).train()
    assert not timm_resnet.bn1.training
    assert not timm_resnet.layer1[0].bn1.training
    assert timm_resnet.layer2[0].conv1.training
    assert not timm_resnet.layer2[0].bn1.training  # pretrained statistics kept
    assert timm_resnet.layer2[0].bn1.weight.requires_grad


def test_timm_classifier_is_in_no_block():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    blocks = check_partition(model, excluded=("fc",))
    _frozen, trainable = frozen_after(model, len(blocks))
    assert trainable == {"fc.weight", "fc.bias"}


def test_timm_efficientnet_conv_head_joins_last_block():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    blocks = check_partition(model)
    assert len(blocks) == 8  # stem + 7 stages
    assert blocks[0].params == ("conv_stem.weight", "bn1.weight", "bn1.bias")
    assert {"conv_head", "bn2"} <= set(blocks[-1].modules)
    _, trainable = frozen_after(model, -1)
    assert trainable == names_under(model, "blocks.6", "conv_head", "bn2")
