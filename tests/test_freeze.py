"""Freeze policies as pure functions on nn.Module: no training run needed."""

import pytest
from conftest import mlp_backbone, tiny_cnn
from torch import nn

from sktune.blocks import block_map, record_child_order
from sktune.freeze import Freeze, apply_freeze, plan_freeze, set_frozen_eval


def frozen_names(module, freeze):
    blocks = block_map(module)
    plan = plan_freeze(module, blocks, freeze)
    apply_freeze(module, plan)
    return sorted(n for n, p in module.named_parameters() if not p.requires_grad)


def cnn_blocks(module):
    import torch

    order, remove = record_child_order(module)
    module.eval()
    module(torch.zeros(1, 1, 8, 8))
    remove()
    return block_map(module, order)


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


def test_generic_block_map_follows_the_forward_order():
    module = tiny_cnn()
    blocks = cnn_blocks(module)
    assert [b.name for b in blocks] == ["stem", "stage1", "stage2"]
    assert blocks[-1].modules == ("stage2", "pool")  # parameter-free pooling joins


def test_block_map_of_sequential_merges_parameter_free_children():
    blocks = block_map(mlp_backbone())
    assert [b.modules for b in blocks] == [("0", "1"), ("2", "3", "4"), ("5", "6")]


def test_root_parameters_join_the_first_block():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(nn.init.zeros_(nn.Linear(1, 4).weight.T.clone()))
            self.embed = nn.Linear(4, 4)
            self.out = nn.Linear(4, 4)

        def forward(self, x):
            return self.out(self.embed(x) + self.token)

    import torch

    module = WithToken()
    order, remove = record_child_order(module)
    module(torch.zeros(2, 4))
    remove()
    blocks = block_map(module, order)
    assert blocks[0].params == ("token", "embed.weight", "embed.bias")


def test_a_module_without_children_is_one_block():
    assert [b.params for b in block_map(nn.Linear(2, 3))] == [("weight", "bias")]


def test_reentrant_children_have_no_ordered_split():
    class PingPong(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.a(self.b(self.a(x)))

    import torch

    module = PingPong()
    order, remove = record_child_order(module)
    module(torch.zeros(1, 2))
    remove()
    with pytest.raises(ValueError, match=r"child 'a' runs again after 'b' in forward"):
        block_map(module, order)


def test_frozen_modules_stay_in_eval_mode_and_train_bn_exempts_batchnorm():
    module = tiny_cnn()
    blocks = cnn_blocks(module)
    plan = plan_freeze(module, blocks, Freeze(depth=1, train_bn=True))
    apply_freeze(module, plan)
    module.train()
    set_frozen_eval(module, plan)
    assert not module.stem[0].training and not module.stem[2].training
    assert module.stem[1].training and module.stem[1].weight.requires_grad
    assert not module.stem[0].weight.requires_grad
    assert module.stage1[1].training


def test_freeze_object_is_a_nested_hyperparameter():
    freeze = Freeze(depth=2)
    assert freeze.set_params(depth=3).depth == 3
    assert (
        repr(Freeze(depth="all", train_bn=True)) == "Freeze(depth='all', train_bn=True)"
    )


def test_bad_train_bn_is_reported():
    with pytest.raises(
        TypeError, match=r"freeze.train_bn must be True or False, got 'yes'"
    ):
        plan_freeze(mlp_backbone(), block_map(mlp_backbone()), Freeze(train_bn="yes"))


def test_non_string_pattern_is_reported():
    with pytest.raises(TypeError, match=r"freeze patterns must be strings, got 3"):
        plan_freeze(mlp_backbone(), block_map(mlp_backbone()), ["0.*", 3])
