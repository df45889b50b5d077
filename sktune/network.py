"""The module skorch trains: preprocessing, a backbone copy, pooling, a head."""

from __future__ import annotations

import torch
from torch import nn

from .cache.split import Split
from .freeze import FreezePlan, frozen_modules
from .heads import pool_features
from .runtime import autocast

__all__ = ["FineTuneNetwork"]


class FineTuneNetwork(nn.Module):
    """``head(pool(backbone(preprocess(X))))``, frozen backbone parts kept in eval.

    Parameters
    ----------
    backbone : nn.Module
        The private training copy of the pretrained backbone.
    head : nn.Module
        The fresh task head.
    plan : FreezePlan
        Which backbone modules stay in eval mode while the rest trains.
    preprocess : nn.Module, optional
        Applied to tensor input first (e.g. uint8 images to normalized floats).
    pooling : {"mean", "cls", "max"}, optional
        How token sequences are pooled (see :func:`sktune.heads.pool_features`).
    split : Split, optional
        Where the backbone is cut for the frozen-prefix cache.
    channels_last : bool, default=False
        Feed 4-D image tensors to the backbone in channels-last memory layout
        (the backbone's own weights must have been converted likewise).
    precision : torch.dtype, optional
        Run the backbone under autocast at this dtype (bfloat16 or float16);
        the head always runs in float32.

    Notes
    -----
    Input arrives as a tensor ``X``, as keyword arguments (tokenized text:
    ``input_ids=...``), or as ``cached=...``: a batch of cached prefix
    outputs (see :mod:`sktune.cache`), from which only ``split.suffix`` runs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        plan: FreezePlan,
        preprocess: nn.Module | None = None,
        pooling: str | None = None,
        split: Split | None = None,
        channels_last: bool = False,
        precision: torch.dtype | None = None,
    ):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.plan = plan
        self.pooling = pooling
        self.split = split
        self.channels_last = channels_last
        self.precision = precision

    def train(self, mode: bool = True):
        # skorch calls train() before every training batch: when training mode
        # is already applied, skip the walk over every submodule (it cost more
        # than the head's step in a cached linear probe). eval() always walks.
        if mode and self.__dict__.get("_applied_mode") is True and self.training:
            return self
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.training = False
        self._applied_mode = mode
        return self

    def set_stage(self, plan: FreezePlan, split: Split | None) -> None:
        """Train with ``plan``'s blocks frozen (in eval) and cut at ``split``.

        ``requires_grad`` is the caller's (see :func:`sktune.freeze.apply_freeze`).
        """
        self.plan = plan
        self.split = split
        self.__dict__.pop("_frozen", None)
        self.__dict__.pop("_applied_mode", None)
        if self.training:
            self.train()

    def _frozen_modules(self) -> list[nn.Module]:
        """The plan's eval modules, resolved once (not by name every batch)."""
        modules = self.__dict__.get("_frozen")
        if modules is None:
            modules = frozen_modules(self.backbone, self.plan)
            self.__dict__["_frozen"] = modules
        return modules

    def forward(self, X=None, *, cached=None, **inputs):
        if inputs and (X is not None or cached is not None):
            # skorch passes fit parameters to forward; none is supported here.
            raise TypeError(
                f"unexpected keyword argument(s) {sorted(inputs)}: the network takes "
                "the input X only (sample_weight is not supported)."
            )
        if cached is not None:
            features = self.suffix(cached)
        else:
            features = self.features(X, **inputs)
        return self.head(features.float())

    def features(self, X=None, **inputs) -> torch.Tensor:
        """The pooled backbone features that the head sees."""
        with self._autocast():
            out = self.backbone(**inputs) if X is None else self.backbone(self.input(X))
            return pool_features(out, self.pooling)

    def prefix(self, X=None, **inputs) -> torch.Tensor:
        """The output of the frozen prefix: what the cache stores."""
        with self._autocast():
            return self.split.prefix(self, X, **inputs)

    def suffix(self, cached) -> torch.Tensor:
        """The pooled features from a batch of cached prefix outputs."""
        with self._autocast():
            return self.split.suffix(self, cached)

    def _autocast(self):
        if self.precision is None:
            return autocast("cpu", None)
        device = next(self.head.parameters(), torch.empty(0)).device
        return autocast(device.type, self.precision)

    def input(self, X) -> torch.Tensor:
        """Preprocessed tensor input, in the backbone's memory layout."""
        x = self.preprocess(X) if self.preprocess is not None else X
        return self.layout(x)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the backbone's memory layout."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x
