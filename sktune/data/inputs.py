"""Input kinds, their checks, and what fit records of them.

Every input is classified once in ``fit`` (:func:`input_kind`) and checked
the same way in ``predict``:

- ``"array"``: numbers, any shape with samples first (tabular, float NCHW
  images, ...), validated by scikit-learn and converted to float32;
- ``"image"``: uint8 ``N x H x W x C`` (or ``N x H x W``) pictures, kept as
  uint8 (4x smaller) and converted per batch by :class:`sktune.data.images.ImagePreprocess`;
  integer images of another dtype (uint16, ...) are refused with the way to
  convert them;
- ``"text"`` / ``"pairs"``: strings or string pairs, tokenized per batch by
  :class:`sktune.data.text.TextCollator`, padded to the longest member of the batch;
  validated into a 1-D object array (see :func:`sktune.data.text.as_texts`);
- ``"photos"``: image files, PIL images or uint8 pictures of any size (see
  :mod:`sktune.data.photos`), decoded at the backbone's working size into
  uint8 batches; strings are paths for an image backbone, texts for a text
  backbone;
- ``"mapping"``: already tokenized input (a dict of equal-length arrays, e.g.
  from skorch's ``HuggingfacePretrainedTokenizer``), passed to the backbone
  as keyword arguments.

A fitted estimator keeps a :class:`FittedInput` (the kind and one sample's
shape and dtype), never a sample: the network is planned on a synthetic
sample of that spec (:meth:`FittedInput.example`).
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils import check_consistent_length
from sklearn.utils.multiclass import check_classification_targets, is_multilabel
from sklearn.utils.validation import check_array, validate_data

from .photos import Photos, PhotoSpec, is_photo
from .text import as_texts

__all__ = [
    "KIND_NAMES",
    "FittedInput",
    "check_fit_data",
    "check_predict_data",
    "encode_labels",
    "input_kind",
]


@dataclass(frozen=True)
class FittedInput:
    """What ``fit`` saw of X, without any of its samples.

    Enough to rebuild the network (and to plan it) with no training data:
    the input kind, and one sample's shape and dtype.

    Attributes
    ----------
    kind : {"array", "image", "photos", "text", "pairs", "mapping"}
    shape : tuple of int
        One sample's shape (arrays and images; photos: as decoded).
    dtype : str
        The dtype of array and image samples.
    photo : tuple
        For photos: how each is decoded (:class:`~sktune.data.photos.PhotoSpec`
        as a tuple), never a path.
    fields : tuple of (str, str, tuple)
        For a mapping of tokenized inputs: each key, its dtype and one
        sample's shape.
    """

    kind: str
    shape: tuple[int, ...] = ()
    dtype: str = "float32"
    fields: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    photo: tuple = ()

    @classmethod
    def of_photos(cls, spec: PhotoSpec) -> FittedInput:
        """The spec of photos decoded by ``spec``: uint8 images to the network."""
        return cls("photos", spec.shape, "uint8", photo=spec.as_tuple())

    @property
    def photo_spec(self) -> PhotoSpec:
        """How photos are decoded (photo input only)."""
        size, *rest = self.photo
        return PhotoSpec(tuple(size), *rest)

    @classmethod
    def of(cls, X, kind: str) -> FittedInput:
        """The spec of validated input ``X`` of kind ``kind``."""
        if kind in ("array", "image"):
            return cls(kind, tuple(int(d) for d in X.shape[1:]), str(X.dtype))
        if kind == "mapping":
            return cls(
                kind,
                fields=tuple(
                    (
                        key,
                        str(value.dtype).removeprefix("torch."),
                        tuple(value.shape[1:]),
                    )
                    for key, value in X.items()
                ),
            )
        return cls(kind)

    def example(self):
        """A synthetic one-sample X of this spec, the same every time.

        Arrays get uniform values in [0, 1) (valid also as indices once
        truncated), images random pixels, texts a fixed sentence, tokenized
        mappings zeros (token 0 is a valid id) with a full attention mask.
        """
        rng = np.random.default_rng(0)
        if self.kind == "array":
            return rng.random((1, *self.shape)).astype(self.dtype)
        if self.kind in ("image", "photos"):
            return rng.integers(0, 256, size=(1, *self.shape), dtype=np.uint8)
        if self.kind == "text":
            return [_EXAMPLE_TEXT[0]]
        if self.kind == "pairs":
            return [_EXAMPLE_TEXT]
        return {
            key: (torch.ones if key == "attention_mask" else torch.zeros)(
                (1, *shape), dtype=getattr(torch, dtype)
            )
            for key, dtype, shape in self.fields
        }


_EXAMPLE_TEXT = ("A short sentence to plan the network on.", "And a second one.")


def _to_numpy(data):
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    return data


def _is_str(value) -> bool:
    return isinstance(value, (str, np.str_))


def input_kind(X, *, strings: str = "text") -> str:
    """Classify ``X`` as "array", "image", "photos", "text", "pairs" or "mapping".

    ``strings``: what a sequence of strings is, "text" (a text backbone) or
    "photos" (paths, for an image backbone).
    """
    if sp.issparse(X):  # a DOK matrix is a Mapping, yet not tokenized input
        return "array"
    if isinstance(X, Mapping):
        return "mapping"
    if hasattr(X, "iloc"):  # pandas
        values = X.to_numpy()
        if values.dtype == object and len(values) and _is_photos(values, strings):
            return "photos"
        if values.dtype == object and len(values) and _is_str(values.flat[0]):
            return "pairs" if values.ndim == 2 and values.shape[1] == 2 else "text"
        return "array"
    if isinstance(X, (list, tuple)) and len(X):
        first = X[0]
        if _is_photos(X, strings):
            return "photos"
        if _is_str(first):
            return "text"
        # Strings in a sequence: meant as pairs, whatever their number (a
        # triple is reported as a bad pair, not as numbers that fail to parse).
        if isinstance(first, (list, tuple)) and any(map(_is_str, first)):
            return "pairs"
    if isinstance(X, np.ndarray):
        if X.ndim == 1 and len(X) and _is_photos(X, strings):
            return "photos"
        if X.dtype.kind in "US" or (
            X.dtype == object and X.size and _is_str(X.flat[0])
        ):
            return "pairs" if X.ndim == 2 and X.shape[1] == 2 else "text"
        if X.dtype == np.uint8 and (X.ndim == 3 or _channels_last(X.shape)):
            return "image"
    return "array"


def _is_photos(values, strings: str) -> bool:
    """A sequence (or one column) of photos: judged by its first entry, a
    path-like, a PIL image or a uint8 picture (strings only as paths)."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        values = values[:, 0]  # more than one column is an error, said later
    if isinstance(values, np.ndarray) and values.ndim != 1:
        return False
    first = values[0]
    if _is_str(first):
        return strings == "photos"
    return is_photo(first)


