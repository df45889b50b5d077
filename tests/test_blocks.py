"""The block map: the generic rule (families are tested with them)."""

import pytest
import torch
from helpers import (
    cnn_blocks,
    mlp_backbone,
    tiny_cnn,
)
from torch import nn

from sktune.blocks import block_map, record_child_order


def test_sequential_and_forward_order_fallback():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3))
    assert [b.modules for b in block_map(seq)] == [("0", "1"), ("2",)]

    cnn = tiny_cnn()
    order, remove = record_child_order(cnn)
    cnn(torch.zeros(1, 1, 8, 8))
    remove()
    assert [b.name for b in block_map(cnn, order)] == ["stem", "stage1", "stage2"]
    with pytest.raises(ValueError, match="needs the order of a forward pass"):
        block_map(cnn)


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
