"""The shared parameters: one definition, validated at fit before any work."""

import copy
import inspect
from typing import NamedTuple

import numpy as np
import pytest
import torch
from helpers import (
    assert_same_state,
    mlp_backbone,
    state_snapshot,
    text_backbone,
    tiny_cnn,
)
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
    classifier = set(inspect.signature(FineTuneClassifier.__init__).parameters)
    assert classifier - sktune_params() - set(
        inspect.signature(NeuralNet.__init__).parameters
    ) == {"class_weight"}
    assert set(FineTuneClassifier._constraints) == set(CONSTRAINTS) | {"class_weight"}


def test_both_estimators_have_one_signature_but_the_criterion_and_class_weight():
    classifier = inspect.signature(FineTuneClassifier.__init__).parameters
    regressor = inspect.signature(FineTuneRegressor.__init__).parameters
    assert [n for n in classifier if n != "class_weight"] == list(regressor)
    assert (
        list(classifier).index("class_weight")
        == list(classifier).index("criterion") + 1
    )
    assert classifier["class_weight"].default is None
    assert classifier["criterion"].default is nn.CrossEntropyLoss
    assert regressor["criterion"].default is nn.MSELoss
    differ = [n for n in regressor if classifier[n].default != regressor[n].default]
    assert differ == ["criterion"]
    assert FineTuneClassifier(mlp_backbone()).get_params()["max_epochs"] == 10
    assert FineTuneClassifier(mlp_backbone()).get_params()["class_weight"] is None
    assert "class_weight" not in FineTuneRegressor(mlp_backbone()).get_params()


class Bad(NamedTuple):
    """A bad parameter setting, and how fit reports it."""

    id: str
    params: dict
    error: type | tuple[type, ...]
    message: str
    #: The input kinds it is checked on (see INPUTS).
    inputs: tuple = ("array", "text", "image")
    #: Whether it is caught before any work: a declared constraint is; a
    #: check that needs the built backbone (a freeze depth against its
    #: blocks, channels_last against what it takes) comes later, and must
    #: leave the backbone as it was.
    first: bool = True


NUMBERS = ("array",)

