"""The Backbone: the pristine pretrained module, shared by clones, never trained.

See :mod:`sktune.backbones` for what a backbone may be. Loading lives in
:mod:`sktune.backbones.specs`, pickling by reference inside
:func:`sktune.share_backbones` in :mod:`sktune.backbones.shared`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..families import Loaded
from .shared import reference
from .specs import load_tokenizer, resolve

__all__ = [
    "BACKBONE_ACCEPTED",
    "Backbone",
    "as_backbone",
    "cached_spec",
    "is_backbone_source",
]

# What the estimators' ``backbone`` parameter accepts.
BackboneSource = Union[nn.Module, Callable[[], nn.Module], "Backbone", str, os.PathLike]

BACKBONE_ACCEPTED = (
    "an nn.Module instance, a zero-argument callable returning one, a "
    "sktune.Backbone, or a string spec 'timm:NAME', 'torchvision:NAME', "
    "'hf:ID_OR_DIR', a local Hugging Face model directory or a checkpoint file"
)


class Backbone:
    """A pretrained backbone and its pristine weights, shared between clones.

    Parameters
    ----------
    source : nn.Module, callable or str
        The pretrained network, a zero-argument callable that builds it
        (called once, on first use; its result is kept as the pristine copy),
        or a string spec: ``"timm:NAME"``, ``"torchvision:NAME"``,
        ``"hf:ID_OR_DIR"``, a local Hugging Face model directory, or a
        checkpoint file naming its architecture. Specs are resolved on first
        use, not here, so constructing and cloning a ``Backbone`` is cheap.
    weights : str or path-like, optional
        A local state dict to load into the architecture instead of
        downloading pretrained weights (implies ``pretrained=False``).
        ``.safetensors`` files, or ``.pth``/``.pt``/``.bin``/``.ckpt`` files
        read with ``torch.load(weights_only=True)``: a file that needs
        arbitrary code to unpickle is refused. Keys are matched by name; if
        the names differ, by position (see :func:`load_weights`). With a
        module or factory source, the weights go into a copy of the module.
    pretrained : bool, default=True
        Download (or take from the local cache) the spec's pretrained
        weights. False builds the architecture with random weights.
    **kwargs
        Passed on to ``timm.create_model``, ``torchvision.models.get_model``
        or ``AutoModel.from_pretrained`` (e.g. ``drop_path_rate=0.1``,
        ``revision="main"``). ``trust_remote_code`` stays False unless given.

    Notes
    -----
    A ``Backbone`` is a value object: ``copy.deepcopy`` and
    ``sklearn.base.clone`` of an estimator holding one share the pristine
    module instead of copying it, so cloning for a grid search costs no
    memory. Do not modify the module after handing it over. Pickling keeps
    the parameters and drops the built module (it is rebuilt on first use).

    A ``transformers`` model (from ``"hf:"`` or given as a module) is wrapped
    in :class:`sktune.families.hf.HFEncoder`, which returns pooled features; its
    ``pooling`` attribute starts at :meth:`default_pooling`.

    Examples
    --------
    >>> from torch import nn
    >>> from sktune import Backbone, FineTuneClassifier
    >>> bb = Backbone(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU()))
    >>> clf = FineTuneClassifier(bb, freeze=1)
    >>> Backbone("timm:resnet18")  # nothing is downloaded until first use
    Backbone('timm:resnet18')
    """

    def __init__(
        self,
        source: BackboneSource,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        **kwargs: Any,
    ):
        self.source = source
        self.weights = weights
        self.pretrained = pretrained
        self.kwargs = kwargs
        self._state = _Shared()

    def module(self) -> nn.Module:
        """Return the pristine module (read-only: never train or modify it)."""
        return self._loaded().module

    def data_config(self) -> dict | None:
        """The input preprocessing the pretrained weights expect, if known.

        Returns
        -------
        dict or None
            ``mean`` and ``std`` (per-channel 3-tuples, for inputs scaled to
            [0, 1]), ``input_size`` ``(C, H, W)``, ``interpolation`` (str) and
            ``crop_pct`` (center crop = resize * crop_pct), from timm's
            ``resolve_model_data_config`` or the torchvision weights'
            ``transforms()``. With ``weights=`` or ``pretrained=False`` this
            is still the architecture's default pretrained preprocessing.
            None for other backbones (text encoders, plain modules).
        """
        return self._loaded().data_config

    def tokenizer(self):
        """The tokenizer of a Hugging Face backbone, else None.

        Loaded once from the same hub id or directory as the model
        (``AutoTokenizer``) and shared, like the pristine module, by every
        copy of this ``Backbone``: do not change its settings in place, and
        give each thread that tokenizes concurrently its own
        ``copy.deepcopy`` (concurrent use of one fast tokenizer can fail with
        "Already borrowed").
        """
        loaded = self._loaded()
        if loaded.text_source is None:
            return None
        state = self._state
        with state.lock:
            if state.tokenizer is None:
                state.tokenizer = load_tokenizer(loaded.text_source, self.kwargs)
            return state.tokenizer

    def default_pooling(self) -> str | None:
        """How a Hugging Face backbone pools tokens by default, else None.

        What the model's sentence-transformers pooling config says
        (``1_Pooling/config.json``), otherwise ``"mean"`` (the masked mean of
        the token states; see :func:`sktune.families.hf_loading.default_pooling`).
        """
        return self._loaded().pooling

    def _loaded(self) -> Loaded:
        state = self._state
        with state.lock:
            if state.loaded is None:
                # Building an architecture draws its random init from the
                # global RNG: without a fork, the first fit of a process (the
                # one that loads) would initialize its head from other draws
                # than every later fit.
                with torch.random.fork_rng(devices=[]):
                    source = self.source
                    state.loaded = resolve(
                        source,
                        self.weights,
                        self.pretrained,
                        self.kwargs,
                        inner=source._loaded if isinstance(source, Backbone) else None,
                    )
            return state.loaded

    def __deepcopy__(self, memo):
        return self

    def __reduce_ex__(self, protocol):
        # Inside sktune.share_backbones(), a module source travels by reference.
        ref = reference(self) if isinstance(self.source, nn.Module) else None
        return ref.__reduce__() if ref is not None else super().__reduce_ex__(protocol)

    def __getstate__(self):
        # The built module of a spec or factory is a cache; a module source is
        # pickled as the source itself.
        return {
            "source": self.source,
            "weights": self.weights,
            "pretrained": self.pretrained,
            "kwargs": self.kwargs,
        }

    def __setstate__(self, state):
        self.source = state["source"]
        self.weights = state.get("weights")
        self.pretrained = state.get("pretrained", True)
        self.kwargs = state.get("kwargs", {})
        if isinstance(self.source, (str, os.PathLike)):
            # One load per process for all unpickled copies of this spec (the
            # tasks a search worker runs).
            self._state = cached_spec(
                self.source, self.weights, self.pretrained, self.kwargs
            )._state
        else:
            self._state = _Shared()

    def __repr__(self):
        source = self.source
        if isinstance(source, nn.Module):
            args = [f"{type(source).__name__}(...)"]
        else:
            args = [repr(source)]
        if self.weights is not None:
            args.append(f"weights={self.weights!r}")
        if self.pretrained is not True:
            args.append(f"pretrained={self.pretrained!r}")
        args += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Backbone({', '.join(args)})"


class _Shared:
    """The lazily built pristine module, shared by every copy of a Backbone."""

    def __init__(self):
        self.lock = threading.Lock()
        self.loaded: Loaded | None = None
        self.tokenizer = None


def as_backbone(backbone: BackboneSource, *, param: str = "backbone") -> Backbone:
    """Return a :class:`Backbone` for any accepted ``backbone`` parameter value.

    A ``Backbone`` is returned as is. A string spec (or path) returns its
    shared ``Backbone``, so the model is resolved once: the last few string
    specs keep their pristine module in memory between fits
    (cross-validation folds and grid-search candidates load the weights
    once). A module or factory is wrapped in a new ``Backbone``, which builds
    (a factory) or wraps (a module) on first use. Nothing is built here.

    Raises
    ------
    TypeError
        For a value that is none of the accepted kinds.
    """
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, (str, os.PathLike)):
        return cached_spec(backbone)
    if isinstance(backbone, nn.Module) or callable(backbone):
        return Backbone(backbone)
    raise TypeError(f"{param} must be {BACKBONE_ACCEPTED}, got {backbone!r}.")


def is_backbone_source(backbone) -> bool:
    """Whether ``backbone`` is a valid ``backbone`` parameter by its type."""
    return isinstance(backbone, (Backbone, nn.Module, str, os.PathLike)) or callable(
        backbone
    )


# -- the spec cache ------------------------------------------------------------------

# How many string specs keep their pristine module between fits.
_SPEC_CACHE_SIZE = 2
_spec_cache: OrderedDict = OrderedDict()
_spec_lock = threading.Lock()


def _file_key(path) -> tuple:
    """A local file's path with its change stamp (a rewritten file is new)."""
    key = os.fspath(path)
    found = Path(key).expanduser()
    if found.exists():
        stat = found.stat()
        return (key, stat.st_mtime_ns, stat.st_size)
    return (key,)


def cached_spec(spec, weights=None, pretrained=True, kwargs=None):
    """The shared :class:`sktune.Backbone` of a string spec or path.

    The last few specs keep their pristine module in memory between fits, so
    cross-validation folds and grid-search candidates load the weights once;
    a local file rewritten since is a new backbone. Unpickled copies of a
    ``Backbone(spec, weights=...)`` share the one of their key too, so a
    worker process loads a spec once for all the tasks it runs.
    """
    kwargs = kwargs or {}
    key = (
        _file_key(spec),
        None if weights is None else _file_key(weights),
        pretrained,
        repr(sorted(kwargs.items())),
    )
    with _spec_lock:
        backbone = _spec_cache.pop(key, None) or Backbone(
            os.fspath(spec), weights=weights, pretrained=pretrained, **kwargs
        )
        _spec_cache[key] = backbone
        while len(_spec_cache) > _SPEC_CACHE_SIZE:
            _spec_cache.popitem(last=False)
        return backbone
