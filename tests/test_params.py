"""The shared parameters: one definition, validated at fit before any work."""

import inspect

import numpy as np
import pytest
import torch
from helpers import mlp_backbone, text_backbone
from skorch import NeuralNet
from torch import nn

from sktune import FineTuneClassifier, FineTuneRegressor, Freeze
from sktune._base import FineTuneMixin
from sktune._params import CONSTRAINTS, InvalidParameterError

X8 = np.random.RandomState(0).normal(size=(20, 8))
Y2 = np.arange(20) % 2


def sktune_params() -> set[str]:
    """The parameters sktune adds to skorch's."""
    own = set(inspect.signature(FineTuneMixin.__init__).parameters)
    return own - set(inspect.signature(NeuralNet.__init__).parameters) - {"self"}


def test_every_parameter_sktune_adds_has_a_constraint():
    assert sktune_params() <= set(CONSTRAINTS)
    assert {"backbone", "freeze", "cache_size", "channels_last"} <= sktune_params()


def test_both_estimators_have_one_signature_but_the_criterion():
    classifier = inspect.signature(FineTuneClassifier.__init__).parameters
    regressor = inspect.signature(FineTuneRegressor.__init__).parameters
    assert list(classifier) == list(regressor)
    assert classifier["criterion"].default is nn.CrossEntropyLoss
    assert regressor["criterion"].default is nn.MSELoss
    differ = [n for n in classifier if classifier[n].default != regressor[n].default]
    assert differ == ["criterion"]
    assert FineTuneClassifier(mlp_backbone()).get_params()["max_epochs"] == 10


BAD = [
    ("freeze", "some", r"freeze='some' is not valid; use None or 0"),
    ("freeze", Freeze(train_bn=1), r"freeze__train_bn=1 is not valid; use True"),
    ("head", nn.Linear(16, 2), r"A module instance would be shared between fits"),
    ("random_state", 1.5, r"random_state=1.5 is not valid; use None, a non-negative"),
    ("pooling", "sum", r"pooling='sum' is not valid; use one of \['mean', 'cls'"),
    ("max_length", 0, r"max_length=0 is not valid; use None or a positive int"),
    ("max_length", True, r"max_length=True is not valid"),
    ("group_by_length", 1, r"group_by_length=1 is not valid; use True or False"),
    ("image_size", (8, 0), r"image_size=\(8, 0\) is not valid; use None"),
    ("cache", 1, r"cache=1 is not valid; use 'auto', True or False"),
    ("cache_size", 0, r"cache_size=0 is not valid; use a positive number"),
    ("cache_dtype", torch.int8, r"cache_dtype=torch.int8 is not valid"),
    ("channels_last", "yes", r"channels_last='yes' is not valid"),
    ("lr", -1e-3, r"lr=-0.001 is not valid; use a non-negative number"),
    ("max_epochs", 2.5, r"max_epochs=2.5 is not valid; use a non-negative int"),
    ("batch_size", 0, r"batch_size=0 is not valid; use a positive int, or -1"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("kind", ["array", "text"])
def test_a_bad_value_is_caught_before_any_work_whatever_the_input(
    name, value, message, kind
):
    # A text-only setting is checked on numbers too, an image one on text.
    built = []

    def factory():
        built.append(1)
        return mlp_backbone() if kind == "array" else text_backbone().module()

    X, y = (X8, Y2) if kind == "array" else (["good", "bad"] * 10, Y2)
    clf = FineTuneClassifier(factory, **{"max_epochs": 1, name: value})
    with pytest.raises(InvalidParameterError, match=message):
        clf.fit(X, y)
    assert built == []  # nothing was loaded, copied or probed
    assert not hasattr(clf, "module_")


def test_invalid_parameter_error_is_a_value_and_a_type_error():
    assert issubclass(InvalidParameterError, ValueError)
    assert issubclass(InvalidParameterError, TypeError)


def test_parameters_are_stored_unchanged_and_checked_only_in_fit():
    clf = FineTuneClassifier(mlp_backbone(), max_length=-5, cache="maybe")
    assert clf.get_params()["max_length"] == -5
    assert clf.cache == "maybe"
    clf.set_params(max_length=None, cache="auto").fit(X8, Y2)
    assert clf.predict(X8).shape == (20,)
