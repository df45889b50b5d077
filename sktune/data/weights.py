"""Sample and class weights: checked, combined, normalized, carried with the batches.

A weighted fit trains on the weighted loss scikit-learn's estimators mean
by ``sample_weight`` and ``class_weight``: each batch's loss is the mean of
``weight * loss`` over its samples, where a sample's weight is
``class_weight[its class] * sample_weight[it]``.

- :func:`fit_weights` checks ``sample_weight`` (one non-negative, finite
  number per sample, not all zero), multiplies in the class weights
  (:func:`class_weights`) and normalizes the product to mean 1 over the data
  of the fit: the loss keeps its scale, so ``lr`` means the same whatever
  the weights' scale (AdaBoost's weights sum to 1, a survey's to millions).
  Weights that are all equal give None: the unweighted fit, bit for bit.
- :class:`WeightedDataset` wraps the dataset skorch loops over (the input,
  texts or cached prefix rows) and hands each batch's weights along with its
  input: the batch's X becomes a mapping holding them under
  :data:`WEIGHT_KEY` (:func:`with_weights`). This is skorch's own advice for
  sample weights (pass them in X, read them in ``get_loss``), done batch by
  batch so that neither the input nor the targets change: the targets stay
  the labels, so skorch's scoring callbacks (``valid_acc``) and stratified
  splits never see a weight, and skorch's validation split takes subsets of
  the wrapped dataset, so the validation loss is weighted too. Weights never
  travel as fit parameters, which skorch hands on to the module's forward.
- The estimator takes them back out of a batch's input before the network
  sees it (:func:`split_weights`), and reduces the criterion's per-sample
  losses with them (:func:`unreduced`, :func:`weighted_loss`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_array
from skorch.dataset import unpack_data
from torch.utils.data import Dataset, Subset, default_collate

from .._constraints import is_real

__all__ = [
    "CLASS_WEIGHT_ACCEPTED",
    "WEIGHT_KEY",
    "WeightedDataset",
    "check_sample_weight",
    "class_weights",
    "fit_weights",
    "is_class_weight",
    "split_weights",
    "unreduced",
    "weighted_base",
    "weighted_loss",
    "with_weights",
]

#: Where a batch's input holds its samples' weights (a name no model input has).
WEIGHT_KEY = "__sktune_sample_weight__"

CLASS_WEIGHT_ACCEPTED = (
    "None, 'balanced' (n_samples / (n_classes * count of the class)) or a dict "
    "{class label: non-negative weight}"
)


def is_class_weight(value) -> bool:
    """Whether ``value`` is a valid ``class_weight`` parameter (its keys are
    checked against the classes in fit)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value == "balanced"
    return isinstance(value, Mapping) and all(
        is_real(w) and math.isfinite(w) and w >= 0 for w in value.values()
    )


# -- the weights of a fit ------------------------------------------------------------


def check_sample_weight(sample_weight, n_samples: int) -> np.ndarray:
    """``sample_weight`` as float64, one per sample.

    scikit-learn's ``_check_sample_weight`` rules (a scalar weighs every
    sample the same; NaN, infinite and negative weights are refused, and so
    are weights that are all zero), with errors that name ``sample_weight``.
    """
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        weights = np.full(n_samples, float(sample_weight))
    else:
        weights = check_array(
            sample_weight,
            ensure_2d=False,
            ensure_min_samples=0,
            dtype=np.float64,
            input_name="sample_weight",
        )
    if weights.shape != (n_samples,):
        raise ValueError(
            f"sample_weight has shape {weights.shape}, but there are {n_samples} "
            f"samples; pass one weight per sample (shape ({n_samples},)) or a "
            "number."
        )
    if not np.isfinite(weights).all():  # a scalar (check_array refuses arrays)
        raise ValueError(
            f"sample_weight={sample_weight!r} is not valid; use finite numbers."
        )
    negative = np.flatnonzero(weights < 0)
    if negative.size:
        first = negative[0]
        raise ValueError(
            f"sample_weight has {negative.size} negative value(s), the first "
            f"sample_weight[{first}]={weights[first]:g}; weights must be "
            "non-negative (a weight of 0 leaves the sample out)."
        )
    if not weights.any():
        raise ValueError(
            "sample_weight is zero for every sample; at least one sample needs a "
            "positive weight."
        )
    return weights


