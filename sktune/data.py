"""Input handling: arrays, DataFrames, tensors, images (uint8 HWC), text.

Every input is classified once in ``fit`` (:func:`input_kind`) and checked
the same way in ``predict``:

- ``"array"``: numbers, any shape with samples first (tabular, float NCHW
  images, ...), validated by scikit-learn and converted to float32;
- ``"image"``: uint8 ``N x H x W x C`` (or ``N x H x W``) pictures, kept as
  uint8 (4x smaller) and converted per batch by :class:`ImagePreprocess`;
- ``"text"`` / ``"pairs"``: strings or string pairs, tokenized per batch by
  :class:`TextCollator`, padded to the longest member of the batch;
- ``"mapping"``: already tokenized input (a dict of equal-length arrays, e.g.
  from skorch's ``HuggingfacePretrainedTokenizer``), passed to the backbone
  as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.utils import check_consistent_length
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from torch import nn
from torch.utils.data import Dataset, default_collate

__all__ = [
    "ImagePreprocess",
    "InputSpec",
    "RowsDataset",
    "TextCollator",
    "TextDataset",
    "batch_as_is",
    "check_fit_data",
    "check_predict_data",
    "encode_labels",
    "input_kind",
    "input_spec",
    "pad_token_states",
]


def _to_numpy(data):
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    return data


def _is_str(value) -> bool:
    return isinstance(value, (str, np.str_))


def input_kind(X) -> str:
    """Classify ``X`` as "array", "image", "text", "pairs" or "mapping"."""
    if sp.issparse(X):  # a DOK matrix is a Mapping, yet not tokenized input
        return "array"
    if isinstance(X, Mapping):
        return "mapping"
    if hasattr(X, "iloc"):  # pandas
        values = X.to_numpy()
        if values.dtype == object and len(values) and _is_str(values.flat[0]):
            return "pairs" if values.ndim == 2 and values.shape[1] == 2 else "text"
        return "array"
    if isinstance(X, (list, tuple)) and len(X):
        first = X[0]
        if _is_str(first):
            return "text"
        if isinstance(first, (list, tuple)) and len(first) == 2 and _is_str(first[0]):
            return "pairs"
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "US" or (
            X.dtype == object and X.size and _is_str(X.flat[0])
        ):
            return "pairs" if X.ndim == 2 and X.shape[1] == 2 else "text"
        if X.dtype == np.uint8 and (
            X.ndim == 3 or (X.ndim == 4 and X.shape[-1] in (1, 3, 4))
        ):
            return "image"
    return "array"


def _texts(X, kind: str, param: str = "X") -> list:
    """Return ``X`` as a list of str (or of (str, str)), checking every entry."""
    values = X.to_numpy() if hasattr(X, "to_numpy") else X
    if isinstance(values, np.ndarray) and kind == "text" and values.ndim == 2:
        if values.shape[1] != 1:
            raise ValueError(
                f"{param} has {values.shape[1]} text columns; use one column of "
                "texts or two columns of sentence pairs."
            )
        values = values[:, 0]
    out = []
    for i, item in enumerate(values):
        parts = (item,) if kind == "text" else tuple(item)
        if len(parts) != (1 if kind == "text" else 2) or not all(map(_is_str, parts)):
            expected = "a string" if kind == "text" else "a pair of strings"
            raise ValueError(
                f"{param}[{i}] is {item!r}; every sample of text input must be "
                f"{expected} (missing values are not allowed)."
            )
        out.append(str(parts[0]) if kind == "text" else (str(parts[0]), str(parts[1])))
    if not out:
        raise ValueError(
            f"{param} is empty: found 0 samples, a minimum of 1 is required."
        )
    return out


def _mapping(X, param: str = "X") -> dict:
    data = {k: torch.as_tensor(_to_numpy(v)) for k, v in X.items()}
    lengths = {k: len(v) for k, v in data.items()}
    if not data or len(set(lengths.values())) != 1:
        raise ValueError(
            f"{param} is a mapping of inputs whose lengths differ or that is empty: "
            f"{lengths}; every entry needs one row per sample."
        )
    return data


def _check_y(estimator, y, *, regression: bool):
    y = validate_data(
        estimator,
        X="no_validation",
        y=_to_numpy(y),
        multi_output=regression,
        y_numeric=regression,
    )
    if not regression:
        check_classification_targets(y)
    return y


def check_fit_data(estimator, X, y, *, reset: bool, regression: bool):
    """Validate training data; return ``(X, y, kind)`` ready for skorch.

    Arrays go through scikit-learn's ``validate_data`` (which sets or checks
    ``n_features_in_`` and ``feature_names_in_``); text and mappings are
    checked here, their targets with the same scikit-learn helpers.
    """
    kind = input_kind(X)
    if not reset:
        _check_same_kind(estimator, kind)
    if kind in ("array", "image"):
        X, y = validate_data(
            estimator,
            _to_numpy(X),
            _to_numpy(y),
            reset=reset,
            dtype=None if kind == "image" else [np.float32, np.float64],
            allow_nd=True,
            multi_output=regression,
            y_numeric=regression,
        )
        if not regression:
            check_classification_targets(y)
        if kind == "array":
            X = X.astype(np.float32, copy=False)
        return X, y, kind
    X = _texts(X, kind) if kind in ("text", "pairs") else _mapping(X)
    y = _check_y(estimator, y, regression=regression)
    check_consistent_length(next(iter(X.values())) if kind == "mapping" else X, y)
    return X, y, kind


def check_predict_data(estimator, X, kind: str):
    """Validate prediction input against what ``fit`` saw."""
    _check_same_kind(estimator, input_kind(X))
    if kind == "array":
        X = validate_data(
            estimator,
            _to_numpy(X),
            reset=False,
            dtype=[np.float32, np.float64],
            allow_nd=True,
        )
        return X.astype(np.float32, copy=False)
    if kind == "image":
        return validate_data(
            estimator, _to_numpy(X), reset=False, dtype=None, allow_nd=True
        )
    if kind == "mapping":
        return _mapping(X)
    return _texts(X, kind)


_KIND_NAMES = {
    "array": "numeric arrays",
    "image": "uint8 images (N x H x W x C)",
    "text": "strings",
    "pairs": "string pairs",
    "mapping": "a mapping of tokenized inputs",
}


def _check_same_kind(estimator, kind: str) -> None:
    fitted = getattr(estimator, "_input_kind", None)
    if fitted is not None and kind != fitted:
        raise ValueError(
            f"X holds {_KIND_NAMES[kind]}, but {type(estimator).__name__} was fitted "
            f"on {_KIND_NAMES[fitted]}."
        )


def encode_labels(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Return the index of each label of ``y`` in ``classes`` (any order).

    Raises
    ------
    ValueError
        If ``y`` holds a label that is not in ``classes``.
    """
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    pos = np.searchsorted(sorted_classes, y)
    pos = np.clip(pos, 0, len(classes) - 1)
    unknown = sorted_classes[pos] != y
    if np.any(unknown):
        raise ValueError(
            f"y contains labels {np.unique(y[unknown]).tolist()} that are not in "
            f"classes {classes.tolist()}."
        )
    return order[pos].astype(np.int64)


