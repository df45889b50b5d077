"""Resolve a backbone source (spec, module, factory) into a built model.

A string spec names its loader by prefix: ``"timm:NAME"``,
``"torchvision:NAME"``, ``"hf:ID_OR_DIR"`` (the model families in
:mod:`sktune.families` that declare those prefixes). A local directory in
Hugging Face layout (with ``config.json``) loads as ``"hf:"``; a checkpoint
file that names its architecture (timm's ``{"arch": ..., "state_dict":
...}``) loads that architecture and its weights. Failures to fetch
pretrained weights say so and name the local alternatives.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn

from ..families import (
    Loaded,
    family_for_prefix,
    family_of,
    hf_loading,
    spec_prefixes,
)
from ..families.hf import HFEncoder
from .weights import WEIGHT_SUFFIXES, as_state_dict, load_weights, torch_load

__all__ = [
    "WeightsUnavailableError",
    "load_tokenizer",
    "parse_spec",
    "resolve",
]


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be fetched (no network, or not cached).

    The message names the local alternatives: ``Backbone(spec,
    weights=PATH)`` with a downloaded state dict, or a local Hugging Face
    directory.
    """


def resolve(
    source,
    weights,
    pretrained: bool,
    kwargs: dict,
    *,
    inner: Callable[[], Loaded] | None = None,
) -> Loaded:
    """Build the pristine module of a :class:`sktune.Backbone`'s parameters.

    ``inner``: when ``source`` is itself a Backbone, what it has loaded (asked
    only once the parameters are checked).
    """
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
    if inner is not None:
        built = inner()
        if weights is None:
            return built
        module = copy.deepcopy(built.module)
        _load_into(module, weights, built.removed)
        return Loaded(
            module, built.data_config, built.text_source, built.pooling, built.removed
        )
    module = _build(source)
    family = family_of(module)
    if weights is not None:
        module = copy.deepcopy(module) if isinstance(source, nn.Module) else module
        _load_into(module, weights, family.removed_classifier(module))
    module = family.wrap(module)
    family = family_of(module)
    return Loaded(
        module,
        family.data_config(module),
        getattr(module, "source", None) if family.spec_prefix == "hf" else None,
        getattr(module, "pooling", None) if family.spec_prefix == "hf" else None,
        family.removed_classifier(module),
    )


def _build(source) -> nn.Module:
    if isinstance(source, nn.Module):
        return source
    module = source()
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"backbone factory {source!r} returned {type(module).__name__}; "
            "expected an nn.Module."
        )
    return module


def _load_into(module: nn.Module, weights, removed) -> None:
    """Load ``weights`` into ``module`` (the model inside a text wrapper)."""
    target = module.model if isinstance(module, HFEncoder) else module
    load_weights(target, weights, ignore=tuple(removed))


def _resolve_spec(spec: str, weights, pretrained: bool, kwargs: dict) -> Loaded:
    kind, name = parse_spec(spec)
    if weights is not None:
        pretrained = False
    if kind == "hf-file":  # a weights file inside a Hugging Face directory
        kind, name, pretrained = "hf", str(Path(name).parent), False
        if weights is None:
            weights = spec
    elif kind == "checkpoint":  # a file that names its architecture
        arch, state_dict = _checkpoint_arch(name)
        inner = arch if ":" in arch else f"timm:{arch}"
        return _resolve_spec(
            inner, state_dict if weights is None else weights, False, kwargs
        )
    family = family_for_prefix(kind)
    try:
        loaded = family.load(name, pretrained, kwargs, family_of)
    except Exception as exc:
        if family.fetches(name, pretrained) and _is_fetch_error(exc):
            what = "pretrained weights" if pretrained else "config"
            raise _unavailable(f"{kind}:{name}", exc, what) from exc
        raise
    if weights is not None:
        _load_into(loaded.module, weights, loaded.removed)
    return loaded


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, name); kind is a prefix, "hf-file" or "checkpoint"."""
    prefixes = spec_prefixes()
    accepted = ", ".join(repr(p + ":") for p in prefixes)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in prefixes:
        if not rest:
            example = family_for_prefix(prefix).spec_example
            raise ValueError(
                f"Backbone spec {spec!r} names no model after '{prefix}:'; use "
                f"e.g. '{prefix}:{example}'."
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
        if (path.parent / "config.json").is_file() and path.suffix in WEIGHT_SUFFIXES:
            return "hf-file", spec
        return "checkpoint", spec
    # Only a prefix of two or more letters is a spec prefix ("C:" is a drive).
    if sep and len(prefix) > 1 and prefix.isidentifier():
        raise ValueError(
            f"Backbone spec {spec!r} has an unknown prefix {prefix!r}; accepted "
            f"prefixes are {accepted}, or give a local directory or file path."
        )
    raise ValueError(
        f"Backbone source {spec!r} is neither a spec with a prefix ({accepted}) nor "
        "an existing local directory or file."
    )


def _checkpoint_arch(path: str) -> tuple[str, dict]:
    payload = torch_load(Path(path), param="Backbone.source")
    arch = payload.get("arch") if isinstance(payload, Mapping) else None
    if not isinstance(arch, str):
        raise ValueError(
            f"Backbone source {path!r} is a file that does not name its "
            "architecture (no 'arch' entry, as in timm's training checkpoints). "
            "Give the architecture as a spec and the file as weights: "
            f"Backbone('timm:NAME', weights={path!r})."
        )
    return arch, as_state_dict(payload, path, "Backbone.source")


def load_tokenizer(source: str, kwargs: dict):
    """The tokenizer of a Hugging Face model, with errors that say what to do."""
    try:
        return hf_loading.load_tokenizer(source, **kwargs)
    except Exception as exc:
        if not hf_loading.is_local(source) and _is_fetch_error(exc):
            raise _unavailable(f"hf:{source}", exc, "tokenizer") from exc
        raise OSError(
            f"Could not load the tokenizer of {source!r}: {type(exc).__name__}: "
            f"{exc}. A Hugging Face model directory needs its tokenizer files "
            "(tokenizer.json or vocab.txt, tokenizer_config.json); save them with "
            "tokenizer.save_pretrained(dir)."
        ) from exc


def _unavailable(spec: str, exc: BaseException, what: str) -> WeightsUnavailableError:
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
