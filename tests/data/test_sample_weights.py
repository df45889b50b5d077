"""sample_weight and class_weight: the weighted loss, batch by batch, on every
path a fit's data takes (arrays, cached prefix rows, texts, freeze stages,
restarts, validation splits), and through scikit-learn's meta-estimators."""

import pickle

import numpy as np
import pytest
import sklearn
import torch
from helpers import text_backbone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import AdaBoostClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import has_fit_parameter
from torch import nn
from torch.utils.data import DataLoader, Subset

from sktune import FineTuneClassifier, FineTuneRegressor, Freeze
from sktune.data.weights import (
    WEIGHT_KEY,
    WeightedDataset,
    class_weights,
    fit_weights,
    split_weights,
    weighted_loss,
)

rng = np.random.RandomState(0)
#: Integer weights, zeros included: a weighted fit and a fit on the samples
#: repeated that many times see the same loss.
REPEATS = rng.randint(0, 4, size=150)


def backbone() -> nn.Sequential:
    """Two linear blocks and no dropout: full-batch fits are deterministic
    functions of the loss."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())


def clf(**kwargs) -> FineTuneClassifier:
    params = dict(lr=0.02, max_epochs=4, random_state=0, verbose=0)
    return FineTuneClassifier(backbone(), **{**params, **kwargs})


def predictions(estimator, X):
    if hasattr(estimator, "predict_proba") and not estimator._regression:
        return estimator.predict_proba(X)
    return estimator.predict(X)


# -- the weights ------------------------------------------------------------------------


def test_weights_are_scaled_to_mean_one_and_equal_weights_are_no_weights():
    np.testing.assert_allclose(fit_weights([1.0, 3.0], 2), [0.5, 1.5])
    np.testing.assert_allclose(fit_weights([10.0, 30.0], 2), [0.5, 1.5])
    assert fit_weights(None, 3) is None
    assert fit_weights(7.0, 3) is None
    assert fit_weights([2.0, 2.0, 2.0], 3) is None
    np.testing.assert_allclose(
        fit_weights(None, 4, np.array([1, 1, 3, 3.0])), [0.5] * 2 + [1.5] * 2
    )


def test_balanced_class_weights_are_scikit_learns():
    labels = np.array(["a", "b", "b", "b", "c", "c"])
    classes = np.array(["a", "b", "c", "unseen"])
    y = np.searchsorted(classes, labels)
    np.testing.assert_allclose(
        class_weights("balanced", y, classes),
        compute_sample_weight("balanced", labels),  # 6 / (3 * count)
    )
    np.testing.assert_allclose(
        class_weights({"c": 4.0, "a": 0.5}, y, classes), [0.5, 1, 1, 1, 4, 4]
    )


def test_class_weight_keys_match_labels_of_any_numeric_type():
    classes = np.array([1.0, 2.0])  # float labels, int and numpy keys
    y = np.array([0, 1, 1])
    np.testing.assert_allclose(class_weights({1: 3.0}, y, classes), [3, 1, 1])
    np.testing.assert_allclose(class_weights({np.int64(2): 0.0}, y, classes), [1, 0, 0])
    with pytest.raises(ValueError, match=r"class_weight has keys \[3\] that are not"):
        class_weights({3: 1.0}, y, classes)


def test_batches_carry_the_weights_of_their_samples_through_a_split():
    X = torch.arange(10.0).reshape(10, 1)
    y = torch.arange(10)
    weights = np.linspace(0.1, 1.0, 10)
    dataset = WeightedDataset(torch.utils.data.TensorDataset(X, y), weights)
    subset = Subset(dataset, [7, 2, 5, 9])  # a validation split's
    loader = DataLoader(subset, batch_size=3, collate_fn=dataset.collate_fn)
    for Xi, yi in loader:
        inputs, w = split_weights(Xi)
        assert set(Xi) == {"X", WEIGHT_KEY}
        np.testing.assert_allclose(w, weights[yi.numpy()], rtol=1e-6)
        assert torch.equal(inputs, X[yi])


def test_the_weighted_loss_is_the_mean_of_weight_times_loss():
    losses = torch.tensor([[1.0, 3.0], [2.0, 2.0], [4.0, 0.0]])  # 3 samples, 2 labels
    weights = torch.tensor([0.0, 1.0, 2.0])
    assert float(weighted_loss(losses, weights, "mean")) == pytest.approx(2.0)
    assert float(weighted_loss(losses, weights, "sum")) == pytest.approx(6.0)


# -- weights in training ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "freeze", "target"),
    [
        (FineTuneClassifier, None, "classes"),
        (FineTuneClassifier, "all", "classes"),  # on cached prefix rows
        (FineTuneClassifier, None, "multilabel"),
        (FineTuneRegressor, 1, "values"),
    ],
    ids=["classes", "classes-cached", "multilabel", "regression"],
)
def test_integer_weights_equal_repeated_samples_with_full_batches(
    blobs, make, freeze, target
):
    # One batch of the whole data, the same seed: the weighted mean loss is
    # the repeated data's mean loss, so the models agree to float rounding
    # (zero weights included: those samples are left out).
    X, y = blobs
    y = {
        "classes": y,
        "multilabel": np.c_[y == 0, y != 1, X[:, 0] > 0].astype(int),
        "values": X[:, :2] @ [1.0, -2.0],
    }[target]
    params = dict(lr=0.02, max_epochs=4, batch_size=-1, random_state=0, verbose=0)
    weighted = make(backbone(), freeze=freeze, **params)
    repeated = make(backbone(), freeze=freeze, **params)
    weighted.fit(X, y, sample_weight=REPEATS)
    repeated.fit(X.repeat(REPEATS, axis=0), y.repeat(REPEATS, axis=0))
    if freeze == "all":
        assert weighted.cache_info_["enabled"]
    expected = predictions(repeated, X)
    np.testing.assert_allclose(predictions(weighted, X), expected, atol=2e-5)
    unweighted = make(backbone(), freeze=freeze, **params).fit(X, y)
    assert np.abs(predictions(unweighted, X) - expected).max() > 1e-3


def test_zero_weights_leave_texts_out(reviews):
    texts, labels = reviews
    keep = np.arange(len(texts)) % 3 != 0
    flipped = np.where(keep, labels, np.where(labels == "pos", "neg", "pos"))
    params = dict(lr=0.05, max_epochs=3, batch_size=-1, random_state=0, verbose=0)
    weighted = FineTuneClassifier(text_backbone(), **params)
    weighted.fit(texts, flipped, sample_weight=keep.astype(float))
    kept = FineTuneClassifier(text_backbone(), **params)
    kept.fit([t for t, k in zip(texts, keep, strict=True) if k], labels[keep])
    np.testing.assert_allclose(
        weighted.predict_proba(texts), kept.predict_proba(texts), atol=2e-5
    )


@pytest.mark.parametrize(
    "freeze",
    [None, "all", Freeze(depth=1, probe_epochs=2)],
    ids=["input", "cached-rows", "freeze-stages"],
)
def test_balanced_class_weight_is_the_balanced_sample_weight(blobs, freeze):
    X, y = blobs
    rare = np.r_[np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:8]]
    X, labels = X[rare], np.array(["ant", "bee", "wasp"])[y[rare]]
    by_class = clf(freeze=freeze, class_weight="balanced").fit(X, labels)
    by_sample = clf(freeze=freeze).fit(
        X, labels, sample_weight=compute_sample_weight("balanced", labels)
    )
    np.testing.assert_array_equal(by_class.predict_proba(X), by_sample.predict_proba(X))
    unweighted = clf(freeze=freeze).fit(X, labels)
    assert not np.array_equal(unweighted.predict_proba(X), by_class.predict_proba(X))


def test_photos_from_paths_are_weighted(tmp_path):
    from PIL import Image

    paths, y = [], np.arange(12) % 3 == 0  # a rarer class
    for i, label in enumerate(y):
        pixels = rng.randint(0, 60, size=(20 + i, 30 - i, 3)).astype(np.uint8)
        pixels[..., 0 if label else 2] += 180
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(pixels).save(paths[-1])

    def photo_clf(**kwargs):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            cnn = nn.Sequential(
                nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
        return FineTuneClassifier(
            cnn,
            image_size=8,
            batch_size=4,
            max_epochs=2,
            random_state=0,
            verbose=0,
            **kwargs,
        )

    by_class = photo_clf(class_weight="balanced").fit(paths, y)
    assert by_class.input_spec_.kind == "photos"
    by_sample = photo_clf().fit(
        paths, y, sample_weight=compute_sample_weight("balanced", y)
    )
    proba = by_class.predict_proba(paths)
    np.testing.assert_array_equal(proba, by_sample.predict_proba(paths))
    assert not np.array_equal(proba, photo_clf().fit(paths, y).predict_proba(paths))


def test_class_weight_and_sample_weight_multiply(blobs):
    X, y = blobs
    w = rng.uniform(0.5, 2.0, size=len(y))
    both = clf(class_weight={0: 3.0}).fit(X, y, sample_weight=w)
    product = clf().fit(X, y, sample_weight=w * np.where(y == 0, 3.0, 1.0))
    np.testing.assert_array_equal(both.predict_proba(X), product.predict_proba(X))


def test_the_validation_loss_is_weighted_too(blobs):
    X, y = blobs
    valid = np.arange(len(y)) % 4 == 0
    split = lambda dataset, y=None: (  # noqa: E731
        Subset(dataset, np.flatnonzero(~valid)),
        Subset(dataset, np.flatnonzero(valid)),
    )
    w = rng.uniform(0, 3, size=len(y))
    # lr=0: the model the validation loss saw is the model at the end.
    net = clf(lr=0.0, max_epochs=1, batch_size=-1, train_split=split)
    net.fit(X, y, sample_weight=w)
    normalized = w / w.mean()
    losses = -np.log(net.predict_proba(X)[np.arange(len(y)), y])
    assert net.history_[-1, "valid_loss"] == pytest.approx(
        np.mean(normalized[valid] * losses[valid]), rel=1e-5
    )
    assert net.history_[-1, "train_loss"] == pytest.approx(
        np.mean(normalized[~valid] * losses[~valid]), rel=1e-5
    )
    # valid_acc stays the plain accuracy on the validation samples.
    assert net.history_[-1, "valid_acc"] == pytest.approx(net.score(X[valid], y[valid]))


def test_restarts_choose_and_train_on_weighted_data(blobs):
    X, y = blobs
    w = np.where(y == 2, 0.0, 1.0)  # class 2 is left out
    net = clf(n_restarts=2, restart_epochs=1, max_epochs=3)
    net.fit(X, y, sample_weight=w)
    assert len(net.restarts_) == 2
    assert (net.predict(X) != 2).all()


def test_partial_fit_and_a_custom_collate_fn_take_weights(blobs):
    X, y = blobs
    w = rng.uniform(0, 2, size=len(y))
    fitted = clf().fit(X, y, sample_weight=w)
    partial = clf().partial_fit(X, y, sample_weight=w)
    collated = clf(iterator_train__collate_fn=torch.utils.data.default_collate)
    collated.fit(X, y, sample_weight=w)
    np.testing.assert_array_equal(partial.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(collated.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize(
    ("params", "sample_weight", "message"),
    [
        ({}, -np.ones(150), "sample_weight has 150 negative value"),
        ({"class_weight": {"ant": 1.0}}, None, r"class_weight has keys \['ant'\]"),
        ({"class_weight": "balanced"}, np.ones(3), r"sample_weight has shape \(3,\)"),
    ],
)
def test_a_failed_weighted_refit_leaves_the_fitted_estimator(
    blobs, params, sample_weight, message
):
    X, y = blobs
    net = clf().fit(X, y)
    proba, history = net.predict_proba(X), len(net.history_)
    net.set_params(**params)
    with pytest.raises(ValueError, match=message):
        net.fit(X, y, sample_weight=sample_weight)
    np.testing.assert_array_equal(net.predict_proba(X), proba)
    assert len(net.history_) == history


def test_a_fitted_model_holds_no_weights(blobs):
    X, y = blobs
    w = rng.uniform(0.5, 2, size=len(y))
    net = clf().fit(X, y, sample_weight=w)
    data = pickle.dumps(net)
    assert (w / w.mean()).astype(np.float32).tobytes() not in data
    assert not any("weight" in k for k in vars(net) if k != "class_weight")


def test_a_criterion_without_reduction_is_refused_with_weights(blobs):
    X, y = blobs

    class Loss(nn.Module):
        def forward(self, y_pred, y_true):
            return nn.functional.cross_entropy(y_pred, y_true)

    with pytest.raises(TypeError, match=r"the criterion Loss has no 'reduction'"):
        clf(criterion=Loss).fit(X, y, sample_weight=rng.rand(len(y)))


# -- scikit-learn's meta-estimators ------------------------------------------------------


def test_pipeline_and_grid_search_route_sample_weight(blobs):
    X, y = blobs
    w = rng.uniform(0, 3, size=len(y))
    direct = clf().fit(X, y, sample_weight=w).predict_proba(X)
    with sklearn.config_context(enable_metadata_routing=True):
        est = clf().set_fit_request(sample_weight=True)
        est.set_score_request(sample_weight=True)
        pipe = Pipeline([("identity", FunctionTransformer()), ("ft", est)])
        np.testing.assert_array_equal(
            pipe.fit(X, y, sample_weight=w).predict_proba(X), direct
        )
        search = GridSearchCV(est, {"lr": [0.0, 0.02]}, cv=2)
        search.fit(X, y, sample_weight=w)
        assert search.best_params_ == {"lr": 0.02}
        np.testing.assert_array_equal(search.predict_proba(X), direct)
    # Without routing, the old ways.
    pipe = Pipeline([("identity", FunctionTransformer()), ("ft", clf())])
    np.testing.assert_array_equal(
        pipe.fit(X, y, ft__sample_weight=w).predict_proba(X), direct
    )
    search = GridSearchCV(clf(), {"lr": [0.0, 0.02]}, cv=2).fit(X, y, sample_weight=w)
    np.testing.assert_array_equal(search.predict_proba(X), direct)


def test_calibration_and_adaboost_accept_the_estimators(blobs):
    X, y = blobs
    assert has_fit_parameter(clf(), "sample_weight")
    assert has_fit_parameter(FineTuneRegressor(backbone()), "sample_weight")
    calibrated = CalibratedClassifierCV(clf(), cv=2)
    calibrated.fit(X, y, sample_weight=rng.uniform(0.5, 2, size=len(y)))
    assert calibrated.predict_proba(X).shape == (150, 3)
    boosted = AdaBoostClassifier(clf(), n_estimators=2, random_state=0).fit(X, y)
    assert boosted.score(X, y) > 0.8