def class_weights(class_weight, y, classes, *, multilabel: bool = False):
    """One weight per sample from ``class_weight`` and encoded labels ``y``.

    Parameters
    ----------
    class_weight : None, "balanced" or dict
        "balanced" weighs each class present in ``y`` by
        ``n_samples / (n_classes_present * count)``, scikit-learn's
        ``compute_class_weight``; a dict maps class labels to weights, and
        classes it leaves out weigh 1.
    y : ndarray of int
        Indices into ``classes``.
    classes : ndarray
        The class labels (``classes_``).
    multilabel : bool
        Whether ``y`` is a multilabel indicator matrix: class weights are
        refused there.

    Returns
    -------
    ndarray of shape (n_samples,) or None
        None for ``class_weight=None``.

    Raises
    ------
    ValueError
        For keys of a dict that are not classes, and for any class weights
        of multilabel targets.
    """
    if class_weight is None:
        return None
    if multilabel:
        raise ValueError(
            f"class_weight={class_weight!r} weighs the classes of 1-D labels, but "
            f"y is a multilabel indicator matrix ({y.shape[0]} x {y.shape[1]}); "
            "use class_weight=None with sample_weight, or criterion__pos_weight "
            "(one positive-class weight per label, for BCEWithLogitsLoss)."
        )
    n_classes = len(classes)
    if isinstance(class_weight, str):  # "balanced", over the classes present
        present = np.unique(y)
        per_class = np.ones(n_classes)
        per_class[present] = compute_class_weight(class_weight, classes=present, y=y)
        return per_class[y]
    index = {_as_key(c): i for i, c in enumerate(classes)}
    unknown = [k for k in class_weight if k not in index]
    if unknown:
        raise ValueError(
            f"class_weight has keys {unknown} that are not classes of y; the "
            f"classes are {np.asarray(classes).tolist()}."
        )
    by_index = {index[k]: float(w) for k, w in class_weight.items()}
    per_class = compute_class_weight(by_index, classes=np.arange(n_classes), y=y)
    return per_class[y]


def _as_key(label):
    """A class label as a dict key matches it: numpy scalars as Python ones."""
    return label.item() if isinstance(label, np.generic) else label


def fit_weights(
    sample_weight, n_samples: int, class_weight: np.ndarray | None = None
) -> np.ndarray | None:
    """The per-sample weights of a fit, normalized to mean 1 (float32).

    Parameters
    ----------
    sample_weight : None, number or array-like of shape (n_samples,)
        As passed to ``fit`` (:func:`check_sample_weight`).
    n_samples : int
    class_weight : ndarray of shape (n_samples,), optional
        Each sample's class weight (:func:`class_weights`).

    Returns
    -------
    ndarray of shape (n_samples,) or None
        None when every sample weighs the same: the unweighted fit.
    """
    if sample_weight is None and class_weight is None:
        return None
    weights = (
        np.ones(n_samples)
        if sample_weight is None
        else check_sample_weight(sample_weight, n_samples)
    )
    if class_weight is not None:
        weights = weights * class_weight
        if not weights.any():
            raise ValueError(
                "class_weight times sample_weight is zero for every sample; at "
                "least one sample needs a positive weight."
            )
    if np.all(weights == weights[0]):
        return None
    return (weights / weights.mean()).astype(np.float32)


# -- weights with the batches -------------------------------------------------------


class _Items:
    """The samples of one batch (as the wrapped dataset gives them) and their weights."""

    def __init__(self, items, weights: torch.Tensor):
        self.items = items
        self.weights = weights


