"""Loading Hugging Face models: from a hub id or a local directory.

The other half of the ``hf`` family (:mod:`sktune.families.hf`): the
``AutoModel`` and ``AutoTokenizer`` of a source, and the pooling a
sentence-transformers package says its model was trained with. transformers
and huggingface_hub are imported inside the functions that need them, never
at import time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

__all__ = ["default_pooling", "is_local", "load_model", "load_tokenizer"]

# Keyword arguments of ``from_pretrained`` that also apply to the tokenizer.
_SHARED_KWARGS = (
    "revision",
    "cache_dir",
    "token",
    "trust_remote_code",
    "local_files_only",
)

# sentence-transformers pooling modes -> ours (sqrt-length and weighted means
# differ from the mean only by a per-text scale or token weights).
_ST_MODES = {
    "mean": "mean",
    "mean_sqrt_len_tokens": "mean",
    "weightedmean": "mean",
    "cls": "cls",
    "max": "max",
}
_ST_LEGACY = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean",
    "pooling_mode_weightedmean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` is an existing local directory (not a hub id)."""
    return Path(source).expanduser().is_dir()


def load_model(source: str, *, pretrained: bool = True, **kwargs) -> nn.Module:
    """Load a transformers ``AutoModel`` from a hub id or a local directory.

    ``pretrained=False`` builds the architecture from its config with random
    weights. ``trust_remote_code`` stays False unless passed in ``kwargs``.
    Errors from transformers (missing files, no network) propagate.
    transformers' progress bar of loading weights stays off: a fit, or a
    results table, does not get a bar printed into its middle.
    """
    from ..progress import no_widget_warning

    with no_widget_warning():  # transformers imports tqdm.auto
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging

    kwargs = {"trust_remote_code": False, **kwargs}
    if pretrained:
        shown = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()
        try:
            return AutoModel.from_pretrained(source, **kwargs)
        finally:
            if shown:
                logging.enable_progress_bar()
    config_kwargs = {k: kwargs.pop(k) for k in _SHARED_KWARGS if k in kwargs}
    config = AutoConfig.from_pretrained(source, **config_kwargs)
    return AutoModel.from_config(
        config,
        trust_remote_code=config_kwargs.get("trust_remote_code", False),
        **kwargs,
    )


def load_tokenizer(source: str, **kwargs):
    """Load the ``AutoTokenizer`` of ``source`` (hub id or local directory)."""
    from transformers import AutoTokenizer

    tokenizer_kwargs = {"trust_remote_code": False}
    tokenizer_kwargs.update({k: kwargs[k] for k in _SHARED_KWARGS if k in kwargs})
    return AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)


def default_pooling(source: str, **kwargs) -> str:
    """The pooling a model was trained to be used with, ``"mean"`` otherwise.

    A sentence-transformers model says so in its pooling module's
    ``config.json`` (``1_Pooling/config.json``, or the path ``modules.json``
    names), in the model's directory or, for a transformer saved in a
    subfolder of a sentence-transformers package, in the parent directory.
    For hub ids the file is read from the local cache or downloaded
    (failures are ignored).

    Without such a file the default is ``"mean"``: for frozen features (a
    linear probe, the common case when much of the encoder is frozen) the
    masked mean over tokens is the better sentence representation for
    BERT-style encoders than the ``[CLS]`` token, whose pretraining objective
    (next-sentence prediction, or none) did not make it a sentence summary
    (Reimers & Gurevych, 2019); with full fine-tuning the two do about
    equally well.
    """
    config = _pooling_config(source, **kwargs)
    if config is None:
        return "mean"
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in _ST_LEGACY.items() if config.get(key)]
    elif isinstance(modes, str):
        modes = [modes]
    for mode in modes:
        if mode in _ST_MODES:
            return _ST_MODES[mode]
        if mode in _ST_MODES.values():
            return mode
    return "mean"


def _pooling_config(source: str, **kwargs) -> dict | None:
    if is_local(source):
        directory = Path(source).expanduser().resolve()
        for candidate in (directory, directory.parent):
            if candidate != directory and not _lists_module(candidate, directory.name):
                continue
            path = _local_pooling_path(candidate)
            if path is not None:
                return _read_json(path)
        return None
    path = _hub_file(source, "1_Pooling/config.json", **kwargs)
    return None if path is None else _read_json(Path(path))


def _lists_module(package: Path, name: str) -> bool:
    """Whether ``package/modules.json`` lists ``name`` as a non-pooling module."""
    modules = _read_json(package / "modules.json")
    return isinstance(modules, list) and any(
        isinstance(m, dict)
        and m.get("path") == name
        and not str(m.get("type", "")).endswith("Pooling")
        for m in modules
    )


def _local_pooling_path(directory: Path) -> Path | None:
    modules = _read_json(directory / "modules.json")
    paths = ["1_Pooling"]
    if isinstance(modules, list):
        paths = [
            m.get("path", "")
            for m in modules
            if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")
        ] + paths
    for sub in paths:
        path = directory / sub / "config.json"
        if sub and path.is_file():
            return path
    return None


def _hub_file(repo_id: str, filename: str, **kwargs) -> str | None:
    """The path of a hub file from the cache, else a download; None if absent."""
    try:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir") if k in kwargs}
    try:
        cached = try_to_load_from_cache(repo_id, filename, **hub_kwargs)
    except Exception:  # an id the hub rejects: no pooling file
        return None
    if isinstance(cached, str):
        return cached
    if cached is not None or constants.HF_HUB_OFFLINE or kwargs.get("local_files_only"):
        return None  # known absent, or no network allowed
    try:
        return hf_hub_download(
            repo_id, filename, token=kwargs.get("token"), **hub_kwargs
        )
    except Exception:  # not there, or no network: fall back to the default
        return None


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
