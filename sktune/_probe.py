"""What the backbone makes of the input, before anything is planned on it.

The input checks that need the backbone (a tokenizer for strings, the
channels its pretrained preprocessing or first layer takes, the width of its
first linear layer; errors describe X as it was given), the text length, one
synthetic sample through the training copy (:func:`probe`: the feature
width, the order of its children, lazy layers materialized) and the
channels-last decision taken on that sample. Used by
:func:`sktune._builder.build_network`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from skorch.utils import to_device
from torch import nn

from ._modules import eval_mode
from .blocks import record_child_order
from .data.images import use_channels_last
from .data.inputs import FittedInput
from .data.text import TextCollator
from .heads import pool_features

__all__ = [
    "check_input_fits",
    "example_batch",
    "plan_layout",
    "probe",
    "resolve_max_length",
]


def resolve_max_length(max_length, tokenizer) -> int:
    """Text truncation: ``max_length``, else the tokenizer's limit up to 512."""
    if max_length is not None:
        return int(max_length)
    model_max = getattr(tokenizer, "model_max_length", None) or 512
    return min(int(model_max), 512)


def check_input_fits(fitted: FittedInput, tokenizer, data_config) -> None:
    kind = fitted.kind
    if kind in ("text", "pairs") and tokenizer is None:
        raise ValueError(
            "X holds strings, but the backbone has no tokenizer: use a Hugging Face "
            "backbone ('hf:ID_OR_DIR' or a sktune.Backbone of one), or turn the "
            "text into numbers first."
        )
    if kind in ("array", "image", "photos") and tokenizer is not None:
        raise ValueError(
            "The backbone is a text model, but X holds numbers or images: pass "
            "strings (or string pairs), or a mapping of tokenized inputs "
            "(input_ids=..., attention_mask=...)."
        )
    expected = (data_config or {}).get("input_size", (None,))[0]
    if expected is None:
        return
    if kind in ("image", "photos") or (kind == "array" and len(fitted.shape) == 3):
        message = _channel_mismatch(
            fitted.shape,
            fitted.dtype,
            kind in ("image", "photos"),
            expected,
            "the backbone",
        )
        if message is not None:
            raise ValueError(message)


def _channel_mismatch(
    shape, dtype, channels_last: bool, takes: int, taker: str
) -> str | None:
    """Say so when images have other than ``takes`` channels, describing them
    as given: one sample's ``shape`` and ``dtype``, uint8 ``N x H x W (x C)``
    (``channels_last``) or float ``N x C x H x W``."""
    if channels_last:
        channels = shape[-1] if len(shape) == 3 else 1
        layout = "N x H x W x C" if len(shape) == 3 else "N x H x W"
    else:
        channels, layout = shape[0], "N x C x H x W"
    if channels == takes:
        return None
    hint = ""
    if channels_last and channels == 1 and takes == 3:
        gray = "X[..., None]" if len(shape) == 2 else "X"
        hint = f" Repeat the gray channel, e.g. np.repeat({gray}, 3, axis=-1)."
    elif channels_last and channels == 4 and takes == 3:
        hint = " Drop the alpha channel with X[..., :3]."
    elif channels_last and takes == 1:
        hint = " Convert them to one channel, e.g. X.mean(axis=-1).astype(np.uint8)."
    elif channels_last and channels > takes:
        hint = (
            f" Keep {takes} of them (e.g. X[..., :{takes}]) or combine them into "
            f"{takes}, or use a backbone whose first layer takes {channels}."
        )
    elif not channels_last and shape[-1] == takes:
        hint = " If X is N x H x W x C, transpose it: X.transpose(0, 3, 1, 2)."
    sample = " x ".join(map(str, shape))
    return (
        f"X holds {channels}-channel {dtype} images ({layout}; one sample is "
        f"{sample}), but {taker} expects {takes} channel{'s' * (takes != 1)}.{hint}"
    )


def example_batch(fitted: FittedInput, tokenizer, max_length, device):
    """A batch of one synthetic sample, as the data loader would make it."""
    example = fitted.example()
    if fitted.kind in ("text", "pairs"):
        batch = TextCollator(tokenizer, max_length).encode(example)
    elif isinstance(example, Mapping):
        batch = dict(example)
    else:
        batch = torch.as_tensor(example)
    return to_device(batch, device) if device is not None else batch


def probe(backbone: nn.Module, preprocess, batch):
    """Run one batch through ``backbone`` in eval mode.

    Returns the pooled features (their width sizes the head) and the order
    in which the top-level children ran (for the block map). Lazy modules
    are materialized here, before the optimizer sees their parameters.
    """
    order, remove = record_child_order(backbone)
    shape = (
        {k: tuple(v.shape) for k, v in batch.items()}
        if isinstance(batch, Mapping)
        else tuple(batch.shape)
    )
    try:
        with torch.no_grad(), eval_mode(backbone):
            if isinstance(batch, Mapping):
                out = backbone(**batch)
            else:
                out = backbone(preprocess(batch) if preprocess is not None else batch)
            features = pool_features(out)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        images = preprocess is not None and batch.dtype == torch.uint8
        raise ValueError(
            _first_layer_mismatch(backbone, shape, images=images)
            or f"The backbone could not process an input of shape {shape} (one "
            f"sample of X): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        remove()
    return features, order


def _first_layer_mismatch(
    backbone: nn.Module, shape, *, images: bool = False
) -> str | None:
    """Say so when X's width (features, or channels of images) is not what
    the backbone's first layer takes (``images``: uint8 ``N x H x W (x C)``,
    else float ``N x C x H x W``)."""
    if not isinstance(shape, tuple) or len(shape) not in ((3, 4) if images else (2, 4)):
        return None
    kinds = (nn.Linear,) if len(shape) == 2 else (nn.Conv2d,)
    first = next(
        ((n, m) for n, m in backbone.named_modules() if isinstance(m, kinds)), None
    )
    if first is None:
        return None
    name, layer = first
    if len(shape) > 2:
        return _channel_mismatch(
            shape[1:],
            "uint8" if images else "float32",
            images,
            layer.in_channels,
            f"the backbone's first layer ({name}: {layer})",
        )
    if layer.in_features == shape[1]:
        return None
    return (
        f"X has {shape[1]} features, but the backbone's first layer ({name}: "
        f"{layer}) takes {layer.in_features}: pass X with {layer.in_features} "
        "features, or a backbone built for this data."
    )


def plan_layout(setting, backbone, preprocess, example, features) -> bool:
    """Whether the backbone runs channels-last (see ``channels_last``)."""
    if setting is False:
        return False
    if isinstance(example, Mapping):
        reason = "the input is text"
    else:
        x = preprocess(example) if preprocess is not None else example
        reason = use_channels_last(backbone, x, features)
    if reason is not None and setting is True:
        raise ValueError(f"channels_last=True, but {reason}.")
    return reason is None
