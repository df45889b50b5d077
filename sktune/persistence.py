"""A fitted estimator as a small directory: JSON config and safetensors weights.

``save_pretrained(directory)`` writes

- ``sktune_config.json``: the estimator's class and parameters (those away
  from their defaults), where its backbone comes from, a fingerprint of the
  backbone's pristine weights, and what fit learned besides weights: the
  input spec (kind, one sample's shape and dtype), the classes (and whether
  the targets were multilabel) or the target shape, the feature names;
- ``model.safetensors``: the trained part of the network only (the head,
  adapters, the blocks ``freeze`` left trainable and the buffers of modules
  that ran in training mode); the pretrained weights come from the backbone;
- ``history.json``: skorch's training history.

``from_pretrained(directory)`` rebuilds the estimator from these without
unpickling anything: safetensors holds tensors only, the JSON names classes
only from ``torch``, ``skorch`` and ``sktune``, and the backbone is loaded
from its spec or passed back in by the caller (and checked against the
fingerprint).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import numbers
import os
import threading
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator

from ._params import is_default, param_defaults
from ._version import __version__
from .backbones import Backbone, as_backbone, read_state_dict
from .cache import fingerprint
from .data.inputs import FittedInput

__all__ = [
    "CONFIG_FILE",
    "HISTORY_FILE",
    "WEIGHTS_FILE",
    "PretrainedMixin",
    "load",
    "save",
    "save_atomically",
]

CONFIG_FILE = "sktune_config.json"
WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.json"
FORMAT = "sktune-pretrained"
FORMAT_VERSION = 1
# A config may name classes from these packages only (optimizers, criteria,
# sktune's nested parameter objects): nothing else is imported on load.
_IMPORTABLE = ("torch", "skorch", "sktune")
# Parameters that shape the network: without them the weights do not fit.
_STRUCTURAL = ("head", "freeze", "adapter", "pooling", "image_size", "max_length")


# -- parameters as JSON --------------------------------------------------------------


def _path(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _importable(obj) -> bool:
    return obj.__module__.split(".")[0] in _IMPORTABLE and "<" not in obj.__qualname__


def _encode(value):
    """``value`` as JSON, or TypeError when it has no safe JSON form."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, dict) and all(map(_is_scalar, value)):
        # Keys JSON would turn into strings (class_weight={0: 5.0}), as pairs.
        return {"__items__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, type) and _importable(value):
        return {"__class__": _path(value)}
    if isinstance(value, BaseEstimator) and _importable(type(value)):
        return {
            "__object__": _path(type(value)),
            "params": _encode(value.get_params(deep=False)),
        }
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _is_scalar(key) -> bool:
    return key is None or isinstance(key, (bool, str, numbers.Real))


def _import(path: str):
    module, _, name = path.rpartition(".")
    if module.split(".")[0] not in _IMPORTABLE:
        raise ValueError(
            f"the config names {path!r}; only classes from {list(_IMPORTABLE)} "
            "are loaded."
        )
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__class__" in value:
            return _import(value["__class__"])
        if "__object__" in value:
            cls = _import(value["__object__"])
            if not (isinstance(cls, type) and issubclass(cls, BaseEstimator)):
                raise ValueError(f"{value['__object__']!r} is not a parameter object")
            return cls(**_decode(value["params"]))
        if "__items__" in value:
            return {k: _decode(v) for k, v in value["__items__"]}
        return {k: _decode(v) for k, v in value.items()}
    return value


def _encode_backbone(source) -> dict:
    backbone = source if isinstance(source, Backbone) else None
    spec = backbone.source if backbone is not None else source
    if not isinstance(spec, (str, os.PathLike)):
        return {"module": type(as_backbone(source).module()).__name__}
    out = {"spec": os.fspath(spec)}
    if backbone is not None:
        weights = backbone.weights
        out.update(
            weights=None if weights is None else os.fspath(weights),
            pretrained=backbone.pretrained,
            kwargs=_encode(backbone.kwargs),
        )
    return out


def _decode_backbone(config: dict):
    if "spec" not in config:
        return None
    if "weights" not in config:
        return config["spec"]
    return Backbone(
        config["spec"],
        weights=config["weights"],
        pretrained=config["pretrained"],
        **_decode(config["kwargs"]),
    )


# -- save ---------------------------------------------------------------------------------


def save_atomically(write, files: dict) -> None:
    """``write(**files)``, each file path written whole or not at all.

    Each path in ``files`` is written next to its target under a temporary
    name and moved into place only when complete, so an interrupted save
    never leaves a half-written file where a good one was. File objects and
    None pass through as they are.
    """
    files = dict(files)
    staged = {}
    for key, target in files.items():
        if isinstance(target, (str, os.PathLike)):
            tmp = f"{os.fspath(target)}.{os.getpid()}.{threading.get_ident()}.tmp"
            staged[key] = (target, tmp)
            files[key] = tmp
    try:
        write(**files)
        for target, tmp in staged.values():
            os.replace(tmp, target)
    finally:
        for _, tmp in staged.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def trained_keys(estimator) -> set[str]:
    """The state-dict keys of the trained part: the head, the trainable
    parameters and the buffers that trained."""
    net = estimator._network
    state = net.state_dict()
    keys = set(estimator._trainable)
    # Buffers change only in modules that ran in training mode (BatchNorm
    # statistics with train_bn=True, say).
    frozen_modules = set(net.plan.eval_modules)
    for prefix, part in (("backbone", net.backbone), ("head", net.head)):
        for name, module in part.named_modules():
            if prefix == "backbone" and name in frozen_modules:
                continue
            for buffer, _ in module.named_buffers(recurse=False):
                key = ".".join(filter(None, (prefix, name, buffer)))
                if key in state:
                    keys.add(key)
    return keys


def trained_state(estimator) -> dict[str, torch.Tensor]:
    """The trained part's tensors (:func:`trained_keys`), on the CPU."""
    state = estimator._network.state_dict()
    return {
        k: state[k].detach().cpu().contiguous() for k in sorted(trained_keys(estimator))
    }


def _fitted_state(estimator) -> dict:
    fitted = {
        "input_spec": dataclasses.asdict(estimator.input_spec_),
        "n_head_outputs": estimator._n_head_outputs,
    }
    if getattr(estimator, "_y_ndim", None) is not None:
        fitted["y_ndim"] = estimator._y_ndim
    if estimator._multilabel:
        fitted["multilabel"] = True
    if hasattr(estimator, "classes_inferred_"):
        classes = np.asarray(estimator.classes_inferred_)
        fitted["classes"] = {"values": classes.tolist(), "dtype": classes.dtype.str}
    if hasattr(estimator, "n_features_in_"):
        fitted["n_features_in"] = int(estimator.n_features_in_)
    if hasattr(estimator, "feature_names_in_"):
        fitted["feature_names_in"] = [str(f) for f in estimator.feature_names_in_]
    if getattr(estimator, "freeze_depth_", None) is not None:
        # freeze="auto": the network is rebuilt at the depth the fit chose.
        fitted["freeze_depth"] = int(estimator.freeze_depth_)
        fitted["freeze_search"] = _encode(getattr(estimator, "freeze_search_", []))
    return fitted


def _merged(estimator) -> bool:
    return any(
        getattr(layer, "merged", False)
        for layer in estimator._network.backbone.modules()
        if hasattr(layer, "adapter_layer_names")
    )


def save(estimator, directory) -> None:
    """Write a fitted estimator to ``directory`` (see the module docstring)."""
    from safetensors.torch import save_file

    estimator.check_is_fitted()
    params, not_saved = {}, []
    defaults = param_defaults(type(estimator))
    for name, value in sorted(estimator.get_params(deep=False).items()):
        if name == "backbone" or (
            name in defaults and is_default(value, defaults[name])
        ):
            continue
        try:
            params[name] = _encode(value)
        except TypeError:
            not_saved.append(name)
    pristine = as_backbone(estimator.backbone).module()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sktune_version": __version__,
        "class": type(estimator).__name__,
        "backbone": {
            **_encode_backbone(estimator.backbone),
            "fingerprint": fingerprint(pristine),
        },
        "params": params,
        "not_saved": not_saved,
        "fitted": _fitted_state(estimator),
        "adapters_merged": bool(estimator.adapted_modules_) and _merged(estimator),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        trained_state(estimator),
        os.fspath(directory / WEIGHTS_FILE),
        metadata={"format": FORMAT},
    )
    estimator.history_.to_file(os.fspath(directory / HISTORY_FILE))
    # The config last: a directory with a config is complete.
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


