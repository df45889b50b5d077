"""Model families: what sktune knows about each kind of backbone, one file each.

=================  =====================================================
``generic``        any module: the chain-of-children cut
``timm``           ``"timm:NAME"``; timm's ``group_matcher`` blocks
``torchvision``    ``"torchvision:NAME"``; ResNet stages, ``features``
``vit``            timm and torchvision vision transformers
``hf``             ``"hf:ID_OR_DIR"``; Hugging Face text encoders
=================  =====================================================

A module belongs to the first family in :data:`FAMILIES` that recognises it
(vision transformers before the libraries they come from); the base
:class:`Family` answers "use the generic rule" to every question. Adding a
family means one file with a :class:`Family` subclass, listed here.
"""

from __future__ import annotations

from torch import nn

from ._base import BlockOf, Family, Loaded, did_you_mean, loaded
from .hf import HFFamily
from .timm import TimmFamily
from .torchvision import TorchvisionFamily
from .vit import ViTFamily

__all__ = [
    "FAMILIES",
    "BlockOf",
    "Family",
    "Loaded",
    "did_you_mean",
    "family_for_prefix",
    "family_of",
    "loaded",
    "spec_prefixes",
]

#: Tried in order; the first that matches a module answers for it.
FAMILIES: tuple[Family, ...] = (
    ViTFamily(),
    TimmFamily(),
    TorchvisionFamily(),
    HFFamily(),
)
_GENERIC = Family()


def family_of(module: nn.Module) -> Family:
    """The family that answers for ``module`` (the generic base if none)."""
    return next((f for f in FAMILIES if f.matches(module)), _GENERIC)


def family_for_prefix(prefix: str) -> Family | None:
    """The family that loads specs ``"<prefix>:NAME"``, if any."""
    return next((f for f in FAMILIES if f.spec_prefix == prefix), None)


def spec_prefixes() -> tuple[str, ...]:
    """The accepted spec prefixes, in registry order."""
    return tuple(f.spec_prefix for f in FAMILIES if f.spec_prefix)
