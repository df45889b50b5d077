"""The DataLoaders of a fit and of inference.

Unlike skorch's, training batches are shuffled unless told otherwise (and
grouped by length with ``group_by_length=True``); an inference loader draws
its base seed from a private generator, so predicting never advances the
global torch RNG. Texts and cached rows bring their own collate function.
Short inference batches are padded to the full batch size
(:func:`pad_batch`), so a prediction never depends on which other samples
share its batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import Subset

from .photos import PhotoDataset, photo_workers
from .text import TextDataset, token_lengths

__all__ = ["length_sampler", "make_loader", "pad_batch"]


def make_loader(
    dataset, *, iterator, kwargs: dict, training: bool, group_by_length, collator
):
    """``iterator(dataset, **kwargs)`` with sktune's defaults filled in.

    Parameters
    ----------
    dataset : Dataset
    iterator : type
        ``iterator_train`` or ``iterator_valid`` (a DataLoader class).
    kwargs : dict
        The estimator's ``iterator_*__`` parameters, with ``batch_size``.
    training : bool
        Training batches are shuffled (or grouped by length); inference
        batches use a private generator.
    group_by_length : bool
    collator : TextCollator or None
        The collate function of a TextDataset.
    """
    if training:
        kwargs = {"shuffle": True, **kwargs}
    else:
        kwargs = {"generator": torch.Generator(), **kwargs}
    if kwargs["batch_size"] == -1:
        kwargs["batch_size"] = len(dataset)
    if training and group_by_length and kwargs.get("shuffle", False):
        if "sampler" not in kwargs and "batch_sampler" not in kwargs:
            del kwargs["shuffle"]
            kwargs["sampler"] = length_sampler(dataset, kwargs["batch_size"])
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    if isinstance(base, PhotoDataset) and base.decodes_on_the_fly:
        # Photos beyond the decoded budget are decoded as batches are drawn.
        kwargs.setdefault("num_workers", photo_workers(len(dataset)))
    collate = getattr(base, "collate_fn", None)
    if collate is None and isinstance(base, TextDataset):
        collate = collator
    if collate is not None:
        kwargs.setdefault("collate_fn", collate)
    return iterator(dataset, **kwargs)


def length_sampler(dataset, batch_size: int):
    """Shuffled, then sorted by length within mega-batches of up to 50
    batches (transformers' ``LengthGroupedSampler``): a batch pads to
    texts of about its own length."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = token_lengths(dataset)
    if lengths is None:
        raise ValueError(
            "group_by_length=True groups the samples passed to fit by their "
            f"token counts, but the training data set ({type(dataset).__name__}) "
            "is not the fit data or a subset of it: use a train_split that "
            "returns subsets (like skorch's ValidSplit), or group_by_length=False."
        )
    return LengthGroupedSampler(batch_size, lengths=lengths)


def pad_batch(xb, size: int):
    """Pad a short batch to ``size`` samples by repeating its first.

    Tensor batches and batches of cached rows held in one tensor are
    padded; others (tokenized text, whose width varies anyway) are
    returned as they are, as is any batch when ``size`` is -1.
    """
    if isinstance(xb, Mapping) and isinstance(xb.get("cached"), torch.Tensor):
        padded = pad_batch(xb["cached"], size)
        return xb if padded is xb["cached"] else {**xb, "cached": padded}
    if not isinstance(xb, torch.Tensor) or size == -1 or len(xb) >= size:
        return xb
    return torch.cat([xb, xb[:1].expand(size - len(xb), *xb.shape[1:])])