def _channels_last(shape) -> bool:
    """Whether a 4-D shape reads as ``N x H x W x C``: 1, 3 or 4 channels, or
    fewer channels than either side (multispectral bands, say)."""
    return len(shape) == 4 and (
        shape[-1] in (1, 3, 4) or shape[-1] < min(shape[1], shape[2])
    )


def _shape(shape) -> str:
    return " x ".join(str(int(d)) for d in shape)


def _check_image_dtype(X, param: str = "X") -> None:
    """Refuse integer images that are not uint8, saying how to convert them.

    A clear error rather than support: uint8 has one meaning (0-255), but
    16-bit data seldom spans 0-65535 (12-bit sensors, CT windows, satellite
    reflectance up to about 10000), so a fixed division by 65535 would feed
    the backbone near-black images and train silently worse. The right
    scaling (range, window, per band) is the user's to choose; wider integer
    arrays (int64 from ``np.stack``, say) are usually uint8 pixels that lost
    their dtype, and a float reading would take them as normalized input.
    """
    if not isinstance(X, np.ndarray) or X.dtype.kind not in "ui":
        return
    if X.dtype == np.uint8:
        return
    if _channels_last(X.shape):
        layout = "N x H x W x C"
    elif X.ndim == 3 and X.dtype.itemsize == 2:  # 16-bit gray: medical scans
        layout = "N x H x W"
    else:
        return
    if X.dtype == np.uint16:
        scale = "e.g. (X / 257).astype(np.uint8) for the full 16-bit range"
    else:
        scale = "e.g. X.astype(np.uint8) when the values are 0-255"
    raise ValueError(
        f"{param} holds {X.dtype} images ({_shape(X.shape)}: {layout}), but images "
        "must be uint8 (N x H x W x C or N x H x W), or float32 (N x C x H x W) "
        "already normalized for the backbone. Scale them to uint8 over the range "
        f"they use, {scale}, or normalize them yourself to float32 N x C x H x W."
    )