# Every bad parameter of the suite, one row each.
BAD = [
    Bad(
        "backbone-type",
        {"backbone": 42},
        InvalidParameterError,
        r"backbone=42 is not valid; use an nn.Module instance, a zero",
        NUMBERS,
    ),
    Bad(
        "backbone-prefix",
        {"backbone": "keras:resnet"},
        ValueError,
        r"unknown prefix 'keras'; accepted prefixes are 'timm:', 'torchvision:', 'hf:'",
        NUMBERS,
    ),
    Bad(
        "backbone-path",
        {"backbone": "/nonexistent/model_dir"},
        (OSError, ValueError),
        r"/nonexistent/model_dir",
        NUMBERS,
    ),
    Bad(
        "freeze-word",
        {"freeze": "some"},
        InvalidParameterError,
        r"freeze='some' is not valid; use None or 0 \(train everything\)",
    ),
    Bad(
        "freeze-bool",
        {"freeze": True},
        InvalidParameterError,
        r"freeze=True is not valid; use None or 0",
    ),
    Bad(
        "freeze-dict",
        {"freeze": {"depth": 1}},
        InvalidParameterError,
        r"freeze=\{'depth': 1\} is not valid; use None or 0",
    ),
    Bad(
        "freeze-nested-depth",
        {"freeze": Freeze(depth="some")},
        InvalidParameterError,
        r"freeze__depth='some' is not valid; use None or 0",
    ),
    Bad(
        "freeze-train-bn-int",
        {"freeze": Freeze(train_bn=1)},
        InvalidParameterError,
        r"freeze__train_bn=1 is not valid; use True",
    ),
    Bad(
        "freeze-train-bn-str",
        {"freeze": Freeze(train_bn="yes")},
        InvalidParameterError,
        r"freeze__train_bn='yes' is not valid; use True or False",
    ),
    Bad(
        "freeze-range",
        {"freeze": 4},
        ValueError,
        r"freeze=4 is out of range: the backbone has 3 blocks, so use an int in \[-3, 3\]",
        NUMBERS,
        first=False,
    ),
    Bad(
        "freeze-range-5",
        {"freeze": 5},
        ValueError,
        r"freeze=5 is out of range: the backbone has 3 blocks, so use an int in \[-3, 3\]",
        NUMBERS,
        first=False,
    ),
    Bad(
        "freeze-range-negative",
        {"freeze": -4},
        ValueError,
        r"freeze=-4 is out of range",
        NUMBERS,
        first=False,
    ),
    Bad(
        "freeze-fraction",
        {"freeze": 1.5},
        ValueError,
        r"freeze=1.5 is not valid; use .* a float in \[0, 1\] \(that fraction",
        NUMBERS,
    ),
    Bad(
        "freeze-pattern-type",
        {"freeze": ["0.*", 3]},
        TypeError,
        r"freeze=\['0.\*', 3\] is not valid; use .* a list of parameter-name",
        NUMBERS,
    ),
    Bad(
        "freeze-pattern",
        {"freeze": ["nope.*"]},
        ValueError,
        r"freeze pattern 'nope.\*' matches no backbone parameter",
        NUMBERS,
        first=False,
    ),
    Bad(
        "freeze-nested-range",
        {"freeze": Freeze(depth=9)},
        ValueError,
        r"freeze__depth=9 is out of range",
        NUMBERS,
        first=False,
    ),
    Bad(
        "head-word",
        {"head": "transformer"},
        InvalidParameterError,
        r"head='transformer' is not valid; use one of \['linear', 'mlp'\]",
    ),
    Bad(
        "head-instance",
        {"head": nn.Linear(16, 2)},
        InvalidParameterError,
        r"A module instance would be shared between fits; pass a factory",
    ),
    Bad(
        "random-state-float",
        {"random_state": 1.5},
        InvalidParameterError,
        r"random_state=1.5 is not valid; use None, a non-negative",
    ),
    Bad(
        "random-state-negative",
        {"random_state": -1},
        InvalidParameterError,
        r"random_state=-1 is not valid; use None, a non-negative int",
    ),
    Bad(
        "pooling-sum",
        {"pooling": "sum"},
        InvalidParameterError,
        r"pooling='sum' is not valid; use one of \['mean', 'cls'",
    ),
    Bad(
        "pooling-last",
        {"pooling": "last"},
        InvalidParameterError,
        r"pooling='last' is not valid; use one of \['mean', 'cls', 'max'\]",
    ),
    Bad(
        "max-length-zero",
        {"max_length": 0},
        InvalidParameterError,
        r"max_length=0 is not valid; use None or a positive int",
    ),
    Bad(
        "max-length-bool",
        {"max_length": True},
        InvalidParameterError,
        r"max_length=True is not valid",
    ),
    Bad(
        "group-by-length-int",
        {"group_by_length": 1},
        InvalidParameterError,
        r"group_by_length=1 is not valid; use True or False",
    ),
    Bad(
        "group-by-length-str",
        {"group_by_length": "yes"},
        InvalidParameterError,
        r"group_by_length='yes' is not valid; use True or False",
    ),
    Bad(
        "group-by-length-on-images",
        {"group_by_length": True},
        ValueError,
        r"group_by_length=True groups texts by their length, but X holds image data",
        ("image",),
    ),
    Bad(
        "image-size-zero",
        {"image_size": (8, 0)},
        InvalidParameterError,
        r"image_size=\(8, 0\) is not valid; use None",
    ),
    Bad(
        "image-size-one",
        {"image_size": (8,)},
        InvalidParameterError,
        r"image_size=\(8,\) is not valid",
    ),
    Bad(
        "augment-word",
        {"augment": "medium"},
        InvalidParameterError,
        r"augment='medium' is not valid; use None, 'light' \(random resized crop and "
        r"horizontal flip\), 'strong' \(light, then TrivialAugmentWide\) or a callable",
    ),
    Bad(
        "augment-class",
        {"augment": nn.Identity},
        InvalidParameterError,
        r"augment=<class 'torch.nn.modules.linear.Identity'> is not valid; .* A class "
        r"is not a transform: pass an instance",
    ),
    Bad(
        "augment-with-cache-true",
        {"augment": "light", "cache": True},
        InvalidParameterError,
        r"cache=True is not valid with augment='light': augmentation changes the "
        r"input every epoch",
    ),
    Bad(
        # The input kind is known once the backbone is (strings are photo
        # paths for an image backbone); texts: tests/data/test_augment.py.
        "augment-on-numbers",
        {"augment": "light"},
        InvalidParameterError,
        r"augment='light' augments uint8 images \(N x H x W x C\), but X holds "
        r"array data; use augment=None",
        NUMBERS,
        first=False,
    ),
    Bad(
        "cache",
        {"cache": 1},
        InvalidParameterError,
        r"cache=1 is not valid; use 'auto', True or False",
    ),
    Bad(
        "cache-size",
        {"cache_size": 0},
        InvalidParameterError,
        r"cache_size=0 is not valid; use a positive number",
    ),
    Bad(
        "cache-dtype-torch",
        {"cache_dtype": torch.int8},
        InvalidParameterError,
        r"cache_dtype=torch.int8 is not valid",
    ),
    Bad(
        "cache-dtype-str",
        {"cache_dtype": "int8"},
        InvalidParameterError,
        r"cache_dtype='int8' is not valid; use None \(store as computed\), 'float16'",
    ),
    Bad(
        "channels-last",
        {"channels_last": "yes"},
        InvalidParameterError,
        r"channels_last='yes' is not valid; use 'auto', True or False",
    ),
    Bad(
        "channels-last-on-vectors",
        {"channels_last": True},
        ValueError,
        r"channels_last=True, but the input is not a batch of images",
        NUMBERS,
        first=False,
    ),
    Bad(
        "freeze-auto-tol",
        {"freeze": Freeze("auto", tol=-0.1)},
        InvalidParameterError,
        r"freeze__tol=-0.1 is not valid; use a non-negative number",
    ),
    Bad(
        "freeze-auto-patience",
        {"freeze": Freeze("auto", patience=0)},
        InvalidParameterError,
        r"freeze__patience=0 is not valid; use a positive int",
    ),
    Bad(
        "freeze-auto-restarts",
        {"freeze": "auto", "n_restarts": 2},
        InvalidParameterError,
        r"n_restarts=2 is not valid with freeze='auto'; use n_restarts=1",
    ),
    Bad(
        # Checked against max_epochs once the network is built, as a schedule.
        "freeze-auto-stage-epochs",
        {"freeze": Freeze("auto", stage_epochs=2), "max_epochs": 5},
        InvalidParameterError,
        r"freeze__stage_epochs=2 does not fit max_epochs=5",
        ("array", "image"),
        first=False,
    ),
    Bad(
        "freeze-auto-min-frozen",
        {"freeze": Freeze("auto", min_frozen=3)},
        ValueError,
        r"freeze__min_frozen=3 leaves no depth to search: the backbone has 3 blocks",
        ("array", "image"),
        first=False,
    ),
    Bad(
        "lr",
        {"lr": -1e-3},
        InvalidParameterError,
        r"lr=-0.001 is not valid; use a non-negative number",
    ),
    Bad(
        "max-epochs",
        {"max_epochs": 2.5},
        InvalidParameterError,
        r"max_epochs=2.5 is not valid; use a non-negative int",
    ),
    Bad(
        "batch-size",
        {"batch_size": 0},
        InvalidParameterError,
        r"batch_size=0 is not valid; use a positive int, or -1",
    ),
    Bad(
        "class-weight-word",
        {"class_weight": "balance"},
        InvalidParameterError,
        r"class_weight='balance' is not valid; use None, 'balanced' \(n_samples / "
        r"\(n_classes \* count of the class\)\) or a dict \{class label: "
        r"non-negative weight\}",
    ),
    Bad(
        "class-weight-negative",
        {"class_weight": {0: -1.0, 1: 1.0}},
        InvalidParameterError,
        r"class_weight=\{0: -1.0, 1: 1.0\} is not valid; use None, 'balanced'",
        NUMBERS,
    ),
    Bad(
        "class-weight-nan",
        {"class_weight": {0: float("nan")}},
        InvalidParameterError,
        r"class_weight=\{0: nan\} is not valid; use None, 'balanced'",
        NUMBERS,
    ),
    Bad(
        "class-weight-list",
        {"class_weight": [1.0, 2.0]},
        InvalidParameterError,
        r"class_weight=\[1.0, 2.0\] is not valid; use None, 'balanced'",
        NUMBERS,
    ),
    Bad(
        # Keys are checked against the classes of y once y is known (before
        # the network is built), as scikit-learn does.
        "class-weight-unknown-class",
        {"class_weight": {0: 2.0, 5: 1.0, "5": 1.0}},
        ValueError,
        r"class_weight has keys \[5, '5'\] that are not classes of y; the classes "
        r"are \[0, 1\]",
        ("array", "image"),
        first=False,
    ),
]

