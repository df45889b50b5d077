"""A fit that learned nothing says so, once; a healthy fit stays silent."""

import warnings

import numpy as np
import pytest
import torch
from helpers import make_classifier, mlp_backbone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from skorch.dataset import ValidSplit

from sktune import FineTuneRegressor, Freeze
from sktune.diagnostics import StageLoss, constant_loss, learning_report


def convergence_warnings(fit) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [str(w.message) for w in caught if w.category is ConvergenceWarning]


@pytest.fixture(scope="module")
def linear():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    return X, X @ rng.normal(size=8)


def test_the_constant_losses_are_the_prior_entropy_and_the_variance():
    y = np.array([0, 0, 0, 1])
    ce = torch.nn.CrossEntropyLoss()
    loss = constant_loss(ce, y, regression=False, n_outputs=3, device="cpu")
    assert loss == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    targets = np.array([[1.0], [2.0], [6.0]])
    mse = torch.nn.MSELoss()
    loss = constant_loss(mse, targets, regression=True, n_outputs=1, device="cpu")
    assert loss == pytest.approx(np.var(targets))


def test_the_constant_losses_of_weighted_and_multilabel_targets():
    y = np.array([0, 0, 0, 1])
    w = np.array([1.0, 1.0, 1.0, 3.0]) / 1.5  # mean 1: the classes weigh the same

    def weighted_ce(y_pred, y_true):
        losses = torch.nn.functional.cross_entropy(y_pred, y_true, reduction="none")
        return (torch.as_tensor(w, dtype=torch.float32) * losses).mean()

    loss = constant_loss(
        weighted_ce, y, regression=False, n_outputs=2, device="cpu", sample_weight=w
    )
    assert loss == pytest.approx(np.log(2))  # the weighted prior: 1/2 each
    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])  # frequencies 3/4, 1/4
    bce = torch.nn.BCEWithLogitsLoss()
    loss = constant_loss(
        bce, labels, regression=False, n_outputs=2, device="cpu", multilabel=True
    )
    assert loss == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))


def test_a_weighted_fit_that_learned_is_not_reported(blobs):
    X, y = blobs
    keep = np.r_[np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:5]]
    clf = make_classifier(class_weight="balanced", verbose=0)
    assert convergence_warnings(lambda: clf.fit(X[keep], y[keep])) == []


def test_a_fit_at_a_rate_far_too_low_warns_once_with_the_rates(blobs):
    clf = make_classifier(lr=1e-7, max_epochs=6, verbose=0)
    (message,) = convergence_warnings(lambda: clf.fit(*blobs))
    assert message.startswith("FineTuneClassifier learned little: its training loss")
    assert "of the loss of always predicting the class prior (1.099)" in message
    assert "Learning rates in effect: head 1e-07, backbone 1e-07 (blocks 0-2)." in (
        message
    )
    assert "The training loss went from " in message
    assert "If it barely moved, the rates are likely too low" in message
    assert "try a higher lr (now 1e-07)" in message


def test_a_collapsed_fit_warns(blobs):
    # Every parameter at a rate that destroys the network.
    clf = make_classifier(lr=3.0, max_epochs=10, verbose=0)
    (message,) = convergence_warnings(lambda: clf.fit(*blobs))
    assert "head 3, backbone 3 (blocks 0-2)" in message
    assert "if it jumped or rose, they are too high" in message
    assert clf.score(*blobs) < 0.5  # it did collapse


def test_a_regressor_that_learned_nothing_compares_with_the_mean(linear):
    reg = FineTuneRegressor(
        mlp_backbone(), lr=1e-7, max_epochs=3, random_state=0, verbose=0
    )
    (message,) = convergence_warnings(lambda: reg.fit(*linear))
    assert "of the loss of always predicting the mean target" in message


def test_the_validation_loss_decides_where_there_is_one(blobs):
    clf = make_classifier(lr=1e-7, max_epochs=3, train_split=ValidSplit(5), verbose=0)
    (message,) = convergence_warnings(lambda: clf.fit(*blobs))
    assert "its validation loss at the end of the fit" in message


def test_each_stage_of_a_freeze_schedule_is_reported(blobs):
    # The head learns alone first; then the whole network at a rate that
    # destroys it: the warning tells the stages apart.
    clf = make_classifier(
        freeze=Freeze(0, probe_epochs=3),
        lr=3.0,
        backbone_lr=3.0,
        optimizer__param_groups=[("head.*", {"lr": 0.05})],
        max_epochs=8,
        verbose=0,
    )
    (message,) = convergence_warnings(lambda: clf.fit(*blobs))
    assert "By stage: epochs 1-3 (3 blocks frozen) " in message
    assert "epochs 4-8 (0 blocks frozen)" in message
    assert "got clearly below it in epochs 1-3 and rose again" in message


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"freeze": "all"},
        {"freeze": Freeze(0, probe_epochs=1, unfreeze_every=1)},
        {"train_split": ValidSplit(5)},
        {"n_restarts": 3, "restart_epochs": 2},
    ],
    ids=["defaults", "probe", "gradual", "valid", "restarts"],
)
def test_healthy_fits_stay_silent(blobs, params):
    clf = make_classifier(verbose=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf.fit(*blobs)


def test_restarts_warn_once_for_the_model_kept(blobs):
    # Restart candidates are not warned about one by one.
    clf = make_classifier(n_restarts=3, lr=1e-7, max_epochs=2, verbose=0)
    assert len(convergence_warnings(lambda: clf.fit(*blobs))) == 1


def test_partial_fit_checks_its_own_epochs(blobs):
    clf = make_classifier(lr=1e-2, max_epochs=3, verbose=0)
    assert convergence_warnings(lambda: clf.partial_fit(*blobs)) == []
    # The next call trains at a rate that destroys the network: its own
    # epochs decide, not the healthy ones before them.
    clf.set_params(lr=5.0)
    (message,) = convergence_warnings(lambda: clf.partial_fit(*blobs))
    assert "head 5, backbone 5" in message


def test_a_healthy_grid_search_stays_silent(blobs):
    search = GridSearchCV(make_classifier(verbose=0), {"lr": [1e-2, 3e-2]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        search.fit(*blobs)
    assert search.best_score_ > 0.9


def test_a_backbone_far_above_its_family_rate_is_named():
    stages = [StageLoss(1, 3, 0, 0.69, "training", 0.69, 0.7, 0.69)]
    message = learning_report(
        stages,
        0.693,
        name="FineTuneClassifier",
        what="the class prior",
        rates="head 0.001, backbone 0.001 (blocks 0-6)",
        lr=1e-3,
        backbone_lr=1e-3,
        family_lr=1e-5,
    )
    assert "The backbone trains at 0.001, 100x its family's fine-tuning rate " in (
        message
    )
    # A loss clearly below the constant's is learning: nothing to say.
    learned = [StageLoss(1, 3, 0, 0.6, "training", 0.6, 0.7, 0.6)]
    assert learning_report(learned, 0.693, name="", what="", rates="", lr=1) is None