def _image_channels(shape) -> int:
    return int(shape[2]) if len(shape) == 3 else 1


def _check_image_shape(estimator, X, param: str = "X") -> None:
    """Images must have the channels, and (unless resized) the size, of fit's."""
    fitted = estimator.input_spec_.shape
    given = X.shape[1:]
    name = type(estimator).__name__
    channels = _image_channels(given)
    if channels != _image_channels(fitted):
        layout = "N x H x W x C" if len(given) == 3 else "N x H x W"
        raise ValueError(
            f"{param} holds {channels}-channel images ({layout}; one sample is "
            f"{_shape(given)}), but {name} was fitted on "
            f"{_image_channels(fitted)}-channel images (one sample was "
            f"{_shape(fitted)})."
        )
    if tuple(given[:2]) != tuple(fitted[:2]) and estimator.image_size is None:
        size = _shape(fitted[:2])
        raise ValueError(
            f"{param} holds {_shape(given[:2])} images (H x W), but {name} was "
            f"fitted on {size} images, and image_size=None keeps each image's own "
            f"size: resize them to {size}, or fit with "
            f"image_size=({fitted[0]}, {fitted[1]}), which resizes every image to "
            "that size in fit and predict."
        )


def _check_images(estimator, X, param: str = "X"):
    """Images after fit: checked by shape, not by scikit-learn's feature
    count (the height, for N x H x W x C), so a resized model takes any size."""
    X = check_array(X, dtype=None, allow_nd=True, input_name=param)
    _check_image_shape(estimator, X, param)
    return X


_REPR = reprlib.Repr()  # samples shown in errors: long texts cut short
_REPR.maxstring = _REPR.maxother = 40


def _one_column(X, param: str, wrong: str):
    """The samples of ``X``: a DataFrame's or 2-D array's one column, else
    ``X`` itself; ``wrong`` says what to pass instead of more columns."""
    values = X.to_numpy() if hasattr(X, "to_numpy") else X
    if isinstance(values, np.ndarray) and values.ndim == 2:
        if values.shape[1] != 1:
            raise ValueError(f"{param} has {values.shape[1]} {wrong}.")
        values = values[:, 0]
    return values


def _check_not_empty(samples, param: str) -> None:
    if not len(samples):
        raise ValueError(
            f"{param} is empty: found 0 samples, a minimum of 1 is required."
        )


def _texts(X, kind: str, param: str = "X") -> np.ndarray:
    """Return ``X`` as texts (:func:`~sktune.data.text.as_texts`), checking every
    entry: a string each, or a pair of exactly two strings each."""
    values = X.to_numpy() if hasattr(X, "to_numpy") else X
    if kind == "text":
        values = _one_column(
            values,
            param,
            "text columns; use one column of texts or two columns of sentence pairs",
        )
    out = []
    for i, item in enumerate(values):
        if kind == "text":
            if not _is_str(item):
                raise ValueError(
                    f"{param}[{i}] is {_REPR.repr(item)}; every sample of text input "
                    "must be a string (missing values are not allowed)."
                )
            out.append(str(item))
            continue
        parts = tuple(item) if isinstance(item, (list, tuple, np.ndarray)) else None
        if parts is None or len(parts) != 2 or not all(map(_is_str, parts)):
            count = "" if parts is None else f" ({len(parts)} items)"
            raise ValueError(
                f"{param}[{i}] is {_REPR.repr(item)}{count}; every sample of text "
                "pairs must hold exactly two strings (missing values are not "
                "allowed)."
            )
        out.append((str(parts[0]), str(parts[1])))
    _check_not_empty(out, param)
    return as_texts(out)


def _photos(X, param: str = "X") -> Photos:
    """``X`` as :class:`~sktune.data.photos.Photos`, checking every entry:
    a path, a PIL image or a uint8 ``H x W (x C)`` picture each."""
    values = _one_column(
        X, param, "columns of photos; use one column of paths (or PIL images)"
    )
    sources = []
    for i, item in enumerate(values):
        if not is_photo(item):
            raise ValueError(
                f"{param}[{i}] is {_REPR.repr(item)}{_array_note(item)}; every "
                "sample of photo input must be a path (str or os.PathLike), a PIL "
                "image or a uint8 array (H x W, or H x W x C with 1, 3 or 4 "
                "channels)."
            )
        sources.append(str(item) if isinstance(item, np.str_) else item)
    _check_not_empty(sources, param)
    return Photos(sources)


