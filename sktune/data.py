"""Input handling: arrays, DataFrames and tensors in, float32 arrays out."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

__all__ = ["check_X", "check_X_y", "encode_labels"]


def _to_numpy(data):
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    return data


def check_X(estimator, X, *, reset: bool) -> np.ndarray:
    """Validate ``X`` for ``estimator`` and return it as float32.

    Sets (``reset=True``) or checks (``reset=False``) ``n_features_in_`` and
    ``feature_names_in_`` with scikit-learn's own helpers.
    """
    X = validate_data(
        estimator,
        _to_numpy(X),
        reset=reset,
        dtype=[np.float32, np.float64],
        allow_nd=True,
    )
    return X.astype(np.float32, copy=False)


def check_X_y(estimator, X, y, *, reset: bool, regression: bool):
    """Validate ``X`` and ``y`` for a fit; return float32 ``X`` and checked ``y``."""
    X, y = validate_data(
        estimator,
        _to_numpy(X),
        _to_numpy(y),
        reset=reset,
        dtype=[np.float32, np.float64],
        allow_nd=True,
        multi_output=regression,
        y_numeric=regression,
    )
    if not regression:
        check_classification_targets(y)
    return X.astype(np.float32, copy=False), y


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