# -- cached rows ----------------------------------------------------------------


class RowsDataset(Dataset):
    """Rows of a tensor (cached prefix outputs) and targets, a batch at a time.

    The ``DataLoader`` hands ``__getitems__`` all indices of a batch (also
    through a ``Subset``, e.g. skorch's validation split): one indexing
    operation per batch instead of a ``__getitem__`` per sample plus a
    collate. The sampler, and so the batch order, is the ``DataLoader``'s
    own. Load it with ``collate_fn=batch_as_is``.

    Rows stored at a lower precision (``cache_dtype``) are cast to ``dtype``
    a batch at a time, so the full-precision copy never exists as a whole.
    """

    def __init__(self, X: torch.Tensor, y=None, dtype: torch.dtype | None = None):
        self.X = X
        self.y = None if y is None else torch.as_tensor(np.asarray(y))
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i):
        rows, ys = self.__getitems__([i])
        return rows[0], ys[0]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        rows = self.X[index].to(self.dtype)
        if self.y is None:
            return rows, torch.zeros(len(index), dtype=torch.long)
        return rows, self.y[index]


def batch_as_is(batch):
    """The collate function of :class:`RowsDataset`: its batches are ready."""
    return batch


# -- text ---------------------------------------------------------------------


class TextDataset(Dataset):
    """Raw texts (or pairs) and targets; tokenization happens per batch."""

    def __init__(self, texts: Sequence, y=None):
        self.texts = texts
        self.y = y

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        # skorch expects (X, y) pairs; a zero stands in for a missing target.
        return self.texts[i], (self.y[i] if self.y is not None else 0)


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
        return self._encode(texts), default_collate(list(ys))

    def _encode(self, texts) -> dict:
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
            for n in self._encode(texts[start : start + chunk])["attention_mask"]
            .sum(1)
            .tolist()
        ]


