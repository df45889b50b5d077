"""Task heads and the pooling of backbone outputs into feature vectors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "HEADS",
    "HEAD_ACCEPTED",
    "POOLINGS",
    "build_head",
    "head_hint",
    "is_head",
    "pool_features",
    "pool_tokens",
]

HEADS = ("linear", "mlp")
HEAD_ACCEPTED = (
    f"one of {list(HEADS)} or a callable (in_features, out_features) -> nn.Module"
)


def is_head(head) -> bool:
    """Whether ``head`` is a valid ``head`` parameter (see :func:`build_head`)."""
    if isinstance(head, str):
        return head in HEADS
    return callable(head) and not isinstance(head, nn.Module)


def head_hint(head) -> str:
    """Why a value is no head, beyond what is accepted."""
    if isinstance(head, nn.Module):
        return "A module instance would be shared between fits; pass a factory instead."
    return ""


def build_head(head, in_features: int, out_features: int) -> nn.Module:
    """Build a fresh head mapping ``in_features`` to ``out_features``.

    Parameters
    ----------
    head : "linear", "mlp" or callable
        ``"linear"``: one ``nn.Linear``. ``"mlp"``: Linear, GELU, Dropout(0.1),
        Linear, with a hidden width of ``min(in_features, 512)``. A callable is
        called as ``head(in_features, out_features)`` and must return an
        ``nn.Module``. Validated beforehand with :func:`is_head`.
    in_features, out_features : int
        The backbone's feature width and the number of outputs.

    Returns
    -------
    nn.Module
        The head, with freshly drawn weights.
    """
    if head == "linear":
        return nn.Linear(in_features, out_features)
    if head == "mlp":
        hidden = min(in_features, 512)
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, out_features),
        )
    module = head(in_features, out_features)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"head factory {head!r} returned {type(module).__name__}, expected an "
            "nn.Module."
        )
    return module


POOLINGS = ("mean", "cls", "max")


def pool_tokens(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str
) -> torch.Tensor:
    """Pool token states ``(N, T, D)`` into ``(N, D)``: their mean, maximum
    or first (``"cls"``) token, over the tokens ``attention_mask`` keeps
    (all of them without a mask)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling not in ("mean", "max"):  # no silent fallback to a default
        raise ValueError(
            f"pooling={pooling!r} is not valid; use one of {list(POOLINGS)}."
        )
    if attention_mask is None:
        return hidden.amax(dim=1) if pooling == "max" else hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "max":
        floor = torch.finfo(hidden.dtype).min
        return hidden.masked_fill(mask == 0, floor).amax(dim=1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pool_features(output, pooling: str | None = None) -> torch.Tensor:
    """Reduce a backbone output to one feature vector per sample.

    - ``(N, D)`` tensors are used as they are;
    - ``(N, T, D)`` sequences are averaged over tokens (``pooling="mean"``, the
      default), reduced to their first token (``pooling="cls"``) or to their
      maximum (``pooling="max"``);
    - ``(N, C, H, W, ...)`` feature maps are averaged over the spatial axes;
    - tuples and lists use their first element; mappings (model outputs) their
      ``last_hidden_state``.
    """
    if isinstance(output, Mapping):
        if "last_hidden_state" not in output:
            raise TypeError(
                "The backbone returned a mapping without 'last_hidden_state' "
                f"(keys: {list(output)}); cannot pool it into features."
            )
        output = output["last_hidden_state"]
    elif isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"The backbone returned {type(output).__name__}; expected a tensor, a "
            "tuple of tensors or a model output with 'last_hidden_state'."
        )
    if output.ndim == 2:
        return output
    if output.ndim == 3:
        return pool_tokens(output, None, pooling or "mean")
    if output.ndim > 3:
        return output.mean(dim=tuple(range(2, output.ndim)))
    raise ValueError(
        f"The backbone returned a tensor of shape {tuple(output.shape)}; expected "
        "one row of features per sample."
    )
