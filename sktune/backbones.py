"""Resolve a backbone parameter to a private training copy; keep the pristine one.

The pristine backbone is read-only: estimators never train it, never register
hooks on it and never move it. ``clone`` and ``copy.deepcopy`` share it; each
``fit`` makes its own training copy (DESIGN.md, invariants 1 and 2).
"""

from __future__ import annotations

import copy
import os
import threading

from torch import nn

__all__ = ["Backbone", "as_backbone", "training_copy"]

_ACCEPTED = (
    "an nn.Module instance, a zero-argument callable returning one, or a "
    "sktune.Backbone"
)


class Backbone:
    """A pretrained backbone and its pristine weights, shared between clones.

    Parameters
    ----------
    source : nn.Module or callable
        The pretrained network, or a zero-argument callable that builds it
        (called once, on first use; its result is kept as the pristine copy).

    Notes
    -----
    A ``Backbone`` is a value object: ``copy.deepcopy`` and
    ``sklearn.base.clone`` of an estimator holding one share the pristine
    module instead of copying it, so cloning for a grid search costs no
    memory. Do not modify the module after handing it over.

    Examples
    --------
    >>> from torch import nn
    >>> from sktune import Backbone, FineTuneClassifier
    >>> bb = Backbone(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU()))
    >>> clf = FineTuneClassifier(bb, freeze=1)
    """

    def __init__(self, source):
        self.source = source
        self._state = _Shared()

    def module(self) -> nn.Module:
        """Return the pristine module (read-only: never train or modify it)."""
        state = self._state
        with state.lock:
            if state.module is None:
                state.module = _build(self.source, param="Backbone.source")
            return state.module

    def training_copy(self) -> nn.Module:
        """Return a private copy of the pristine module, free to train."""
        return copy.deepcopy(self.module())

    def data_config(self) -> dict | None:
        """Image preprocessing of the pretrained weights (mean, std, input_size)."""
        return None

    def tokenizer(self):
        """The tokenizer of a text backbone, else None."""
        return None

    def default_pooling(self) -> str | None:
        """How the backbone's token sequences are pooled by default."""
        return None

    def __deepcopy__(self, memo):
        return self

    def __getstate__(self):
        # The built module of a factory is a cache; a module source is pickled
        # as the source itself.
        return {"source": self.source}

    def __setstate__(self, state):
        self.source = state["source"]
        self._state = _Shared()

    def __repr__(self):
        source = self.source
        if isinstance(source, nn.Module):
            return f"Backbone({type(source).__name__}(...))"
        return f"Backbone({source!r})"


class _Shared:
    """The lazily built pristine module, shared by every copy of a Backbone."""

    def __init__(self):
        self.lock = threading.Lock()
        self.module: nn.Module | None = None


def _build(source, *, param: str) -> nn.Module:
    if isinstance(source, nn.Module):
        return source
    if isinstance(source, Backbone):
        return source.module()
    if callable(source):
        module = source()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{param} factory {source!r} returned {type(module).__name__}; "
                "expected an nn.Module."
            )
        return module
    raise TypeError(f"{param} must be {_ACCEPTED}, got {source!r}.")


def training_copy(backbone, *, param: str = "backbone") -> nn.Module:
    """Return a private, trainable module for the estimator parameter ``backbone``.

    A module (or a ``Backbone``) is deep-copied; a factory is called, and its
    fresh result is already private.
    """
    if isinstance(backbone, Backbone):
        return backbone.training_copy()
    if isinstance(backbone, nn.Module):
        return copy.deepcopy(backbone)
    return _build(backbone, param=param)


def as_backbone(backbone) -> Backbone:
    """The estimator parameter ``backbone`` as a :class:`Backbone`."""
    if isinstance(backbone, Backbone):
        return backbone
    if not (isinstance(backbone, (nn.Module, str, os.PathLike)) or callable(backbone)):
        raise TypeError(f"backbone must be {_ACCEPTED}, got {backbone!r}.")
    return Backbone(backbone)
