"""Hugging Face transformers encoders as pooled-feature backbones.

A leaf module: transformers and huggingface_hub are imported inside the
functions that need them, never at import time.

:class:`HFEncoder` wraps an encoder (``AutoModel``: BERT, MiniLM, RoBERTa,
DistilBERT, ...) so that it returns one feature vector per text, pooled over
the tokens the attention mask keeps. The wrapped model stays reachable as
``encoder.model`` so the block map (:mod:`sktune.blocks`) can split it into
embeddings and layers.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "POOLINGS",
    "HFEncoder",
    "default_pooling",
    "load_model",
    "load_tokenizer",
    "pack_tokens",
]

POOLINGS = ("mean", "cls", "max")

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


class HFEncoder(nn.Module):
    """A Hugging Face encoder that returns pooled features ``(N, D)``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The encoder; its output must have ``last_hidden_state``.
    pooling : {"mean", "cls", "max"}, default="mean"
        How token states become one vector per text: ``"mean"`` averages the
        tokens the attention mask keeps, ``"cls"`` takes the first token,
        ``"max"`` the element-wise maximum over kept tokens. An attribute: set
        it on a training copy to change it.
    source : str, optional
        Where the model came from (hub id or local directory); the tokenizer
        is loaded from the same place.

    Notes
    -----
    ``forward`` also accepts the packed layout of :func:`pack_tokens`: one
    tensor ``(N, k, T)`` stacking ``input_ids``, ``attention_mask`` and
    optionally ``token_type_ids``. Floating-point ids (a packed array that
    went through float32 validation) are rounded back to integers; float32
    holds every id below 2**24 exactly.
    """

    def __init__(
        self, model: nn.Module, pooling: str = "mean", source: str | None = None
    ):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.source = source
        # DistilBERT and RoBERTa-style models without segments take no
        # token_type_ids; checked once, not per batch.
        self.takes_token_type_ids = _accepts(model, "token_type_ids")

    @property
    def feature_dim(self) -> int | None:
        """Width of the pooled features (``config.hidden_size``), if known."""
        config = getattr(self.model, "config", None)
        for attr in ("hidden_size", "dim", "d_model"):
            if isinstance(getattr(config, attr, None), int):
                return getattr(config, attr)
        return None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} is not a known pooling; use one of "
                f"{list(POOLINGS)}."
            )
        if input_ids.ndim == 3 and attention_mask is None:
            input_ids, attention_mask, token_type_ids = _unpack(input_ids)
        input_ids = _as_ids(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = _as_ids(attention_mask)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.takes_token_type_ids:
            kwargs["token_type_ids"] = _as_ids(token_type_ids)
        output = self.model(**kwargs)
        hidden = (
            output["last_hidden_state"] if isinstance(output, Mapping) else output[0]
        )
        return pool_tokens(hidden, attention_mask, self.pooling)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, source={self.source!r}"

    # -- split at a layer, for the frozen-prefix cache ------------------------

    def layers_path(self) -> str | None:
        """Where the model keeps its list of transformer layers, if it does."""
        if not isinstance(getattr(self.model, "embeddings", None), nn.Module):
            return None
        for path in _LAYER_PATHS:
            try:
                layers = self.model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(layers, nn.ModuleList):
                return path
        return None

    def prefix_states(
        self,
        n_layers: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token states ``(N, T, D)`` after the embeddings and ``n_layers`` layers."""
        kwargs = {
            "input_ids": _as_ids(input_ids),
            "attention_mask": _as_ids(attention_mask),
        }
        if token_type_ids is not None and self.takes_token_type_ids:
            kwargs["token_type_ids"] = _as_ids(token_type_ids)
        # The model cut after n_layers layers: its last hidden state is the
        # input of layer n_layers (no encoder of this family normalizes after
        # its layers; the cache verifies the split against the full model).
        output = self._view(0, n_layers, from_states=False)(**kwargs)
        return output["last_hidden_state"] if isinstance(output, Mapping) else output[0]

    def suffix_features(
        self, n_layers: int, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pooled features from token states after ``n_layers`` layers."""
        output = self._view(n_layers, None, from_states=True)(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        hidden = (
            output["last_hidden_state"] if isinstance(output, Mapping) else output[0]
        )
        return pool_tokens(hidden, attention_mask, self.pooling)

    def _view(self, start: int, stop: int | None, *, from_states: bool) -> nn.Module:
        """The model running only layers ``[start:stop]``, sharing its weights.

        A shallow copy of the model whose layer list is sliced; with
        ``from_states``, its embeddings module hands ``inputs_embeds`` (the
        cached token states) through unchanged. The model's own forward still
        builds the attention mask, so this works across encoder families.
        """
        # Built per call (two shallow copies): a cached view would keep the
        # train/eval flags of the moment it was built.
        path = self.layers_path()
        parent_path, attr = path.rsplit(".", 1)
        view = _shallow(self.model)
        parent = _shallow(self.model.get_submodule(parent_path))
        parent._modules[attr] = nn.ModuleList(
            list(self.model.get_submodule(path))[start:stop]
        )
        view._modules[parent_path] = parent
        if from_states:
            view._modules["embeddings"] = _PassEmbeddings()
        return view


_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers")


def _shallow(module: nn.Module) -> nn.Module:
    copied = copy.copy(module)
    copied._modules = dict(module._modules)
    return copied


class _PassEmbeddings(nn.Module):
    """Stands in for the embeddings: the input is already token states."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        if inputs_embeds is None and len(args) > 1:
            inputs_embeds = args[
                1
            ]  # DistilBERT calls embeddings(input_ids, inputs_embeds)
        return inputs_embeds


def pool_tokens(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """Pool token states ``(N, T, D)`` into ``(N, D)`` over the kept tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "max":
        floor = torch.finfo(hidden.dtype).min
        return hidden.masked_fill(mask == 0, floor).amax(dim=1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pack_tokens(encoding: Mapping) -> np.ndarray:
    """Stack a tokenizer's padded output into one int64 array ``(N, k, T)``.

    The rows are ``input_ids``, ``attention_mask`` and, when present,
    ``token_type_ids``: one array that scikit-learn and skorch can index,
    split and batch like any other ``X``. :class:`HFEncoder` unpacks it.
    """
    names = ["input_ids", "attention_mask"]
    if encoding.get("token_type_ids") is not None:
        names.append("token_type_ids")
    missing = [n for n in names[:2] if encoding.get(n) is None]
    if missing:
        raise ValueError(
            f"The tokenizer output has no {missing}; call the tokenizer with "
            "padding=True and return_attention_mask=True."
        )
    return np.stack([np.asarray(encoding[n], dtype=np.int64) for n in names], axis=1)


def _unpack(packed: torch.Tensor):
    if packed.shape[1] not in (2, 3):
        raise ValueError(
            "A packed text input has shape (N, k, T) with k=2 (input_ids, "
            "attention_mask) or k=3 (and token_type_ids); got shape "
            f"{tuple(packed.shape)}."
        )
    token_type_ids = packed[:, 2] if packed.shape[1] == 3 else None
    return packed[:, 0], packed[:, 1], token_type_ids


def _as_ids(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point():
        tensor = tensor.round()
    return tensor.long()


def _accepts(model: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# -- loading ---------------------------------------------------------------


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` is an existing local directory (not a hub id)."""
    return Path(source).expanduser().is_dir()


def load_model(source: str, *, pretrained: bool = True, **kwargs) -> nn.Module:
    """Load a transformers ``AutoModel`` from a hub id or a local directory.

    ``pretrained=False`` builds the architecture from its config with random
    weights. ``trust_remote_code`` stays False unless passed in ``kwargs``.
    Errors from transformers (missing files, no network) propagate.
    """
    from transformers import AutoConfig, AutoModel

    kwargs = {"trust_remote_code": False, **kwargs}
    if pretrained:
        return AutoModel.from_pretrained(source, **kwargs)
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
