"""Resolve a backbone parameter to a private training copy; keep the pristine one.

The pristine backbone is read-only: estimators never train it, never register
hooks on it and never move it. ``clone`` and ``copy.deepcopy`` share it; each
``fit`` makes its own training copy (DESIGN.md, invariants 1 and 2).

A backbone is an ``nn.Module``, a zero-argument factory, or a string spec
resolved lazily (timm, torchvision and transformers are imported only then):

- ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=True, num_classes=0)``,
  pooled features without the classifier;
- ``"torchvision:NAME"``: ``torchvision.models.get_model(NAME,
  weights="DEFAULT")`` with its final classification layer replaced by
  ``nn.Identity``;
- ``"hf:ID_OR_DIR"``: a transformers ``AutoModel`` from the hub or a local
  directory, wrapped in :class:`sktune._hf.HFEncoder` (pooled features);
- a local directory in Hugging Face layout (with ``config.json``), or a
  checkpoint file that names its architecture (timm's ``{"arch": ...,
  "state_dict": ...}``).

``Backbone(spec, weights=PATH)`` builds the architecture with random weights
and loads a local state dict (``.safetensors``, or ``.pth``/``.pt``/``.bin``
read with ``torch.load(weights_only=True)``), so no network is needed.
"""

from __future__ import annotations

import copy
import difflib
import os
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

__all__ = [
    "SPEC_PREFIXES",
    "Backbone",
    "WeightsUnavailableError",
    "as_backbone",
    "load_weights",
    "read_state_dict",
    "training_copy",
]

SPEC_PREFIXES = ("timm", "torchvision", "hf")

# What the estimators' ``backbone`` parameter accepts.
BackboneSource = Union[nn.Module, Callable[[], nn.Module], "Backbone", str, os.PathLike]

