"""Restarts: several seeds briefly, the best continues."""

import numpy as np
import pytest
from helpers import make_classifier, mlp_backbone
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from skorch.dataset import ValidSplit

from sktune import FineTuneRegressor


def test_restarts_keep_the_best_and_continue_it(blobs):
    X, y = blobs
    clf = make_classifier(n_restarts=3, restart_epochs=1, max_epochs=4, lr=1e-3)
    clf.fit(X, y)
    assert len(clf.restarts_) == 3
    seeds = {(r["init_seed"], r["data_seed"]) for r in clf.restarts_}
    assert len(seeds) == 3
    scores = [r["score"] for r in clf.restarts_]
    assert clf.best_restart_ == int(np.argmax(scores))
    assert len(clf.history_) == 4  # the best restart's epoch, then three more
    again = make_classifier(n_restarts=3, restart_epochs=1, max_epochs=4, lr=1e-3)
    np.testing.assert_array_equal(
        again.fit(X, y).predict_proba(X), clf.predict_proba(X)
    )


def test_restarts_choose_on_the_users_validation_split(blobs):
    X, y = blobs
    clf = make_classifier(
        n_restarts=2,
        restart_epochs=2,
        max_epochs=2,
        train_split=ValidSplit(0.2, stratified=True, random_state=0),
    ).fit(X, y)
    assert [r["score"] for r in clf.restarts_][clf.best_restart_] == clf.history_[
        -1, "valid_acc"
    ]


def test_restarts_of_a_regressor_score_by_r2(blobs):
    X, _ = blobs
    y = X[:, 0]
    # restart_epochs == max_epochs: the fitted model is the best restart.
    reg = FineTuneRegressor(
        mlp_backbone(), n_restarts=2, restart_epochs=2, max_epochs=2, random_state=0
    ).fit(X, y)
    scores = [r["score"] for r in reg.restarts_]
    assert reg.best_restart_ == int(np.argmax(scores))
    # The score is R² on the internal holdout: 20% of the samples, drawn
    # by the first restart's data seed.
    _, held_out = train_test_split(
        np.arange(len(X)),
        test_size=0.2,
        random_state=reg.restarts_[0]["data_seed"] % 2**32,
    )
    r2 = r2_score(y[held_out], reg.predict(X[held_out]))
    assert scores[reg.best_restart_] == pytest.approx(r2, rel=1e-5)


def test_restart_epochs_beyond_the_fit_are_refused(blobs):
    X, y = blobs
    with pytest.raises(
        ValueError, match=r"restart_epochs=5 is not valid; use at most max_epochs=3"
    ):
        make_classifier(n_restarts=2, restart_epochs=5, max_epochs=3).fit(X, y)
