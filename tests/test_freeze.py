"""Freeze policies resolved against a block map; frozen modules in eval."""

import pytest
from helpers import (
    cnn_blocks,
    mlp_backbone,
    tiny_cnn,
)
from torch import nn

from sktune import Freeze
from sktune.blocks import block_map
from sktune.freeze import apply_freeze, plan_freeze
from sktune.network import FineTuneNetwork


def frozen_names(module, freeze):
    blocks = block_map(module)
    plan = plan_freeze(module, blocks, freeze)
    apply_freeze(module, plan)
    return sorted(n for n, p in module.named_parameters() if not p.requires_grad)


MLP_BLOCKS = [["0.bias", "0.weight"], ["2.bias", "2.weight"], ["5.bias", "5.weight"]]


@pytest.mark.parametrize(
    ("freeze", "n_frozen"),
    [
        (None, 0),
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),
        (-1, 2),
        (-3, 0),
        (0.5, 1),
        (0.99, 2),
        (1.0, 3),
        (0.0, 0),
        ("all", 3),
        (Freeze(depth=-2), 1),
    ],
)
def test_depth_policies_freeze_the_first_blocks(freeze, n_frozen):
    expected = sorted(name for block in MLP_BLOCKS[:n_frozen] for name in block)
    assert frozen_names(mlp_backbone(), freeze) == expected


def test_patterns_freeze_matching_parameter_names():
    assert frozen_names(mlp_backbone(), ["0.*", "*.bias"]) == [
        "0.bias",
        "0.weight",
        "2.bias",
        "5.bias",
    ]


def test_unfrozen_parameters_are_made_trainable():
    module = mlp_backbone()
    for p in module.parameters():
        p.requires_grad_(False)
    assert frozen_names(module, 1) == ["0.bias", "0.weight"]


def test_frozen_modules_stay_in_eval_mode_and_train_bn_exempts_batchnorm():
    module = tiny_cnn()
    blocks = cnn_blocks(module)
    plan = plan_freeze(module, blocks, Freeze(depth=1, train_bn=True))
    apply_freeze(module, plan)
    FineTuneNetwork(module, nn.Identity(), plan).train()
    assert not module.stem[0].training and not module.stem[2].training
    assert module.stem[1].training and module.stem[1].weight.requires_grad
    assert not module.stem[0].weight.requires_grad
    assert module.stage1[1].training


def test_batchnorm_keeps_its_statistics_by_default_even_where_it_trains():
    module = tiny_cnn()
    plan = plan_freeze(module, cnn_blocks(module), 1)
    apply_freeze(module, plan)
    FineTuneNetwork(module, nn.Identity(), plan).train()
    assert module.stage1[0].training and module.stage1[0].weight.requires_grad
    assert not module.stage1[1].training  # eval: pretrained statistics
    assert module.stage1[1].weight.requires_grad  # its scale and shift train
    assert not module.stem[1].weight.requires_grad


def test_freeze_object_is_a_nested_hyperparameter():
    freeze = Freeze(depth=2)
    assert freeze.set_params(depth=3).depth == 3
    assert (
        repr(Freeze(depth="all", train_bn=True)) == "Freeze(depth='all', train_bn=True)"
    )


def test_bad_train_bn_is_reported(blobs):
    from sktune import FineTuneClassifier

    with pytest.raises(
        TypeError, match=r"freeze__train_bn='yes' is not valid; use True or False"
    ):
        FineTuneClassifier(mlp_backbone(), freeze=Freeze(train_bn="yes")).fit(*blobs)