def _array_note(item) -> str:
    if isinstance(item, np.ndarray):
        return f" (an array of {item.dtype}, {_shape(item.shape)})"
    return ""


def _mapping(X, param: str = "X") -> dict:
    data = {k: torch.as_tensor(_to_numpy(v)) for k, v in X.items()}
    lengths = {k: len(v) for k, v in data.items()}
    if not data or len(set(lengths.values())) != 1:
        raise ValueError(
            f"{param} is a mapping of inputs whose lengths differ or that is empty: "
            f"{lengths}; every entry needs one row per sample."
        )
    return data


def _multi_output(y, regression: bool) -> bool:
    """Whether ``y`` may have several columns: regression targets, or a
    classifier's multilabel indicator matrix (a column of labels is 1-D)."""
    return regression or is_multilabel(_to_numpy(y))


def _check_y(estimator, y, *, regression: bool):
    y = validate_data(
        estimator,
        X="no_validation",
        y=_to_numpy(y),
        multi_output=_multi_output(y, regression),
        y_numeric=regression,
    )
    if not regression:
        check_classification_targets(y)
    return y


def check_fit_data(
    estimator, X, y, *, reset: bool, regression: bool, strings: str = "text"
):
    """Validate training data; return ``(X, y, FittedInput)`` ready for skorch.

    Arrays go through scikit-learn's ``validate_data`` (which sets or checks
    ``n_features_in_`` and ``feature_names_in_``); text, photos and mappings
    are checked here, their targets with the same scikit-learn helpers.
    ``strings``: what strings are, "text" or "photos" (paths). Photos get a
    FittedInput of kind "photos" without its decoding, which the caller sets
    (:meth:`FittedInput.of_photos`).
    """
    _check_image_dtype(X)
    kind = input_kind(X, strings=strings)
    if not reset:
        _check_same_kind(estimator, kind)
    if kind == "image" and not reset:
        X = _check_images(estimator, _to_numpy(X))
        y = _check_y(estimator, y, regression=regression)
        check_consistent_length(X, y)
        return X, y, FittedInput.of(X, kind)
    if kind in ("array", "image"):
        X, y = validate_data(
            estimator,
            _to_numpy(X),
            _to_numpy(y),
            reset=reset,
            dtype=None if kind == "image" else [np.float32, np.float64],
            allow_nd=True,
            multi_output=_multi_output(y, regression),
            y_numeric=regression,
        )
        if not regression:
            check_classification_targets(y)
        if kind == "array":
            X = X.astype(np.float32, copy=False)
        return X, y, FittedInput.of(X, kind)
    if kind == "photos":
        X = _photos(X)
    elif kind in ("text", "pairs"):
        X = _texts(X, kind)
    else:
        X = _mapping(X)
    y = _check_y(estimator, y, regression=regression)
    check_consistent_length(next(iter(X.values())) if kind == "mapping" else X, y)
    return X, y, FittedInput.of(X, kind)


def check_predict_data(estimator, X, kind: str):
    """Validate prediction input against what ``fit`` saw."""
    _check_image_dtype(X)
    strings = "photos" if kind == "photos" else "text"
    _check_same_kind(estimator, input_kind(X, strings=strings))
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
        return _check_images(estimator, _to_numpy(X))
    if kind == "mapping":
        return _mapping(X)
    if kind == "photos":
        return _photos(X)
    return _texts(X, kind)


KIND_NAMES = {
    "array": "numeric arrays",
    "image": "uint8 images (N x H x W x C)",
    "photos": "photos (paths, PIL images or uint8 pictures of any size)",
    "text": "strings",
    "pairs": "string pairs",
    "mapping": "a mapping of tokenized inputs",
}


def _check_same_kind(estimator, kind: str) -> None:
    fitted = getattr(getattr(estimator, "input_spec_", None), "kind", None)
    if fitted is not None and kind != fitted:
        raise ValueError(
            f"X holds {KIND_NAMES[kind]}, but {type(estimator).__name__} was fitted "
            f"on {KIND_NAMES[fitted]}."
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
