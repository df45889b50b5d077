"""Any backbone: the frozen-prefix cut of a chain of children.

Without knowing a model's family, the backbone is unrolled into a chain of
units (its children in forward order, ``nn.Sequential`` containers
expanded). The prefix is the leading run of static units (frozen and in eval
mode). Like every cut, it is kept only if running the units one after the
other reproduces the backbone's own forward pass on the probe sample (a
model that adds a token between its children is no chain).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..cache.split import NoCache, Split
from ..heads import pool_features

__all__ = ["ChainSplit", "chain_units", "plan_chain_cut", "run_units"]


@dataclass(frozen=True)
class ChainSplit(Split):
    """A chain of units; units ``[:cut]`` form the cached prefix.

    Attributes
    ----------
    units : tuple of str
        The backbone's units in forward order.
    cut : int
        How many leading units are cached.
    """

    units: tuple[str, ...]
    cut: int

    what = "running the backbone's children in order"

    def prefix(self, net, X=None, **inputs):
        return run_units(net.backbone, self.units[: self.cut], net.input(X))

    def suffix(self, net, cached):
        h = run_units(net.backbone, self.units[self.cut :], net.layout(cached))
        return pool_features(h, net.pooling)

    def key(self):
        return ("chain", self.units[: self.cut])


def chain_units(backbone: nn.Module, child_order: list[str]) -> list[str]:
    """The backbone's children in forward order, Sequentials expanded."""

    def expand(name: str, module: nn.Module) -> list[str]:
        if isinstance(module, nn.Sequential) and len(module):
            prefix = f"{name}." if name else ""
            return [
                u for n, m in module.named_children() for u in expand(prefix + n, m)
            ]
        return [name]

    if isinstance(backbone, nn.Sequential):
        return expand("", backbone)
    seen: list[str] = []
    for name in child_order:
        if name not in seen:
            seen.append(name)
    return [u for name in seen for u in expand(name, backbone.get_submodule(name))]


def run_units(backbone: nn.Module, units, h):
    """Run ``units`` of ``backbone`` one after the other on ``h``."""
    for unit in units:
        module = backbone.get_submodule(unit)
        if (
            isinstance(module, nn.Linear)
            and h.ndim > 2
            and h.shape[-1] != module.in_features
        ):
            # The ``torch.flatten(x, 1)`` that CNNs call between their pooling
            # and their classifier (torchvision's MobileNet, VGG, ...).
            h = h.flatten(1)
        h = module(h)
    return h


def plan_chain_cut(backbone: nn.Module, static, order) -> Split | NoCache:
    """Cut after the leading static units of the backbone's chain of units.

    Parameters
    ----------
    backbone : nn.Module
    static : StaticParts
    order : list of str
        Top-level children in the order the probe's forward pass ran them.
    """
    units = chain_units(backbone, order)
    cut = 0
    while cut < len(units) and static.module(units[cut]):
        cut += 1
    if cut == 0:
        return NoCache("no frozen block at the input side")
    return ChainSplit(tuple(units), cut)
