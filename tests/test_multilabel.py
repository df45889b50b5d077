"""Multilabel targets: a 0/1 indicator matrix, handled as MLPClassifier does."""

import warnings

import numpy as np
import pytest
import torch
from helpers import text_backbone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import MultiLabelBinarizer
from torch import nn
from torch.utils.data import Subset

from sktune import FineTuneClassifier


def backbone() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())


def clf(**kwargs) -> FineTuneClassifier:
    params = dict(lr=0.02, max_epochs=10, random_state=0, verbose=0)
    return FineTuneClassifier(backbone(), **{**params, **kwargs})


@pytest.fixture(scope="module")
def tagged():
    """Three labels per sample, each a simple function of the features."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(160, 8)).astype(np.float32)
    Y = np.c_[X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 0.5].astype(int)
    return X, Y


@pytest.fixture(scope="module")
def fitted(tagged):
    return clf().fit(*tagged)


def test_an_indicator_matrix_gives_one_sigmoid_output_per_label(tagged, fitted):
    X, Y = tagged
    assert isinstance(fitted.criterion_, nn.BCEWithLogitsLoss)
    # classes_ as MLPClassifier's (LabelBinarizer's) for multilabel targets.
    mlp = MLPClassifier(max_iter=1).fit(X, Y)
    np.testing.assert_array_equal(fitted.classes_, mlp.classes_)
    proba = fitted.predict_proba(X)
    assert proba.shape == (160, 3)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(axis=1), 1)  # independent labels
    predicted = fitted.predict(X)
    assert predicted.shape == (160, 3)
    assert predicted.dtype == mlp.predict(X).dtype
    np.testing.assert_array_equal(predicted, (proba > 0.5).astype(int))
    # score is the subset accuracy: every label of a sample right.
    assert fitted.score(X, Y) == accuracy_score(Y, predicted)
    assert fitted.score(X, Y) == np.mean((predicted == Y).all(axis=1))
    assert (predicted == Y).mean() > 0.9  # it learned


def test_an_explicit_criterion_is_kept(tagged):
    net = clf(criterion=nn.MultiLabelSoftMarginLoss, max_epochs=1).fit(*tagged)
    assert isinstance(net.criterion_, nn.MultiLabelSoftMarginLoss)
    assert net.predict_proba(tagged[0]).shape == (160, 3)


def test_multilabel_binarizer_tags_of_texts(reviews):
    texts, labels = reviews
    tags = [
        {label, "short"} if len(t.split()) < 5 else {label}
        for t, label in zip(texts, labels, strict=True)
    ]
    binarizer = MultiLabelBinarizer()
    Y = binarizer.fit_transform(tags)
    net = FineTuneClassifier(
        text_backbone(), lr=0.05, max_epochs=8, random_state=0, verbose=0
    ).fit(texts, Y)
    predicted = binarizer.inverse_transform(net.predict(texts))
    assert np.mean([set(p) == t for p, t in zip(predicted, tags, strict=True)]) > 0.8


# Samples without any label have no F1 (scikit-learn warns, and counts 0).
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_a_grid_search_scores_f1_samples(tagged):
    X, Y = tagged
    search = GridSearchCV(
        clf(max_epochs=5), {"lr": [1e-5, 0.05]}, cv=2, scoring="f1_samples"
    ).fit(X, Y)
    low, high = search.cv_results_["mean_test_score"]
    assert search.best_params_ == {"lr": 0.05}
    assert high > low + 0.1


def test_valid_acc_is_the_subset_accuracy(tagged):
    X, Y = tagged
    valid = np.arange(len(X)) % 4 == 0

    def split(dataset, y=None):
        return (
            Subset(dataset, np.flatnonzero(~valid)),
            Subset(dataset, np.flatnonzero(valid)),
        )

    net = clf(lr=0.0, max_epochs=1, train_split=split).fit(X, Y)
    assert net.history_[-1, "valid_acc"] == net.score(X[valid], Y[valid])


def test_restarts_split_multilabel_targets_unstratified(tagged):
    X, Y = tagged
    # Unique label rows would fail a stratified split.
    net = clf(n_restarts=2, max_epochs=2).fit(X, np.c_[Y, np.eye(160, 2, dtype=int)])
    assert len(net.restarts_) == 2
    assert net.predict(X).shape == (160, 5)


def test_a_linear_probe_on_cached_rows(tagged):
    X, Y = tagged
    net = clf(freeze="all").fit(X, Y)
    assert net.cache_info_["enabled"]
    assert net.predict(X).shape == Y.shape


def test_learning_nothing_is_measured_against_each_labels_frequency(tagged):
    X, Y = tagged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf(lr=1e-7, max_epochs=2).fit(X, Y)
    (message,) = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    assert "of the loss of always predicting each label's frequency" in message