rng = np.random.RandomState(0)
#: Each input kind: a backbone that takes it, and 20 samples of it.
INPUTS = {
    "array": (mlp_backbone, rng.normal(size=(20, 8))),
    # The bare encoder: no tokenizer is needed to refuse a parameter.
    "text": (lambda: text_backbone().module(), ["good food", "bad food"] * 10),
    "image": (tiny_cnn, rng.randint(0, 256, size=(20, 8, 8), dtype=np.uint8)),
}
CASES = [(bad, kind) for bad in BAD for kind in bad.inputs]


@pytest.mark.parametrize(
    ("bad", "kind"), CASES, ids=[f"{bad.id}-{kind}" for bad, kind in CASES]
)
def test_a_bad_parameter_is_reported_and_nothing_is_touched(bad, kind):
    # A text-only setting is checked on numbers too, an image one on text.
    make_backbone, X = INPUTS[kind]
    X_before = copy.deepcopy(X)
    built = []
    if bad.first:

        def backbone():
            built.append(1)
            return make_backbone()

    else:
        backbone = make_backbone()
        pristine = state_snapshot(backbone)
        requires_grad = [p.requires_grad for p in backbone.parameters()]
    clf = FineTuneClassifier(**{"backbone": backbone, "max_epochs": 1, **bad.params})
    with pytest.raises(bad.error, match=bad.message):
        clf.fit(X, np.arange(20) % 2)
    if bad.first:
        assert built == []  # nothing was loaded, copied or probed
        assert not hasattr(clf, "module_")
    else:
        assert_same_state(pristine, state_snapshot(backbone))
        assert [p.requires_grad for p in backbone.parameters()] == requires_grad
    if isinstance(X, np.ndarray):
        np.testing.assert_array_equal(X, X_before)
    else:
        assert X == X_before


def test_invalid_parameter_error_is_a_value_and_a_type_error():
    assert issubclass(InvalidParameterError, ValueError)
    assert issubclass(InvalidParameterError, TypeError)


def test_parameters_are_stored_unchanged_and_checked_only_in_fit():
    clf = FineTuneClassifier(mlp_backbone(), max_length=-5, cache="maybe")
    assert clf.get_params()["max_length"] == -5
    assert clf.cache == "maybe"
    clf.set_params(max_length=None, cache="auto").fit(X8, Y2)
    assert clf.predict(X8).shape == (20,)
