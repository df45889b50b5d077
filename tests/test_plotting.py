import matplotlib
import numpy as np
import pytest
from helpers import mlp_backbone
from sklearn.model_selection import GridSearchCV
from skorch.dataset import ValidSplit

from sktune import Backbone, FineTuneClassifier, Freeze, plot_history, plot_search

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_history_plot_has_loss_score_and_phase_lines(blobs):
    X, y = blobs
    clf = FineTuneClassifier(
        mlp_backbone(),
        freeze=Freeze(0, probe_epochs=2, unfreeze_every=1),
        max_epochs=6,
        train_split=ValidSplit(5, stratified=True),
        random_state=0,
    ).fit(X, y)
    ax = plot_history(clf)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["train loss", "valid loss"]
    np.testing.assert_allclose(
        ax.get_lines()[0].get_ydata(), clf.history_[:, "train_loss"]
    )
    # 3 blocks: head only for 2 epochs, then one more block per epoch.
    phases = [label for label in labels if "frozen" in label]
    assert phases == [
        "2 blocks frozen from epoch 3",
        "1 block frozen from epoch 4",
        "0 blocks frozen from epoch 5",
    ]
    (twin,) = [other for other in ax.figure.axes if other is not ax]
    assert [line.get_label() for line in twin.get_lines()] == ["valid_acc"]


def test_history_plot_without_validation_has_the_training_loss_only(blobs):
    X, y = blobs
    clf = FineTuneClassifier(mlp_backbone(), max_epochs=2).fit(X, y)
    ax = plot_history(clf)
    assert [line.get_label() for line in ax.get_lines()] == ["train loss"]
    assert len(ax.figure.axes) == 1


def test_history_plot_of_an_unfitted_estimator():
    with pytest.raises(ValueError, match="no history: fit it first"):
        plot_history(FineTuneClassifier(mlp_backbone()))


def _labelled(ax):
    """The data lines (errorbar's caps and bars carry no label)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_search_plot_one_line_per_other_parameter(blobs):
    X, y = blobs
    clf = FineTuneClassifier(Backbone(mlp_backbone()), max_epochs=2, random_state=0)
    search = GridSearchCV(clf, {"freeze": [0, 2, "all"], "lr": [1e-3, 1e-2]}, cv=2).fit(
        X, y
    )
    ax = plot_search(search, "freeze")
    lines = _labelled(ax)
    assert sorted(line.get_label() for line in lines) == ["lr=0.001", "lr=0.01"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "'all'"]
    results = search.cv_results_
    for line in lines:
        lr = float(line.get_label().split("=")[1])
        rows = [i for i, p in enumerate(results["params"]) if p["lr"] == lr]
        np.testing.assert_allclose(line.get_ydata(), results["mean_test_score"][rows])


def test_search_plot_numeric_values_and_unknown_param(blobs):
    X, y = blobs
    clf = FineTuneClassifier(Backbone(mlp_backbone()), max_epochs=1)
    search = GridSearchCV(clf, {"lr": [1e-2, 1e-3]}, cv=2).fit(X, y)
    ax = plot_search(search, "lr")
    np.testing.assert_allclose(_labelled(ax)[0].get_xdata(), [1e-3, 1e-2])
    with pytest.raises(ValueError, match=r"param='freeze' was not searched"):
        plot_search(search, "freeze")
