"""Hugging Face transformers encoders: the family, pooling, blocks, cut.

Loading (``AutoModel``, the tokenizer, the default pooling) lives in
:mod:`sktune.families.hf_loading`; its functions are importable from here
too. transformers is imported inside the functions that need it, never at
import time.

- :class:`HFEncoder` wraps an encoder (``AutoModel``: BERT, MiniLM,
  RoBERTa, DistilBERT, ...) so that it returns one feature vector per text,
  pooled over the tokens the attention mask keeps; a bare transformers model
  given as a backbone is wrapped in it. The model stays reachable as
  ``encoder.model``.
- Block map: the embeddings, then each encoder layer (``encoder.layer``,
  ``transformer.layer`` or ``encoder.layers``); the pooler and anything else
  of the base model join the last block; task heads outside the base model
  (bare, inside a task model, or inside an ``HFEncoder``) are in no block.
- Cut (:class:`TokenSplit`): after the embeddings and the frozen layers; the
  cached value is each text's token states, re-padded per batch.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._modules import module_name
from ..cache.split import NoCache, Split
from ..heads import pool_tokens
from ._base import Family, Loaded, loaded
from .hf_loading import default_pooling, is_local, load_model, load_tokenizer
from .torchvision import regex_block_of

__all__ = [
    "HFEncoder",
    "HFFamily",
    "TokenSplit",
    "default_pooling",
    "is_local",
    "load_model",
    "load_tokenizer",
]

# Where encoders keep their list of transformer layers.
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers")


class HFFamily(Family):
    name = "hf"
    spec_prefix = "hf"
    spec_example = "sentence-transformers/all-MiniLM-L6-v2"

    def backbone_lr(self, module):
        # The low end of the range transformers are tuned in: over the
        # default 10 epochs (head at 1e-3), all-MiniLM-L6-v2 on 1,000 review
        # sentences scored 0.922 / 0.916 (two seeds) against 0.909 / 0.913
        # at 3e-5.
        return 1e-5

    def matches(self, module):
        if isinstance(module, HFEncoder):
            return True
        transformers = loaded("transformers")
        return transformers is not None and isinstance(
            module, transformers.PreTrainedModel
        )

    def load(self, name, pretrained, kwargs, family_of):
        if is_local(name):
            name = str(Path(name).expanduser())
        model = load_model(name, pretrained=pretrained, **kwargs)
        pooling = default_pooling(name, **kwargs)
        return Loaded(
            HFEncoder(model, pooling=pooling, source=name),
            text_source=name,
            pooling=pooling,
        )

    def fetches(self, name, pretrained):
        return not is_local(name)

    def block_of(self, module):
        base, prefix = _base_model(module)
        if base is None or not isinstance(getattr(base, "embeddings", None), nn.Module):
            return None
        path = layers_path(base)
        if path is None:
            return None
        block_of = regex_block_of(
            [(r"embeddings(?:\.|$)", 0), (re.escape(path) + r"\.(\d+)(?:\.|$)", 1)],
            classifier=None,
            rest=len(base.get_submodule(path)),
        )

        def prefixed(name: str) -> int | None:
            # Task heads outside the base model are in no block.
            if not name.startswith(prefix):
                return None
            return block_of(name[len(prefix) :])

        return prefixed

    def adapter_targets(self, module, kind):
        base, prefix = _base_model(module)
        path = None if base is None else layers_path(base)
        if path is None:
            return None
        # The attention and feed-forward projections: the layers' linears
        # (not the pooler, whose output the pooled features do not use).
        inside = prefix + path + "."
        linears = [
            n
            for n, m in module.named_modules()
            if n.startswith(inside) and isinstance(m, nn.Linear)
        ]
        if kind != "ia3":
            return linears, []
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
        )

        # (IA)^3 scales keys, values and the feed-forward activations: PEFT
        # names them per architecture.
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        if model_type not in TARGETS:
            return linears, []

        def named(suffixes) -> list[str]:
            return [n for n in linears if any(n.endswith("." + s) for s in suffixes)]

        return named(TARGETS[model_type]), named(FEEDFORWARD.get(model_type, ()))

    def plan_cut(self, backbone, static, blocks, order):
        if not isinstance(backbone, HFEncoder) or layers_path(backbone.model) is None:
            return NoCache(
                "the backbone takes keyword inputs and is no known text encoder, so "
                "only freeze='all' is cached"
            )
        n_static = 0
        while n_static < len(blocks) and all(
            static.module(m) for m in blocks[n_static].modules
        ):
            n_static += 1
        if n_static == 0:
            return NoCache("no frozen block at the input side")
        return TokenSplit(n_static - 1)  # block 0 is the embeddings

    def wrap(self, module):
        """A bare transformers model, wrapped to return pooled features."""
        if isinstance(module, HFEncoder):
            return module
        source = getattr(module, "name_or_path", None) or None
        pooling = default_pooling(source) if source and is_local(source) else "mean"
        return HFEncoder(module, pooling=pooling, source=source)


def layers_path(model: nn.Module) -> str | None:
    """Where a Hugging Face model keeps its list of transformer layers, if it does."""
    if not isinstance(getattr(model, "embeddings", None), nn.Module):
        return None
    for path in _LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers):
            return path
    return None


def _base_model(module: nn.Module) -> tuple[nn.Module | None, str]:
    """The Hugging Face base model inside ``module`` and its name prefix."""
    prefix = ""
    if isinstance(module, HFEncoder):
        module, prefix = module.model, "model."
    transformers = loaded("transformers")
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return None, ""
    base = module.base_model
    if base is not module:
        name = module_name(module, base)
        if not name:
            return None, ""
        prefix += name + "."
    return base, prefix


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

    Examples
    --------
    >>> import transformers
    >>> from sktune.families.hf import HFEncoder
    >>> config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                                  num_attention_heads=2, intermediate_size=37)
    >>> encoder = HFEncoder(transformers.BertModel(config))
    >>> encoder(input_ids=torch.tensor([[2, 5, 3]])).shape
    torch.Size([1, 32])
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

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = _last_hidden(
            self.model(**self._inputs(input_ids, attention_mask, token_type_ids))
        )
        return pool_tokens(hidden, attention_mask, self.pooling)

    def _inputs(self, input_ids, attention_mask, token_type_ids) -> dict:
        kwargs = {
            "input_ids": input_ids.long(),
            "attention_mask": attention_mask.long(),
        }
        if token_type_ids is not None and self.takes_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids.long()
        return kwargs

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, source={self.source!r}"

    # -- split at a layer, for the frozen-prefix cache ------------------------

    def prefix_states(
        self,
        n_layers: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token states ``(N, T, D)`` after the embeddings and ``n_layers`` layers."""
        # The model cut after n_layers layers: its last hidden state is the
        # input of layer n_layers (no encoder of this family normalizes after
        # its layers; the cut is verified against the full model).
        view = self._view(0, n_layers, from_states=False)
        return _last_hidden(
            view(**self._inputs(input_ids, attention_mask, token_type_ids))
        )

    def suffix_features(
        self, n_layers: int, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pooled features from token states after ``n_layers`` layers."""
        view = self._view(n_layers, None, from_states=True)
        hidden = _last_hidden(
            view(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
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
        path = layers_path(self.model)
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


@dataclass(frozen=True)
class TokenSplit(Split):
    """A text encoder cut after its embeddings and first ``n_layers`` layers.

    Rows are one ``(T_i, D)`` tensor of token states per text, without
    padding; a batch is re-padded to its longest text (tokenizers pad on the
    right, so a text's tokens come first).
    """

    n_layers: int

    ragged = True
    what = "running the text encoder from cached token states"
    tolerance = (1e-4, 1e-5)

    def prefix(self, net, X=None, **inputs):
        return net.backbone.prefix_states(self.n_layers, **inputs)

    def rows(self, outputs, inputs):
        lengths = inputs["attention_mask"].sum(1).tolist()
        return [outputs[i, :n] for i, n in enumerate(lengths)]

    def stack(self, rows):
        return list(rows)

    def gather(self, rows, indices, dtype):
        states = [rows[i] for i in indices]
        lengths = [len(s) for s in states]
        width = max(lengths)
        padded = states[0].new_zeros(
            (len(states), width, states[0].shape[-1]), dtype=dtype
        )
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for i, (s, n) in enumerate(zip(states, lengths, strict=True)):
            padded[i, :n] = s
            mask[i, :n] = 1
        return padded, mask

    def suffix(self, net, cached):
        states, mask = cached
        return net.backbone.suffix_features(self.n_layers, states, mask)

    def key(self):
        return ("tokens", self.n_layers)


def _last_hidden(output) -> torch.Tensor:
    return output["last_hidden_state"] if isinstance(output, Mapping) else output[0]


def _shallow(module: nn.Module) -> nn.Module:
    copied = copy.copy(module)
    copied._modules = dict(module._modules)
    return copied


class _PassEmbeddings(nn.Module):
    """Stands in for the embeddings: the input is already token states."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        if inputs_embeds is None and len(args) > 1:
            # DistilBERT calls embeddings(input_ids, inputs_embeds).
            inputs_embeds = args[1]
        return inputs_embeds


def _accepts(model: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
