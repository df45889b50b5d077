"""scikit-learn's own estimator checks; the expected failures declared with
their reason (sample weights are not exactly repetitions in mini-batches)."""

from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from sktune import FineTuneClassifier, FineTuneRegressor
from sktune.estimators import EXPECTED_FAILED_CHECKS


def lazy_backbone() -> nn.Sequential:
    """A backbone that adapts to any input width.

    Only lazy layers: the checks compare the joblib hash of every parameter
    before and after fit, and torch pickles a tensor with its storage address,
    so a deep copy of a materialized module never hashes equal to the original.
    """
    return nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(32), nn.ReLU())


# Five epochs at lr=0.05 pass the checks that train (accuracy above 0.83 on
# blobs; measured 0.91-0.92) in a third of the time twenty at 0.01 take.
ESTIMATORS = [
    # A module instance, never mutated by fit...
    FineTuneClassifier(lazy_backbone(), lr=0.05, max_epochs=5, random_state=0),
    FineTuneRegressor(lazy_backbone(), lr=0.05, max_epochs=5, random_state=0),
    # ... and a factory, with part of the backbone frozen.
    FineTuneClassifier(lazy_backbone, freeze=1, lr=0.05, max_epochs=5, random_state=0),
    FineTuneRegressor(lazy_backbone, freeze=1, lr=0.05, max_epochs=5, random_state=0),
]


@parametrize_with_checks(
    ESTIMATORS, expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
