"""sktune estimators inside scikit-learn's meta-estimators, skorch's callbacks
and notebook display."""

import numpy as np
import pytest
import torch
from helpers import assert_same_state, make_classifier, mlp_backbone, state_snapshot
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.ensemble import StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.semi_supervised import SelfTrainingClassifier
from sklearn.utils import estimator_html_repr
from skorch.callbacks import Checkpoint, EarlyStopping, LRScheduler
from skorch.dataset import ValidSplit

from sktune import Adapter, Backbone, FineTuneClassifier, FineTuneRegressor, Freeze

# -- scikit-learn meta-estimators -----------------------------------------------


def test_self_training_labels_the_unlabeled_samples(blobs):
    X, y = blobs
    y_partial = y.copy()
    y_partial[30:] = -1  # 30 labeled samples, 120 unlabeled
    # 30 samples are one batch: 20 epochs are 20 steps.
    model = SelfTrainingClassifier(
        make_classifier(Backbone(mlp_backbone()), max_epochs=20),
        threshold=0.9,
        max_iter=3,
    )
    model.fit(X, y_partial)
    pseudo = model.labeled_iter_ > 0
    assert pseudo.sum() > 30  # it labeled samples it was not given
    assert np.mean(model.transduction_[pseudo] == y[pseudo]) > 0.9
    assert model.score(X, y) > 0.9


def test_calibrated_classifier_fits_a_private_copy_per_fold(blobs):
    X, y = blobs
    clf = make_classifier(Backbone(mlp_backbone()))
    pristine = state_snapshot(clf.backbone.module())
    model = CalibratedClassifierCV(clf, cv=3).fit(X, y)
    folds = [c.estimator for c in model.calibrated_classifiers_]
    # Every fold's clone shares the one pristine backbone and trained its own
    # copy of it, on its own 100 samples; the pristine weights stay as they were.
    assert all(fold.backbone is clf.backbone for fold in folds)
    assert len({id(fold.module_.backbone) for fold in folds}) == len(folds)
    for fold in folds:
        assert sum(b["train_batch_size"] for b in fold.history_[-1, "batches"]) == 100
    assert_same_state(pristine, state_snapshot(clf.backbone.module()))
    assert model.score(X, y) > 0.9


def test_stacking_with_a_linear_model(blobs):
    X, y = blobs
    model = StackingClassifier(
        [
            ("ft", make_classifier(Backbone(mlp_backbone()), freeze=1)),
            ("lr", LogisticRegression()),
        ],
        final_estimator=LogisticRegression(),
        cv=3,
    ).fit(X, y)
    # The final estimator sees both models' class probabilities.
    assert model.final_estimator_.coef_.shape == (3, 6)
    assert model.score(X, y) > 0.9


# -- skorch callbacks ----------------------------------------------------------------


def test_early_stopping_restores_the_best_weights():
    # Noisy labels: the validation loss turns up once the net overfits.
    X, y = make_classification(
        n_samples=150, n_features=8, n_informative=4, flip_y=0.2, random_state=0
    )
    clf = make_classifier(
        Backbone(mlp_backbone()),
        max_epochs=30,
        lr=0.05,
        train_split=ValidSplit(5, stratified=True),
        callbacks=[EarlyStopping(patience=2, load_best=True)],
    ).fit(X, y)
    valid = clf.history_[:, "valid_loss"]
    assert len(valid) < 30
    best = int(np.argmin(valid))
    assert best < len(valid) - 1
    # The weights are the best epoch's: its validation loss, recomputed on
    # skorch's validation fold (the first of a stratified 5-fold split).
    _, idx = next(StratifiedKFold(5).split(X, y))
    loss = log_loss(y[idx], clf.predict_proba(X[idx]), labels=clf.classes_)
    assert loss == pytest.approx(valid[best], rel=1e-4)


def test_checkpoint_and_lr_scheduler(blobs, tmp_path):
    X, y = blobs
    clf = make_classifier(
        Backbone(mlp_backbone()),
        max_epochs=4,
        train_split=ValidSplit(5, stratified=True),
        callbacks=[
            Checkpoint(dirname=str(tmp_path), monitor="valid_loss_best"),
            LRScheduler(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        ],
    ).fit(X, y)
    assert (tmp_path / "params.pt").exists()
    # The scheduler stepped once per epoch, on every parameter group.
    assert {g["lr"] for g in clf.optimizer_.param_groups} == {1e-2 * 0.5**4}
    # The checkpoint holds the last best epoch's weights: loaded into a net
    # built alike, it predicts as the fitted net did then (here: at the end).
    assert clf.history_[-1, "valid_loss_best"]
    other = make_classifier(Backbone(mlp_backbone()), max_epochs=0).fit(X, y)
    assert not np.allclose(other.predict_proba(X), clf.predict_proba(X))
    other.load_params(f_params=tmp_path / "params.pt")
    np.testing.assert_array_equal(other.predict_proba(X), clf.predict_proba(X))


# -- display -------------------------------------------------------------------------


def test_repr_shows_the_parameters_set_away_from_their_defaults():
    clf = FineTuneClassifier(
        Backbone(mlp_backbone()), freeze=Freeze(1), adapter=Adapter("lora", r=4)
    )
    assert repr(clf) == (
        "FineTuneClassifier(adapter=Adapter(r=4), "
        "backbone=Backbone(Sequential(...)), freeze=Freeze(depth=1))"
    )
    reg = FineTuneRegressor(mlp_backbone(), lr=0.1, optimizer=torch.optim.SGD)
    assert (
        repr(reg)
        == "FineTuneRegressor(backbone=Sequential(...), lr=0.1, optimizer=SGD)"
    )


def test_html_repr_lists_nested_parameters():
    clf = FineTuneClassifier(
        Backbone(mlp_backbone()), freeze=Freeze(1), adapter=Adapter("lora", r=4)
    )
    html = estimator_html_repr(clf)
    for text in (
        "FineTuneClassifier",
        "Freeze(depth=1)",
        "Adapter(r=4)",
        "freeze__depth",
    ):
        assert text in html


def test_tensorboard_logs_each_epoch(blobs, tmp_path):
    pytest.importorskip("tensorboard")
    from skorch.callbacks import TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )
    from torch.utils.tensorboard import SummaryWriter

    X, y = blobs
    writer = SummaryWriter(tmp_path)
    FineTuneClassifier(
        mlp_backbone(), freeze=1, max_epochs=3, callbacks=[TensorBoard(writer)]
    ).fit(X, y)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("Loss/train_loss")] == [1, 2, 3]
