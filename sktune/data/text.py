"""Raw texts: tokenized per batch, padded to the batch's longest text.

A :class:`TextDataset` holds texts (or pairs) and targets and knows how its
batches are made (:class:`TextCollator`, the backbone's tokenizer). It also
counts each text's tokens, once and only when asked (length-grouped
training batches, cache size estimates); :func:`token_lengths` reads them
through the subsets a validation split makes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset, Subset, default_collate

__all__ = [
    "TextCollator",
    "TextDataset",
    "as_texts",
    "is_texts",
    "mean_tokens",
    "token_lengths",
]


def as_texts(texts: Sequence) -> np.ndarray:
    """Validated texts: a 1-D object array of str (or of (str, str) pairs).

    An array rather than a list because skorch indexes its X by type: a list
    it takes for a list of containers (``skorch.utils.check_indexing`` indexes
    the first sample, so an empty first string raised IndexError in every
    scoring callback), an array for an array of samples.
    """
    out = np.empty(len(texts), dtype=object)
    for i, text in enumerate(texts):  # element-wise: pairs stay tuples
        out[i] = text
    return out


def is_texts(X) -> bool:
    """Whether ``X`` holds raw texts: validated ones (:func:`as_texts`) or a list."""
    return isinstance(X, list) or (isinstance(X, np.ndarray) and X.dtype == object)


class TextCollator:
    """Tokenize a batch with the backbone's tokenizer, padded to its longest member.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    max_length : int
        Longer texts (pairs: the longer member first) are truncated.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch):
        texts, ys = zip(*batch, strict=True)
        return self.encode(texts), default_collate(list(ys))

    def encode(self, texts) -> dict:
        """Token ids and attention mask of ``texts`` (strings or pairs)."""
        if isinstance(texts[0], tuple):
            first, second = zip(*texts, strict=True)
            args = (list(first), list(second))
        else:
            args = (list(texts),)
        encoded = self.tokenizer(
            *args,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(encoded)

    def lengths(self, texts: Sequence, chunk: int = 256) -> list[int]:
        """The number of tokens of each text (or pair), as batches will hold them."""
        return [
            n
            for start in range(0, len(texts), chunk)
            for n in self.encode(texts[start : start + chunk])["attention_mask"]
            .sum(1)
            .tolist()
        ]


class TextDataset(Dataset):
    """Raw texts (or pairs) and targets; tokenization happens per batch.

    Parameters
    ----------
    texts : list of str or of (str, str)
    y : array-like, optional
    collator : TextCollator
        Makes the batches (the DataLoader's ``collate_fn``).
    """

    def __init__(self, texts: Sequence, y=None, collator: TextCollator | None = None):
        self.texts = texts
        self.y = y
        self.collate_fn = collator
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        # skorch expects (X, y) pairs; a zero stands in for a missing target.
        return self.texts[i], (self.y[i] if self.y is not None else 0)

    def lengths(self) -> list[int] | None:
        """Tokens per text, counted on first use (None without a collator)."""
        if self.collate_fn is None:
            return None
        if self._lengths is None:
            self._lengths = self.collate_fn.lengths(self.texts)
        return self._lengths


def token_lengths(dataset) -> list[int] | None:
    """Tokens per sample of a dataset that knows them (or a subset of one).

    Datasets of texts, and of cached prefix outputs of texts, have a
    ``lengths()`` method; other datasets give None.
    """
    if isinstance(dataset, Subset):
        lengths = token_lengths(dataset.dataset)
        if lengths is None:
            return None
        return [lengths[i] for i in np.asarray(dataset.indices).tolist()]
    lengths = getattr(dataset, "lengths", None)
    return lengths() if callable(lengths) else None


def mean_tokens(texts: Sequence, collator: TextCollator, sample: int = 256) -> float:
    """The mean token count of (up to ``sample`` evenly spaced of) ``texts``."""
    step = max(1, len(texts) // sample)
    picked = [texts[i] for i in range(0, len(texts), step)][:sample]
    return float(np.mean(collator.lengths(picked))) if picked else 0.0
