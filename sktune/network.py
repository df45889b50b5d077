"""The module skorch trains: input preprocessing, a backbone copy, pooling, a head."""

from __future__ import annotations

import torch
from torch import nn

from .cache import Split, eval_mode, run_units, vit_prefix, vit_suffix
from .freeze import FreezePlan, frozen_modules
from .heads import pool_features

__all__ = ["FineTuneNetwork", "use_channels_last"]


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
        channels_last: bool = False,
    ):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.plan = plan
        self.pooling = pooling
        self.split = split
        self.channels_last = channels_last
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
        if self.split.vit is not None:
            return vit_prefix(
                self.backbone, self.split.vit, self.split.cut, self._input(X)
            )
        return run_units(
            self.backbone, self.split.units[: self.split.cut], self._input(X)
        )

    def features(self, X=None, **inputs):
        """The pooled backbone features that the head sees."""
        out = self.backbone(**inputs) if X is None else self.backbone(self._input(X))
        return pool_features(out, self.pooling)

    def _input(self, X):
        """Preprocessed tensor input, in the backbone's memory layout."""
        x = self.preprocess(X) if self.preprocess is not None else X
        return self._layout(x)

    def _layout(self, x):
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

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
            elif self.split.vit is not None:
                X = vit_suffix(self.backbone, self.split.vit, self.split.cut, X)
                X = pool_features(X, self.pooling)
            elif not self.split.whole:
                suffix = self.split.units[self.split.cut :]
                X = run_units(self.backbone, suffix, self._layout(X))
                X = pool_features(X, self.pooling)
            return self.head(X)
        return self.head(self.features(X, **inputs))


def use_channels_last(backbone: nn.Module, x, reference: torch.Tensor) -> str | None:
    """Convert ``backbone`` to channels-last memory layout where that is safe.

    Channels-last (NHWC strides) is the layout that oneDNN's CPU kernels and
    cuDNN run convolutions fastest in; the values do not change. The backbone
    is converted in place and checked on ``x`` (a preprocessed probe batch):
    it must run and reproduce ``reference``, its pooled features in the
    default layout (a module that calls ``.view`` on its input fails here).

    Returns None when the backbone now runs channels-last, else the reason it
    stays as it was.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        return "the input is not a batch of images (N x C x H x W)"
    if not any(isinstance(m, nn.Conv2d) for m in backbone.modules()):
        return "the backbone has no 2-D convolution"
    backbone.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), eval_mode(backbone):
            out = pool_features(
                backbone(x.contiguous(memory_format=torch.channels_last))
            )
        same = out.shape == reference.shape and torch.allclose(
            out, reference, rtol=1e-3, atol=1e-4
        )
        reason = None if same else "its output differs in channels-last layout"
    except Exception as exc:  # e.g. a .view() or an assert on contiguity
        reason = f"it fails in channels-last layout ({type(exc).__name__}: {exc})"
    if reason is not None:
        backbone.to(memory_format=torch.contiguous_format)
    return reason