class WeightedDataset(Dataset):
    """A dataset whose batches carry their samples' weights.

    The ``DataLoader`` fetches each batch through :meth:`__getitems__` (also
    through the ``Subset`` of a validation split), which takes the weights
    of those indices along; :meth:`collate_fn` makes the batch as the
    wrapped dataset would (its own ``collate_fn``: tokenizing texts, cached
    rows, or torch's default) and puts the weights into its input
    (:func:`with_weights`).

    Parameters
    ----------
    dataset : Dataset
        What skorch would loop over unweighted.
    weights : array-like of shape (len(dataset),)
        One weight per sample.
    """

    def __init__(self, dataset, weights):
        if len(weights) != len(dataset):
            raise ValueError(
                f"{len(weights)} sample weights for a data set of {len(dataset)} "
                "samples."
            )
        self.dataset = dataset
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        """Sample ``i`` as the wrapped dataset gives it (weights come in batches)."""
        return self.dataset[i]

    def __getitems__(self, indices):
        fetch = getattr(self.dataset, "__getitems__", None)
        items = (
            fetch(indices) if callable(fetch) else [self.dataset[i] for i in indices]
        )
        return _Items(items, self.weights[torch.as_tensor(indices, dtype=torch.long)])

    def collate_fn(self, batch: _Items):
        """The wrapped dataset's batch, its input holding the weights."""
        return self.collate_with(None)(batch)

    def collate_with(self, collate=None):
        """:meth:`collate_fn` around ``collate`` (a custom ``collate_fn``
        given to the iterator) instead of the wrapped dataset's own."""
        if collate is None:
            collate = getattr(self.dataset, "collate_fn", None) or default_collate
        return partial(_collate, collate)

    def lengths(self) -> list[int] | None:
        """Token counts of the wrapped texts, if it knows them."""
        lengths = getattr(self.dataset, "lengths", None)
        return lengths() if callable(lengths) else None


def _collate(collate, batch):
    if not isinstance(batch, _Items):
        raise TypeError(
            "a batch of weighted samples arrived without its weights: the "
            "DataLoader must fetch batches with __getitems__ (batch_size set)."
        )
    Xi, yi = unpack_data(collate(batch.items))
    return with_weights(Xi, batch.weights), yi


def weighted_base(dataset) -> WeightedDataset | None:
    """The :class:`WeightedDataset` under ``dataset``'s subsets, if any."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, WeightedDataset) else None


def with_weights(Xi, weights) -> dict:
    """A batch's input with its weights: a mapping, the weights under
    :data:`WEIGHT_KEY` (a tensor input under ``"X"``, the network's
    argument name)."""
    if Xi is None:
        return {WEIGHT_KEY: weights}
    if isinstance(Xi, Mapping):
        return {**Xi, WEIGHT_KEY: weights}
    return {"X": Xi, WEIGHT_KEY: weights}


def split_weights(Xi):
    """``(input, weights)`` of a batch's input; weights None if it has none."""
    if not (isinstance(Xi, Mapping) and WEIGHT_KEY in Xi):
        return Xi, None
    rest = {k: v for k, v in Xi.items() if k != WEIGHT_KEY}
    if rest.keys() == {"X"}:
        rest = rest["X"]
    return rest, Xi[WEIGHT_KEY]


# -- the weighted loss ----------------------------------------------------------------


@contextmanager
def unreduced(criterion):
    """Inside, ``criterion`` returns one loss per sample; yields its reduction.

    Torch's losses read ``reduction`` on every call; it is set back on exit.
    """
    reduction = getattr(criterion, "reduction", None)
    if not isinstance(reduction, str):
        raise TypeError(
            f"sample_weight and class_weight need each sample's loss, but the "
            f"criterion {type(criterion).__name__} has no 'reduction' to set to "
            "'none'; use a torch loss, or give yours a reduction attribute."
        )
    criterion.reduction = "none"
    try:
        yield reduction
    finally:
        criterion.reduction = reduction


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor, reduction: str):
    """The mean of ``weight * loss`` over a batch (the sum, for
    ``reduction='sum'``); a sample's loss is the mean over its outputs (the
    labels of a multilabel target, the targets of a regression)."""
    if losses.ndim == 0:
        raise ValueError(
            "the criterion returned one loss for the whole batch with "
            "reduction='none'; sample weights need one loss per sample."
        )
    per_sample = losses.reshape(len(losses), -1).mean(dim=1)
    weighted = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return weighted.sum() if reduction == "sum" else weighted.mean()