def pad_token_states(batch, dtype: torch.dtype | None = None):
    """Collate cached ``(T_i, D)`` token states: pad to the batch's longest.

    ``dtype`` is the precision the encoder runs in, when the states were
    stored at a lower one (``cache_dtype``).
    """
    states, ys = zip(*batch, strict=True)
    lengths = [len(s) for s in states]
    width = max(lengths)
    padded = states[0].new_zeros((len(states), width, states[0].shape[-1]), dtype=dtype)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for i, (s, n) in enumerate(zip(states, lengths, strict=True)):
        padded[i, :n] = s
        mask[i, :n] = 1
    return {"inputs_embeds": padded, "attention_mask": mask}, default_collate(list(ys))


# -- images -------------------------------------------------------------------


class ImagePreprocess(nn.Module):
    """uint8 ``N x H x W x C`` images to normalized float ``N x C x H x W``.

    Float tensors pass through unchanged (they are taken as already
    preprocessed). The normalization is the backbone's own (its pretrained
    data config); without one, pixels are only scaled to [0, 1].

    Parameters
    ----------
    mean, std : sequence of float
        Per-channel normalization, in [0, 1] pixel units.
    size : (int, int) or None
        Resize to this height and width (bilinear, antialiased); None keeps
        the images' own size.
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size=None):
        super().__init__()
        # The layout of the output: channels-last when the backbone runs so
        # (set when the estimator builds its network).
        self.memory_format = torch.contiguous_format
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.size = tuple(size) if size is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        # The backbone's layout: standard NCHW strides unless it runs
        # channels-last, which the permuted view of N x H x W x C already is.
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.shape[-1] == 1:
            x = x[..., 0].unsqueeze(1)
        else:
            x = x.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
        x = x.float().div_(255.0)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(
                x, size=self.size, mode="bilinear", antialias=True, align_corners=False
            )
        mean, std = self.mean[:, : x.shape[1]], self.std[:, : x.shape[1]]
        return (x - mean) / std


# -- what the backbone expects --------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """How a backbone wants its input, from its pretrained configuration.

    Attributes
    ----------
    tokenizer : transformers tokenizer or None
        Set for text backbones.
    pooling : {"mean", "cls"} or None
        The backbone's default pooling of token sequences.
    mean, std : tuple of float or None
        Image normalization, in [0, 1] pixel units.
    input_size : tuple (C, H, W) or None
        The pretrained input size of an image backbone.
    """

    tokenizer: object = None
    pooling: str | None = None
    mean: tuple | None = None
    std: tuple | None = None
    input_size: tuple | None = None


def input_spec(backbone) -> InputSpec:
    """Read the input expectations of a :class:`sktune.Backbone`."""
    config = backbone.data_config() or {}
    return InputSpec(
        tokenizer=backbone.tokenizer(),
        pooling=backbone.default_pooling(),
        mean=tuple(config["mean"]) if "mean" in config else None,
        std=tuple(config["std"]) if "std" in config else None,
        input_size=tuple(config["input_size"]) if "input_size" in config else None,
    )
