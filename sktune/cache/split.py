"""Where a backbone is cut for the frozen-prefix cache.

A :class:`Split` divides the forward pass into a *prefix*, whose output for
a sample never changes during a fit (its parameters are frozen and its
modules run in eval mode), and a *suffix* that trains. The prefix output is
what the cache stores; every epoch runs ``head(split.suffix(net, cached))``.

The variants live with the model family that knows how to cut it:

- :class:`WholeSplit` (here): everything is frozen (``freeze="all"``); the
  cached value is the pooled feature vector, for any backbone;
- :class:`sktune.families.generic.ChainSplit`: a backbone that is a chain of
  its children, cut after its leading frozen units;
- :class:`sktune.families.hf.TokenSplit`: a Hugging Face text encoder, cut
  after its embeddings and frozen layers (ragged per-text token states);
- :class:`sktune.families.vit.ViTSplit`: a timm or torchvision vision
  transformer, cut after its patch and position embedding and frozen layers.

Planning returns a split or a :class:`NoCache` that says why there is none.
Every cut is verified on a probe sample: prefix then suffix must reproduce
the backbone's own output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

__all__ = ["NoCache", "Split", "StaticParts", "WholeSplit"]


class Split(ABC):
    """A cut of the backbone into a cached prefix and a trained suffix.

    Methods take the network (:class:`sktune.network.FineTuneNetwork`):
    its ``backbone``, ``pooling``, ``input(X)`` (preprocessed, in the
    backbone's memory layout) and ``layout(x)``. A batch flows as
    ``prefix`` -> ``rows`` (one per sample, stored) -> ``stack`` (all of a
    fit's rows) -> ``gather`` (a batch of them) -> ``suffix``.
    """

    #: Whether rows differ in shape between samples (token states of texts).
    ragged: ClassVar[bool] = False
    #: What runs when the cut is verified, for the reason when it fails.
    what: ClassVar[str] = "running the cached prefix and then the rest"
    #: (rtol, atol) of the verification against the backbone's own output.
    tolerance: ClassVar[tuple[float, float]] = (1e-5, 1e-6)

    @abstractmethod
    def prefix(self, net, X=None, **inputs) -> torch.Tensor:
        """The prefix output of a batch: what the cache stores."""

    @abstractmethod
    def suffix(self, net, cached) -> torch.Tensor:
        """Pooled features from a batch of cached prefix outputs."""

    @abstractmethod
    def key(self) -> tuple:
        """What identifies the cut in a cache key."""

    def rows(self, outputs: torch.Tensor, inputs) -> list[torch.Tensor]:
        """Split a batch of prefix outputs into one stored row per sample."""
        return list(outputs)

    def stack(self, rows: list[torch.Tensor]):
        """Hold many rows for indexing (one tensor, unless ragged)."""
        return torch.stack(rows)

    def gather(self, rows, indices, dtype: torch.dtype):
        """The cached batch of ``rows[indices]`` at the network's ``dtype``."""
        return rows[torch.as_tensor(indices, dtype=torch.long)].to(dtype)


@dataclass(frozen=True)
class WholeSplit(Split):
    """Everything frozen: the cache stores the pooled features themselves."""

    def prefix(self, net, X=None, **inputs):
        return net.features(X, **inputs)

    def suffix(self, net, cached):
        return cached

    def key(self):
        return ("all",)


@dataclass(frozen=True)
class NoCache:
    """No cut: the reason the frozen prefix is not cached."""

    reason: str


class StaticParts:
    """Which parts of a backbone never change during a fit.

    A part is static when all its parameters are frozen and all its modules
    stay in eval mode (dropout off, BatchNorm statistics untouched), so its
    output for a sample is the same in every epoch.

    Parameters
    ----------
    backbone : nn.Module
        The training copy, its parameters' ``requires_grad`` set as planned.
    eval_modules : iterable of str
        The names of the modules that run in eval mode during the fit (a
        freeze plan's ``eval_modules``).
    """

    def __init__(self, backbone: nn.Module, eval_modules: Iterable[str]):
        self.backbone = backbone
        self.eval_modules = frozenset(eval_modules)

    def everything(self) -> bool:
        """Whether the whole backbone is static."""
        return not any(p.requires_grad for p in self.backbone.parameters()) and all(
            name in self.eval_modules for name, _ in self.backbone.named_modules()
        )

    def module(self, name: str) -> bool:
        """Whether the submodule ``name`` (and all inside it) is static."""
        module = self.backbone.get_submodule(name)
        if any(p.requires_grad for p in module.parameters()):
            return False
        return all(
            ".".join(filter(None, (name, sub))) in self.eval_modules
            for sub, _ in module.named_modules()
        )