# -- load ---------------------------------------------------------------------------------


def read_config(directory) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"directory={os.fspath(directory)!r} has no {CONFIG_FILE}; it was not "
            "written by save_pretrained."
        )
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or config.get("format_version", 0) > (
        FORMAT_VERSION
    ):
        raise ValueError(
            f"{path} is not an sktune model of format version <= {FORMAT_VERSION} "
            f"(format={config.get('format')!r}, "
            f"format_version={config.get('format_version')!r})."
        )
    return config


def load(cls, directory, backbone=None, **params):
    """Rebuild the estimator ``save`` wrote (see ``from_pretrained``)."""
    from skorch.history import History

    config = read_config(directory)
    if config["class"] != cls.__name__:
        raise ValueError(
            f"{os.fspath(directory)!r} holds a {config['class']}, not a "
            f"{cls.__name__}; load it with {config['class']}.from_pretrained."
        )
    saved = config["backbone"]
    if backbone is None:
        backbone = _decode_backbone(saved)
        if backbone is None:
            raise ValueError(
                f"{os.fspath(directory)!r} was saved from a module backbone "
                f"({saved['module']}), which is not stored with the model; pass it "
                "back: from_pretrained(directory, backbone=module)."
            )
    found = fingerprint(as_backbone(backbone).module())
    if found != saved["fingerprint"]:
        raise ValueError(
            "backbone's pristine weights differ from those the model was saved with "
            f"(fingerprint {found[:12]} != {saved['fingerprint'][:12]}); pass the "
            "same pretrained backbone."
        )
    missing = [
        name
        for name in config["not_saved"]
        if name in _STRUCTURAL and name not in params
    ]
    if missing:
        raise ValueError(
            f"{missing} could not be saved as JSON (a callable, say) and shape the "
            f"network; pass them: from_pretrained(directory, {missing[0]}=...)."
        )
    estimator = cls(backbone, **{**_decode(config["params"]), **params})

    fitted = config["fitted"]
    spec = dict(fitted["input_spec"])
    spec["shape"] = tuple(spec["shape"])
    spec["fields"] = tuple(
        (key, dtype, tuple(shape)) for key, dtype, shape in spec["fields"]
    )
    photo = spec.get("photo") or ()  # how photos are decoded: (size, ...)
    spec["photo"] = (tuple(photo[0]), *photo[1:]) if photo else ()
    estimator.input_spec_ = FittedInput(**spec)
    estimator._n_head_outputs = fitted["n_head_outputs"]
    if "y_ndim" in fitted:
        estimator._y_ndim = fitted["y_ndim"]
    if fitted.get("multilabel"):
        estimator._multilabel = True
    if "classes" in fitted:
        classes = fitted["classes"]
        estimator.classes_inferred_ = np.asarray(
            classes["values"], dtype=np.dtype(classes["dtype"])
        )
    if "n_features_in" in fitted:
        estimator.n_features_in_ = fitted["n_features_in"]
    if "feature_names_in" in fitted:
        estimator.feature_names_in_ = np.asarray(fitted["feature_names_in"], object)
    if "freeze_depth" in fitted:
        estimator.freeze_depth_ = fitted["freeze_depth"]
        estimator.freeze_search_ = fitted.get("freeze_search", [])
    estimator.initialize()

    path = Path(directory) / WEIGHTS_FILE
    # safetensors only: tensors, never a pickle.
    state = read_state_dict(path, param="directory")
    own = estimator._network.state_dict()
    unknown = sorted(set(state) - set(own))
    lacking = sorted(estimator._trainable - set(state))
    shapes = [k for k in state if k in own and own[k].shape != state[k].shape]
    if unknown or lacking or shapes:
        raise ValueError(
            f"{path} does not fit the network the config builds: {len(unknown)} "
            f"unknown tensors (e.g. {unknown[:3]}), {len(lacking)} trained ones "
            f"missing (e.g. {lacking[:3]}), {len(shapes)} of another shape "
            f"(e.g. {shapes[:3]})."
        )
    estimator._network.load_state_dict(state, strict=False)
    if config.get("adapters_merged"):
        estimator.merge_adapters()
    history = Path(directory) / HISTORY_FILE
    if history.is_file():
        estimator.history_ = History.from_file(os.fspath(history))
    return estimator


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for the estimators (as
    transformers' models get theirs from a mixin)."""

    def save_pretrained(self, directory) -> None:
        """Write the fitted estimator to a directory, without pickle.

        The directory holds ``sktune_config.json`` (the parameters, where
        the backbone comes from and a fingerprint of its weights, the fitted
        input spec and classes), ``model.safetensors`` (the trained part of
        the network only: head, adapters, the blocks ``freeze`` left
        trainable, and the buffers that trained with them, such as BatchNorm
        statistics under ``Freeze(train_bn=True)``) and ``history.json``.
        The pretrained weights are not copied: :meth:`from_pretrained` takes
        them from the backbone. Parameters with no JSON form (callbacks, a
        head factory) are listed in the config as not saved; pass them back
        to ``from_pretrained``.

        Parameters
        ----------
        directory : str or path-like
            Created if missing; files of an earlier save are replaced.

        Examples
        --------
        >>> clf.save_pretrained("sentiment-model")  # doctest: +SKIP
        >>> FineTuneClassifier.from_pretrained("sentiment-model")  # doctest: +SKIP
        """
        save(self, directory)

    @classmethod
    def from_pretrained(cls, directory, backbone=None, **params):
        """Rebuild an estimator written by :meth:`save_pretrained`.

        Nothing is unpickled: the config is JSON (naming classes from
        torch, skorch and sktune only), the weights are safetensors.

        Parameters
        ----------
        directory : str or path-like
        backbone : optional
            The backbone, when the model was saved from a module (a module is
            not stored with the model). By default the saved spec is loaded.
            Either way its weights must match the fingerprint in the config.
        **params
            Parameters to set instead of the saved ones (``device="cuda"``,
            or those the config lists as not saved).

        Returns
        -------
        estimator
            Fitted: it predicts as the saved estimator did.
        """
        return load(cls, directory, backbone=backbone, **params)