_ACCEPTED = (
    "an nn.Module instance, a zero-argument callable returning one, a "
    "sktune.Backbone, or a string spec 'timm:NAME', 'torchvision:NAME', "
    "'hf:ID_OR_DIR', a local Hugging Face model directory or a checkpoint file"
)
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Top-level keys under which checkpoints commonly nest the state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Names of classification layers (``_fc`` of the efficientnet_pytorch family).
_CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads", "last_linear", "logits")
# How many string specs keep their pristine module between fits.
_SPEC_CACHE_SIZE = 2


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be fetched (no network, or not cached).

    The message names the local alternatives: ``Backbone(spec,
    weights=PATH)`` with a downloaded state dict, or a local Hugging Face
    directory.
    """


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
    in :class:`sktune._hf.HFEncoder`, which returns pooled features; its
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
        return self._resolved().module

    def training_copy(self) -> nn.Module:
        """Return a private copy of the pristine module, free to train."""
        return copy.deepcopy(self.module())

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
        return self._resolved().data_config

    def tokenizer(self):
        """The tokenizer of a Hugging Face backbone, else None.

        Loaded once from the same hub id or directory as the model
        (``AutoTokenizer``) and shared, like the pristine module, by every
        copy of this ``Backbone``: do not change its settings in place, and
        give each thread that tokenizes concurrently its own
        ``copy.deepcopy`` (concurrent use of one fast tokenizer can fail with
        "Already borrowed").
        """
        resolved = self._resolved()
        if resolved.text_source is None:
            return None
        state = self._state
        with state.lock:
            if state.tokenizer is None:
                state.tokenizer = _load_tokenizer(resolved.text_source, self.kwargs)
            return state.tokenizer

    def default_pooling(self) -> str | None:
        """How a Hugging Face backbone pools tokens by default, else None.

        What the model's sentence-transformers pooling config says
        (``1_Pooling/config.json``), otherwise ``"mean"`` (the masked mean of
        the token states; see :func:`sktune._hf.default_pooling`).
        """
        return self._resolved().pooling

    def _resolved(self) -> _Resolved:
        state = self._state
        with state.lock:
            if state.resolved is None:
                state.resolved = _resolve(
                    self.source, self.weights, self.pretrained, self.kwargs
                )
            return state.resolved

    def __deepcopy__(self, memo):
        return self

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
        self.resolved: _Resolved | None = None
        self.tokenizer = None


class _Resolved:
    """A built backbone and what the data side needs to feed it."""

    def __init__(
        self,
        module: nn.Module,
        data_config: dict | None = None,
        text_source: str | None = None,
        pooling: str | None = None,
    ):
        self.module = module
        self.data_config = data_config
        self.text_source = text_source
        self.pooling = pooling


def as_backbone(backbone: BackboneSource, *, param: str = "backbone") -> Backbone:
    """Return a :class:`Backbone` for any accepted ``backbone`` parameter value.

    A ``Backbone`` is returned as is. A string spec (or path) returns the
    ``Backbone`` that :func:`training_copy` uses for it, so the model is
    resolved once and shared: the last few string specs keep their pristine
    module in memory between fits (cross-validation folds and grid-search
    candidates load the weights once). A module or factory is wrapped in a
    new ``Backbone``, which builds (a factory) or wraps (a module) on first
    use. Nothing is built here.

    Raises
    ------
    TypeError
        For a value that is none of the accepted kinds.
    """
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, (str, os.PathLike)):
        return _cached_spec(backbone)
    if isinstance(backbone, nn.Module) or callable(backbone):
        return Backbone(backbone)
    raise TypeError(f"{param} must be {_ACCEPTED}, got {backbone!r}.")


def training_copy(backbone: BackboneSource, *, param: str = "backbone") -> nn.Module:
    """Return a private, trainable module for the estimator parameter ``backbone``.

    A module (or a ``Backbone``) is deep-copied; a factory is called, and its
    fresh result is already private. A string spec is resolved once and kept
    (see :func:`as_backbone`); each call returns a fresh copy of it. A bare
    ``transformers`` model is wrapped in :class:`sktune._hf.HFEncoder`.
    """
    if isinstance(backbone, Backbone):
        return backbone.training_copy()
    if isinstance(backbone, (str, os.PathLike)):
        return _cached_spec(backbone).training_copy()
    if isinstance(backbone, nn.Module):
        return _wrap_hf(copy.deepcopy(backbone))
    return _wrap_hf(_build(backbone, param=param))


# -- resolution ----------------------------------------------------------------

_spec_cache: OrderedDict = OrderedDict()
_spec_lock = threading.Lock()


def _cached_spec(spec) -> Backbone:
    key = os.fspath(spec)
    path = Path(key).expanduser()
    if path.exists():  # a rewritten local file is a new backbone
        stat = path.stat()
        key = (key, stat.st_mtime_ns, stat.st_size)
    with _spec_lock:
        backbone = _spec_cache.pop(key, None) or Backbone(os.fspath(spec))
        _spec_cache[key] = backbone
        while len(_spec_cache) > _SPEC_CACHE_SIZE:
            _spec_cache.popitem(last=False)
        return backbone


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


def _resolve(source, weights, pretrained, kwargs, param="Backbone.source") -> _Resolved:
    if not isinstance(pretrained, bool):
        raise TypeError(
            f"Backbone.pretrained must be True or False, got {pretrained!r}."
        )
    if isinstance(source, (str, os.PathLike)):
        return _resolve_spec(os.fspath(source), weights, pretrained, kwargs)
    if kwargs:
        raise TypeError(
            f"Backbone keyword arguments {sorted(kwargs)} apply to string specs "
            f"only; got them with {type(source).__name__} source {source!r}."
        )
    if isinstance(source, Backbone):
        inner = source._resolved()
        if weights is None:
            return inner
        module = copy.deepcopy(inner.module)
        load_weights(_weights_target(module), weights, ignore=_removed(module))
        return _Resolved(module, inner.data_config, inner.text_source, inner.pooling)
    module = _build(source, param=param)
    if weights is not None:
        module = copy.deepcopy(module) if isinstance(source, nn.Module) else module
        load_weights(_weights_target(module), weights, ignore=_removed(module))
    module = _wrap_hf(module)
    return _Resolved(
        module,
        _module_data_config(module),
        getattr(module, "source", None) if _is_hf_encoder(module) else None,
        getattr(module, "pooling", None) if _is_hf_encoder(module) else None,
    )


def _resolve_spec(spec: str, weights, pretrained: bool, kwargs: dict) -> _Resolved:
    kind, name = _parse_spec(spec)
    if weights is not None:
        pretrained = False
    if kind == "timm":
        resolved = _resolve_timm(spec, name, pretrained, kwargs)
    elif kind == "torchvision":
        resolved = _resolve_torchvision(spec, name, pretrained, kwargs)
    elif kind == "hf":
        resolved = _resolve_hf(spec, name, pretrained, kwargs)
    elif kind == "hf-file":  # a weights file inside a Hugging Face directory
        resolved = _resolve_hf(spec, str(Path(name).parent), False, kwargs)
        if weights is None:
            weights = name
    else:  # a checkpoint file that names its architecture
        arch, state_dict = _checkpoint_arch(name)
        inner = arch if ":" in arch else f"timm:{arch}"
        resolved = _resolve_spec(inner, None, False, kwargs)
        if weights is None:
            weights = state_dict
    if weights is not None:
        target = _weights_target(resolved.module)
        load_weights(target, weights, ignore=_removed(target))
    return resolved


def _weights_target(module: nn.Module) -> nn.Module:
    """The module a state dict is for: the model inside an HFEncoder."""
    return module.model if _is_hf_encoder(module) else module


def _parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, name); kind is a prefix or "checkpoint"."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in SPEC_PREFIXES:
        if not rest:
            raise ValueError(
                f"Backbone spec {spec!r} names no model after '{prefix}:'; use "
                f"e.g. '{prefix}:{_EXAMPLES[prefix]}'."
            )
        return prefix, rest
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf", spec
        raise ValueError(
            f"Backbone source {spec!r} is a directory without config.json; a local "
            "directory must hold a Hugging Face model (save_pretrained). For a "
            "state dict file use Backbone('timm:NAME', weights=PATH)."
        )
    if path.is_file():
        if (path.parent / "config.json").is_file() and path.suffix in _WEIGHT_SUFFIXES:
            return "hf-file", spec
        return "checkpoint", spec
    # Only a prefix of two or more letters is a spec prefix ("C:" is a drive).
    if sep and len(prefix) > 1 and prefix.isidentifier():
        raise ValueError(
            f"Backbone spec {spec!r} has an unknown prefix {prefix!r}; accepted "
            f"prefixes are {', '.join(repr(p + ':') for p in SPEC_PREFIXES)}, or "
            "give a local directory or file path."
        )
    raise ValueError(
        f"Backbone source {spec!r} is neither a spec with a prefix "
        f"({', '.join(repr(p + ':') for p in SPEC_PREFIXES)}) nor an existing "
        "local directory or file."
    )


_EXAMPLES = {
    "timm": "resnet18",
    "torchvision": "resnet18",
    "hf": "sentence-transformers/all-MiniLM-L6-v2",
}


def _unavailable(spec: str, exc: BaseException, what: str = "pretrained weights"):
    if spec.startswith("hf:"):
        local = (
            "a local model directory (saved with save_pretrained) instead: "
            "Backbone('/path/to/model_dir')"
        )
    else:
        local = (
            f"a local state dict instead: Backbone({spec!r}, "
            "weights='/path/to/weights.safetensors') (or a .pth file)"
        )
    return WeightsUnavailableError(
        f"Could not fetch the {what} of backbone {spec!r} (offline?): "
        f"{type(exc).__name__}: {exc}\nDownload them once where the network is "
        f"reachable (they are cached), or pass {local}."
    )


def _is_fetch_error(exc: BaseException) -> bool:
    root = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or root in (
        "huggingface_hub",
        "httpx",
        "requests",
        "urllib3",
    )


def _resolve_timm(spec: str, name: str, pretrained: bool, kwargs: dict) -> _Resolved:
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"Backbone spec {spec!r}: timm has no model {name!r}."
            + _did_you_mean(name, timm.list_models())
        )
    kwargs = {"num_classes": 0, **kwargs}
    try:
        module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if pretrained and _is_fetch_error(exc):
            raise _unavailable(spec, exc) from exc
        raise
    return _Resolved(module, _module_data_config(module))


def _resolve_torchvision(
    spec: str, name: str, pretrained: bool, kwargs: dict
) -> _Resolved:
    import torchvision.models as tvm

    if name not in tvm.list_models():
        raise ValueError(
            f"Backbone spec {spec!r}: torchvision has no model {name!r}."
            + _did_you_mean(name, tvm.list_models())
        )
    try:
        module = tvm.get_model(
            name, weights="DEFAULT" if pretrained else None, **kwargs
        )
    except Exception as exc:
        if pretrained and _is_fetch_error(exc):
            raise _unavailable(spec, exc) from exc
        raise
    removed = _strip_torchvision_classifier(module, spec)
    module._sktune_removed = removed  # lets weights files keep their classifier
    return _Resolved(module, _torchvision_data_config(name))


def _resolve_hf(spec: str, name: str, pretrained: bool, kwargs: dict) -> _Resolved:
    from . import _hf

    local = _hf.is_local(name)
    if local:
        name = str(Path(name).expanduser())
    try:
        model = _hf.load_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if not local and _is_fetch_error(exc):
            what = "pretrained weights" if pretrained else "config"
            raise _unavailable(
                spec if spec.startswith("hf:") else f"hf:{spec}", exc, what
            ) from exc
        raise
    pooling = _hf.default_pooling(name, **kwargs)
    return _Resolved(
        _hf.HFEncoder(model, pooling=pooling, source=name), None, name, pooling
    )


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f" Did you mean one of {close}?" if close else ""


def _strip_torchvision_classifier(module: nn.Module, spec: str) -> tuple[str, ...]:
    """Replace the final classification layer by ``nn.Identity``; return its name."""
    import torchvision.models as tvm

    if isinstance(module, tvm.VisionTransformer):
        module.heads.head = nn.Identity()
        return ("heads.head",)
    for attr in ("fc", "classifier", "head"):
        layer = getattr(module, attr, None)
        if isinstance(layer, nn.Linear):
            setattr(module, attr, nn.Identity())
            return (attr,)
        if isinstance(layer, nn.Sequential) and len(layer):
            last_name, last = list(layer.named_children())[-1]
            if isinstance(last, nn.Linear):
                setattr(layer, last_name, nn.Identity())
                return (f"{attr}.{last_name}",)
    raise ValueError(
        f"Backbone spec {spec!r}: sktune does not know where the classifier of "
        f"torchvision's {type(module).__name__} is. Build the model yourself, "
        "replace its classifier by nn.Identity() and pass the module."
    )


def _removed(module: nn.Module) -> tuple[str, ...]:
    """Prefixes of classifier weights a state dict may have and the model not."""
    if _is_hf_encoder(module):
        return ()
    removed = getattr(module, "_sktune_removed", None)
    if removed is not None:
        return tuple(removed)
    cfg = getattr(module, "pretrained_cfg", None)  # timm
    classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(classifier, str):
        return (classifier,)
    if isinstance(classifier, (list, tuple)):
        return tuple(classifier)
    return ()


def _checkpoint_arch(path: str) -> tuple[str, dict]:
    payload = _torch_load(Path(path), param="Backbone.source")
    arch = payload.get("arch") if isinstance(payload, Mapping) else None
    if not isinstance(arch, str):
        raise ValueError(
            f"Backbone source {path!r} is a file that does not name its "
            "architecture (no 'arch' entry, as in timm's training checkpoints). "
            "Give the architecture as a spec and the file as weights: "
            f"Backbone('timm:NAME', weights={path!r})."
        )
    return arch, _as_state_dict(payload, path, "Backbone.source")


def _load_tokenizer(source: str, kwargs: dict):
    from . import _hf

    try:
        return _hf.load_tokenizer(source, **kwargs)
    except Exception as exc:
        if not _hf.is_local(source) and _is_fetch_error(exc):
            raise _unavailable(f"hf:{source}", exc, "tokenizer") from exc
        raise OSError(
            f"Could not load the tokenizer of {source!r}: {type(exc).__name__}: "
            f"{exc}. A Hugging Face model directory needs its tokenizer files "
            "(tokenizer.json or vocab.txt, tokenizer_config.json); save them with "
            "tokenizer.save_pretrained(dir)."
        ) from exc


# -- Hugging Face modules given as modules -------------------------------------


def _is_hf_encoder(module) -> bool:
    hf = _loaded("sktune._hf")
    return hf is not None and isinstance(module, hf.HFEncoder)


def _loaded(name: str):
    import sys

    return sys.modules.get(name)


def _wrap_hf(module: nn.Module) -> nn.Module:
    """Wrap a bare transformers model so that it returns pooled features."""
    transformers = _loaded("transformers")
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return module
    from . import _hf

    source = getattr(module, "name_or_path", None) or None
    pooling = _hf.default_pooling(source) if source and _hf.is_local(source) else "mean"
    return _hf.HFEncoder(module, pooling=pooling, source=source)


# -- preprocessing -----------------------------------------------------------------


def _module_data_config(module: nn.Module) -> dict | None:
    if getattr(module, "pretrained_cfg", None) is None or _loaded("timm") is None:
        return None
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(module)
    input_size = tuple(int(v) for v in cfg["input_size"])
    # Models built for another size (a ViT with img_size=...) take only that
    # size; timm's config still states the pretrained one.
    img_size = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if isinstance(img_size, (tuple, list)) and len(img_size) == 2:
        input_size = (input_size[0], int(img_size[0]), int(img_size[1]))
    return {
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "input_size": input_size,
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


def _torchvision_data_config(name: str) -> dict | None:
    import torchvision.models as tvm

    try:
        transforms = tvm.get_model_weights(name).DEFAULT.transforms()
        crop = int(transforms.crop_size[0])
        resize = int(transforms.resize_size[0])
        interpolation = getattr(
            transforms.interpolation, "value", transforms.interpolation
        )
        return {
            "mean": tuple(float(v) for v in transforms.mean),
            "std": tuple(float(v) for v in transforms.std),
            "input_size": (3, crop, crop),
            "interpolation": str(interpolation),
            "crop_pct": crop / resize,
        }
    except (AttributeError, KeyError, ValueError, IndexError, TypeError):
        return None


# -- weights files -----------------------------------------------------------------


def read_state_dict(
    path: str | os.PathLike, *, param: str = "weights"
) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, safely.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin``/``.ckpt``
        file holding a plain state dict (possibly nested under
        ``"state_dict"``, ``"model_state_dict"``, ``"model"`` or
        ``"module"``). A ``"module."`` prefix on every key (DataParallel) is
        removed.
    param : str
        The parameter name used in error messages.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        For another suffix, or a file that is not a plain state dict: torch
        files are read with ``weights_only=True``, which refuses pickles that
        would run code (pickled modules, custom classes).
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{param}={str(path)!r}: no such file.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise ValueError(
                f"{param}={str(path)!r} is not a readable safetensors file: {exc}"
            ) from exc
    if suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(
            f"{param}={str(path)!r} has suffix {suffix!r}; accepted weights files "
            f"are {', '.join(_WEIGHT_SUFFIXES)}."
        )
    return _as_state_dict(_torch_load(path, param=param), str(path), param)


def _torch_load(path: Path, *, param: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        if "weights only" not in str(exc).lower():
            raise ValueError(
                f"{param}={str(path)!r} is not a readable torch file: {exc}"
            ) from exc
        raise ValueError(
            f"{param}={str(path)!r} is not a plain state dict: torch.load("
            "weights_only=True) refused it for safety, because loading it would "
            "run arbitrary code (a pickled module or custom classes). Save "
            "model.state_dict() instead, or convert it to .safetensors. "
            f"({reason[0] if reason else type(exc).__name__})"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise ValueError(
            f"{param}={str(path)!r} is not a readable torch file: {exc}"
        ) from exc


def _as_state_dict(payload, path: str, param: str) -> dict[str, torch.Tensor]:
    while isinstance(payload, Mapping) and not _all_tensors(payload):
        nested = [k for k in _CONTAINER_KEYS if isinstance(payload.get(k), Mapping)]
        if not nested:
            break
        payload = payload[nested[0]]
    if not isinstance(payload, Mapping) or not payload or not _all_tensors(payload):
        kind = (
            f"a dict with keys {list(payload)[:8]}"
            if isinstance(payload, Mapping)
            else type(payload).__name__
        )
        raise ValueError(
            f"{param}={path!r} is not a plain state dict (names -> tensors); it "
            f"holds {kind}."
        )
    keys = list(payload)
    if all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in payload.items()}
    return dict(payload)


def _all_tensors(mapping: Mapping) -> bool:
    return all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items()
    )


def load_weights(
    module: nn.Module,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    ignore: tuple[str, ...] = (),
    param: str = "weights",
) -> str:
    """Load a state dict (a local file or a mapping) into ``module`` in place.

    Matching, in this order:

    1. **By name**: every tensor of ``module.state_dict()`` (parameters and
       buffers) must be in the file with the same shape. The file may have
       extra entries only under ``ignore`` (the classifier the backbone
       removed, e.g. ``"fc"``); a file without any ``num_batches_tracked``
       entries (older checkpoints) leaves those counters as they are.
    2. **By position**, when the names differ: the file's tensors, in the
       order they were saved, must match the module's state dict one to one
       in count and shape (``num_batches_tracked`` left out on both sides when
       the file has none). At most two trailing tensors of a classification
       layer (a name whose layer part is ``fc``, ``_fc``, ``classifier``,
       ``head``, ``heads``, ``last_linear`` or ``logits``) are skipped. This
       loads e.g. EfficientNet-Lite0 weights saved with ``_conv_stem``/
       ``_blocks`` names into timm's ``tf_efficientnet_lite0``. Shapes alone
       cannot tell apart two tensors of the same shape saved in another
       order, so only use it for the same architecture saved by another
       implementation. safetensors files store tensors sorted by name, so they
       only match by name.

    Parameters
    ----------
    module : nn.Module
        The architecture, modified in place.
    weights : str, path-like or mapping
        A file accepted by :func:`read_state_dict`, or a state dict.
    ignore : tuple of str
        Module-name prefixes of file entries the module does not have on
        purpose (a removed classifier).
    param : str
        The parameter name used in error messages.

    Returns
    -------
    str
        ``"name"`` or ``"position"``: how the tensors were matched.

    Raises
    ------
    ValueError
        If neither matching works; lists the first missing and unexpected
        keys, shape mismatches, and why matching by position failed.
    """
    if isinstance(weights, Mapping):
        label, ordered = "the given state dict", True
        state = _as_state_dict(weights, label, param)
    else:
        label = f"{param}={os.fspath(weights)!r}"
        ordered = Path(os.fspath(weights)).suffix.lower() != ".safetensors"
        state = read_state_dict(weights, param=param)
    target = module.state_dict()
    keep_counters = any(k.endswith("num_batches_tracked") for k in state)
    wanted = [
        k for k in target if keep_counters or not k.endswith("num_batches_tracked")
    ]

    matched, problems, names_differ = _match_by_name(target, wanted, state, ignore)
    how = "name"
    if matched is None and names_differ:
        if not ordered:
            problems.append(
                "matching by position needs the saved order, which a safetensors "
                "file does not keep"
            )
        else:
            matched, problem = _match_by_position(target, wanted, state)
            problems.append(problem)
            how = "position"
    if matched is None:
        raise ValueError(
            f"{label} does not fit the {type(module).__name__} architecture: "
            + "; ".join(problems)
            + "."
        )
    result = module.load_state_dict(matched, strict=False)
    left = [k for k in result.missing_keys if k in wanted]
    if left or result.unexpected_keys:  # pragma: no cover - guarded above
        raise ValueError(
            f"{label}: could not load {left[:5]} / {result.unexpected_keys[:5]}."
        )
    return how


def _match_by_name(target, wanted, state, ignore):
    """Match by key; returns (matched or None, problems, whether names differ)."""
    missing = [k for k in wanted if k not in state]
    unexpected = [
        k for k in state if k not in target and not any(_under(k, p) for p in ignore)
    ]
    shapes = [
        f"{k!r}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in wanted
        if k in state and state[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {_first(missing)})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected keys (e.g. {_first(unexpected)})"
        )
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:5])})")
    matched = None if problems else {k: state[k] for k in wanted}
    return matched, problems, bool(missing or unexpected)


def _match_by_position(target, wanted, state):
    keys = list(state)
    if not any(k.endswith("num_batches_tracked") for k in keys):
        keys = [k for k in keys if not k.endswith("num_batches_tracked")]
    extra = len(keys) - len(wanted)
    if 0 < extra <= 2 and all(_is_classifier_key(k) for k in keys[-extra:]):
        keys = keys[:-extra]
    if len(keys) != len(wanted):
        return None, (
            f"matching by position failed: the file has {len(keys)} tensors, the "
            f"model {len(wanted)}"
        )
    for i, (k_file, k_model) in enumerate(zip(keys, wanted, strict=True)):
        if state[k_file].shape != target[k_model].shape:
            return None, (
                f"matching by position failed at tensor {i}: file {k_file!r} "
                f"{tuple(state[k_file].shape)} vs model {k_model!r} "
                f"{tuple(target[k_model].shape)}"
            )
    return {
        k_model: state[k_file] for k_file, k_model in zip(keys, wanted, strict=True)
    }, ""


def _is_classifier_key(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2].lstrip("_") in _CLASSIFIER_NAMES


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
