"""Restarts: train a few seeds briefly, keep the best, continue only it.

Fine-tuning outcomes swing with the head's initial weights and the data
order, and a bad run shows early (Dodge et al. 2020). With ``n_restarts=R``,
each of R runs (its own init and data-order seeds) trains
``restart_epochs`` epochs; the one with the best validation score
continues for the rest of ``max_epochs``.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from skorch.utils import to_numpy

from ._random import seeded
from .cache.prefix import _take

__all__ = ["encoded_score", "fit_restarts"]

#: The share of the fit data an internal validation split holds out.
HOLDOUT = 0.2


def fit_restarts(
    estimator, X, y, seeds, train, resume, cuda: bool, sample_weight=None
) -> None:
    """Run the restarts of a fresh fit of ``estimator`` (initialized).

    Parameters
    ----------
    estimator : FineTuneMixin
    X, y
        Validated input and encoded targets.
    seeds : list of FitSeeds
        One per restart.
    train : callable
        ``train(X, y, epochs)``: skorch's ``partial_fit`` for that many epochs.
    resume : callable
        ``resume(X, y, epochs)``: more epochs of the same training session.
    cuda : bool
        Whether to fork the CUDA generators too.
    sample_weight : ndarray of shape (n_samples,), optional
        The fit's normalized sample weights: they weigh the training of each
        restart and the score on the internal split.

    Sets ``restarts_`` (each restart's seeds and validation score) and
    ``best_restart_``. Without a ``train_split``, a stratified (classifiers
    with 1-D labels) internal split of 20% chooses, and the best restart
    continues on all of the data; with one, the last epoch's validation
    score does.
    """
    internal = estimator.train_split is None
    w_fit = w_valid = sample_weight
    if internal:
        train_idx, valid_idx = _holdout(y, estimator._regression, seeds[0].data)
        X_fit, y_fit = _take(X, train_idx), y[train_idx]
        if sample_weight is not None:
            w_fit, w_valid = sample_weight[train_idx], sample_weight[valid_idx]
    else:
        X_fit, y_fit = X, y
    results, best = [], None
    for run, run_seeds in enumerate(seeds):
        with seeded(run_seeds.init, cuda=cuda):
            estimator._seeds = run_seeds
            if run:
                estimator.initialize()  # fresh pristine copy, head by this seed
            with estimator._weighted(w_fit):
                train(X_fit, y_fit, estimator.restart_epochs)
        if internal:
            score = encoded_score(
                estimator, _take(X, valid_idx), y[valid_idx], sample_weight=w_valid
            )
        else:
            score = _history_score(estimator)
        results.append(
            {"init_seed": run_seeds.init, "data_seed": run_seeds.data, "score": score}
        )
        if best is None or score > results[best[0]]["score"]:
            best = (run, _snapshot(estimator))
    run, state = best
    estimator._network.load_state_dict(state["module"])
    estimator.optimizer_.load_state_dict(state["optimizer"])
    estimator.history_ = state["history"]
    estimator._seeds = seeds[run]
    estimator.restarts_ = results
    estimator.best_restart_ = run
    remaining = estimator.max_epochs - estimator.restart_epochs
    if remaining > 0:
        with seeded(seeds[run].init, cuda=cuda), estimator._weighted(sample_weight):
            resume(X, y, remaining)


def _holdout(y, regression: bool, seed) -> tuple[np.ndarray, np.ndarray]:
    indices = np.arange(len(y))
    stratify = None
    # Multilabel targets (2-D) are split unstratified: stratifying on each
    # row's combination of labels fails wherever a combination is unique.
    # Stratified where it can be: two samples of every class, and a holdout
    # (and the rest) with room for each class.
    if not regression and np.ndim(y) == 1:
        _, counts = np.unique(y, return_counts=True)
        n_test = int(np.ceil(HOLDOUT * len(y)))
        room = min(n_test, len(y) - n_test) >= len(counts)
        stratify = y if counts.min() >= 2 and room else None
    return train_test_split(
        indices,
        test_size=HOLDOUT,
        stratify=stratify,
        random_state=None if seed is None else seed % 2**32,
    )


def encoded_score(estimator, X, y, sample_weight=None) -> float:
    """Accuracy (classifiers; subset accuracy for multilabel targets) or R²
    (regressors) on encoded targets: class indices into ``classes_``, a 0/1
    indicator matrix, or targets in the network's shape.

    Also the classifier's ``valid_acc`` (an ``EpochScoring`` scorer).
    ``sample_weight`` weighs the samples (where some weight is positive).
    """
    out = estimator._forward_numpy(X)
    if sample_weight is not None and not np.any(sample_weight):
        sample_weight = None
    if estimator._regression:
        return float(
            r2_score(
                np.asarray(y), out.reshape(np.shape(y)), sample_weight=sample_weight
            )
        )
    y = to_numpy(np.asarray(y))
    if y.ndim == 2:  # multilabel: every label of a sample right
        correct = np.all((out > 0.5) == (y > 0.5), axis=1)
    else:
        correct = out.argmax(axis=1) == y
    return float(np.average(correct, weights=sample_weight))


def _history_score(estimator) -> float:
    """The last epoch's validation score: accuracy, else minus the loss."""
    last = estimator.history_[-1]
    if "valid_acc" in last:
        return float(last["valid_acc"])
    return -float(last["valid_loss"])


def _snapshot(estimator) -> dict:
    return {
        "module": {
            k: v.detach().clone() for k, v in estimator._network.state_dict().items()
        },
        "optimizer": copy.deepcopy(estimator.optimizer_.state_dict()),
        "history": copy.deepcopy(estimator.history_),
    }
