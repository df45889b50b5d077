"""sktune.accelerate: the estimators through Hugging Face Accelerate (one CPU process)."""

import numpy as np
import pytest
from helpers import make_classifier, mlp_backbone
from sklearn.base import clone

accelerate = pytest.importorskip("accelerate")

from sktune.accelerate import (  # noqa: E402
    AcceleratedFineTuneClassifier,
    AcceleratedFineTuneRegressor,
)


def accelerated(cls=AcceleratedFineTuneClassifier, **kwargs):
    params = dict(lr=0.01, max_epochs=5, random_state=0)
    params.update(kwargs)
    return cls(
        kwargs.pop("backbone", mlp_backbone()),
        accelerator=accelerate.Accelerator(cpu=True),
        device=None,
        **{k: v for k, v in params.items() if k != "backbone"},
    )


@pytest.mark.parametrize("freeze", [0, 1, "all"])
def test_same_model_as_the_plain_estimator(blobs, freeze):
    X, y = blobs
    plain = make_classifier(freeze=freeze).fit(X, y)
    acc = accelerated(freeze=freeze).fit(X, y)
    np.testing.assert_allclose(acc.predict_proba(X), plain.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(acc.predict(X), plain.predict(X))
    assert acc.cache_info_["enabled"] == plain.cache_info_["enabled"]
    assert acc.history_[:, "train_loss"] == pytest.approx(
        plain.history_[:, "train_loss"], abs=1e-6
    )


def test_regressor(blobs):
    X, _ = blobs
    y = X[:, :2].sum(axis=1)
    from sktune import FineTuneRegressor

    ref = FineTuneRegressor(mlp_backbone(), lr=0.01, max_epochs=3, random_state=0)
    acc = accelerated(AcceleratedFineTuneRegressor, max_epochs=3)
    np.testing.assert_allclose(
        acc.fit(X, y).predict(X), ref.fit(X, y).predict(X), atol=1e-5
    )


def test_clone_shares_the_accelerator_and_precision_is_the_accelerators(blobs):
    X, y = blobs
    est = accelerated()
    assert clone(est).accelerator is est.accelerator
    with pytest.raises(ValueError, match=r"precision='bf16': .*mixed_precision"):
        accelerated(precision="bf16").fit(X, y)


def test_divergence_guard_still_stops_a_non_finite_step(blobs):
    X, y = blobs
    with pytest.raises(FloatingPointError, match="Training diverged"):
        accelerated(max_epochs=3).fit(X * 1e30, y)
