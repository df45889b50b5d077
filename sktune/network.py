"""The module skorch trains: input preprocessing, a backbone copy, pooling, a head."""

from __future__ import annotations

from torch import nn

from .cache import Split, run_units
from .freeze import FreezePlan, frozen_modules
from .heads import pool_features

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
    pooling : {"mean", "cls"}, optional
        How token sequences are pooled (see :func:`sktune.heads.pool_features`).

    Tokenized input arrives as keyword arguments (``input_ids=...``) and goes
    to the backbone as such.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        plan: FreezePlan,
        preprocess: nn.Module | None = None,
        pooling: str | None = None,
        split: Split | None = None,
    ):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.plan = plan
        self.pooling = pooling
        self.split = split
        # True while the input is the cached output of the frozen prefix.
        self.from_cut = False

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

    def _frozen_modules(self) -> list[nn.Module]:
        """The plan's eval modules, resolved once (not by name every batch)."""
        modules = self.__dict__.get("_frozen")
        if modules is None:
            modules = frozen_modules(self.backbone, self.plan)
            self.__dict__["_frozen"] = modules
        return modules

    def prefix(self, X=None, **inputs):
        """The output of the frozen prefix: what the feature cache stores."""
        if self.split.whole:
            return self.features(X, **inputs)
        if self.split.tokens:
            return self.backbone.prefix_states(self.split.cut, **inputs)
        x = self.preprocess(X) if self.preprocess is not None else X
        return run_units(self.backbone, self.split.units[: self.split.cut], x)

    def features(self, X=None, **inputs):
        """The pooled backbone features that the head sees."""
        if X is None:
            out = self.backbone(**inputs)
        else:
            out = self.backbone(
                self.preprocess(X) if self.preprocess is not None else X
            )
        return pool_features(out, self.pooling)

    def forward(self, X=None, **inputs):
        if X is not None and inputs:
            # skorch passes fit parameters to forward; none is supported here.
            raise TypeError(
                f"unexpected keyword argument(s) {sorted(inputs)}: the network takes "
                "the input X only (sample_weight is not supported)."
            )
        if self.from_cut:
            if self.split.tokens:
                X = self.backbone.suffix_features(self.split.cut, **inputs)
            elif not self.split.whole:
                suffix = self.split.units[self.split.cut :]
                X = pool_features(run_units(self.backbone, suffix, X), self.pooling)
            return self.head(X)
        return self.head(self.features(X, **inputs))
