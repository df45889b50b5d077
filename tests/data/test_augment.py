"""augment: training batches only, per image, seeded, beside the cache."""

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from helpers import TinyCNN, text_backbone, tiny_cnn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from torchvision.transforms import v2

from sktune import FineTuneClassifier, FineTuneRegressor
from sktune._params import InvalidParameterError
from sktune.data.augment import PerImage, batch_augment
from sktune.data.images import image_preprocess

rng = np.random.RandomState(0)
# 24 gray 16x16 images (uint8 N x H x W); the class is the brighter half.
X = rng.randint(0, 256, size=(24, 16, 16), dtype=np.uint8)
X[:, :, :8] //= 2
X[1::2] = X[1::2, :, ::-1]
Y = np.arange(24) % 2


def fit(augment, **params):
    defaults = dict(
        augment=augment, max_epochs=2, batch_size=8, lr=1e-2, random_state=0
    )
    defaults.update(params)
    return FineTuneClassifier(tiny_cnn(), verbose=0, **defaults).fit(X, Y)


def flip_rows(batch):
    """A module-level augment (cloned and pickled by reference)."""
    return batch.flip(-2)


class Recording(TinyCNN):
    """TinyCNN that records what it is given, and in which mode."""

    seen = []  # shared by the training copies

    def forward(self, x):
        Recording.seen.append((self.training, x.detach().clone()))
        return super().forward(x)


def recording_cnn():
    torch.manual_seed(0)
    return Recording()


# -- training batches only ---------------------------------------------------------


@pytest.mark.parametrize("augment", [None, "light"])
def test_only_training_batches_are_augmented(augment):
    Recording.seen.clear()
    clf = FineTuneClassifier(
        recording_cnn(),
        augment=augment,
        max_epochs=2,
        batch_size=24,
        iterator_train__shuffle=False,
        random_state=0,
        verbose=0,
    ).fit(X, Y)
    training = [x for mode, x in Recording.seen if mode]
    Recording.seen.clear()
    clf.predict(X)
    (evaluated,) = [x for mode, x in Recording.seen if not mode]
    assert len(training) == 2  # one batch an epoch, the whole set
    if augment is None:
        assert all(torch.equal(x, evaluated) for x in training)
    else:
        assert not torch.equal(training[0], evaluated)
        assert not torch.equal(training[0], training[1])  # new draws every epoch
        assert training[0].shape == evaluated.shape  # cropped back to 16x16


def test_predictions_and_embed_take_the_unaugmented_path():
    clf = fit("strong")
    plain = copy.deepcopy(clf)
    plain.module_.preprocess.augment = None
    np.testing.assert_array_equal(clf.predict_proba(X), plain.predict_proba(X))
    np.testing.assert_array_equal(clf.embed(X), plain.embed(X))
    # Untrained, the head is the same as augment=None's: planning (the probe,
    # the cut's check) neither augments nor draws from the RNG.
    np.testing.assert_array_equal(
        fit("light", max_epochs=0).predict_proba(X),
        fit(None, max_epochs=0).predict_proba(X),
    )


@pytest.mark.parametrize("freeze", [None, "all"])
def test_a_callable_is_called_on_training_batches_only(freeze):
    calls = []

    def record(batch):
        calls.append((batch.dtype, tuple(batch.shape)))
        return batch

    # A frozen backbone runs in eval mode; the preprocessing still trains.
    clf = fit(record, freeze=freeze, max_epochs=2, batch_size=8)
    assert calls == [(torch.uint8, (8, 1, 16, 16))] * 6  # 3 batches, 2 epochs
    clf.predict(X)
    clf.embed(X)
    assert len(calls) == 6
    # Set on a fitted estimator, the new value trains the next partial_fit.
    calls.clear()
    clf.set_params(augment=None).partial_fit(X, Y)
    assert calls == []
    clf.set_params(augment=record, max_epochs=1).partial_fit(X, Y)
    assert len(calls) == 3


# -- per image, seeded ---------------------------------------------------------------


@pytest.mark.parametrize("policy", ["light", "strong"])
def test_identical_images_in_one_batch_get_their_own_draw(policy):
    image = torch.as_tensor(rng.randint(0, 256, size=(3, 20, 20), dtype=np.uint8))
    batch = image.expand(4, -1, -1, -1)
    torch.manual_seed(0)
    out = PerImage(policy)(batch)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    assert not torch.equal(out[0], out[1])
    # Through the preprocessing in training mode (N x H x W x C in).
    pre = image_preprocess(None, None)
    pre.augment = batch_augment(policy)
    nhwc = batch.permute(0, 2, 3, 1)
    torch.manual_seed(0)
    trained = pre.train()(nhwc)
    assert not torch.allclose(trained[0], trained[1])
    evaluated = pre.eval()(nhwc)
    assert torch.equal(evaluated[0], evaluated[1])


def test_the_same_random_state_gives_the_same_model():
    first = fit("strong", random_state=3).predict_proba(X)
    np.testing.assert_array_equal(first, fit("strong", random_state=3).predict_proba(X))
    assert not np.array_equal(first, fit("strong", random_state=4).predict_proba(X))
    # The global RNG is left as it was.
    torch.manual_seed(1)
    expected = torch.rand(1)
    torch.manual_seed(1)
    fit("light")
    assert torch.equal(torch.rand(1), expected)


# -- the frozen-prefix cache -----------------------------------------------------------


@pytest.mark.parametrize("freeze", [1, "all"])
def test_training_runs_uncached_and_predictions_use_the_cache(freeze):
    clf = fit("light", freeze=freeze)
    assert clf.cache_info_["enabled"] is False
    assert clf.cache_info_["reason"] == "augment='light' changes the input every epoch"
    assert clf.cache_info_["computed"] == 0
    proba = clf.predict_proba(X)
    assert clf.cache_info_["computed"] == len(X)  # the prefix pass, once
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
    assert clf.cache_info_["reused"] == len(X)
    # A callable is named in the reason.
    assert fit(flip_rows, freeze=1).cache_info_["reason"] == (
        "augment=flip_rows changes the input every epoch"
    )


def test_cache_true_with_augment_is_refused_before_any_work():
    clf = FineTuneClassifier(tiny_cnn(), augment="light", cache=True)
    with pytest.raises(
        InvalidParameterError,
        match=r"cache=True is not valid with augment='light': augmentation changes "
        r"the input every epoch",
    ):
        clf.fit(X, Y)
    assert not hasattr(clf, "module_")


# -- the callable's contract and other inputs ------------------------------------------


@pytest.mark.parametrize(
    ("fn", "got"),
    [
        (lambda b: b.float(), r"a torch.float32 tensor of shape \(8, 1, 16, 16\)"),
        (lambda b: b[:4], r"a torch.uint8 tensor of shape \(4, 1, 16, 16\)"),
        (lambda b: b.expand(-1, 3, -1, -1), r"a torch.uint8 tensor of shape \(8, 3,"),
        (lambda b: b.numpy(), r"an object of type ndarray"),
    ],
    ids=["float", "fewer-images", "more-channels", "numpy"],
)
def test_a_callable_that_breaks_the_contract_is_named(fn, got):
    with pytest.raises(
        InvalidParameterError,
        match=r"augment=<lambda> must return a uint8 N x C x H x W tensor with the "
        r"batch's N=8 and C=1 \(it is given a uint8 batch of shape \(8, 1, 16, 16\)\); "
        r"it returned " + got,
    ):
        fit(fn)


def test_a_callable_may_change_the_size():
    clf = fit(v2.RandomCrop(12), image_size=16)
    assert clf.predict(X).shape == (24,)


@pytest.mark.parametrize(
    ("X_bad", "kind"),
    [
        (rng.normal(size=(24, 8)).astype(np.float32), "array"),
        (rng.rand(24, 1, 16, 16).astype(np.float32), "array"),  # float images
    ],
)
def test_augment_on_other_input_is_refused(X_bad, kind):
    clf = FineTuneClassifier(tiny_cnn(), augment="light")
    with pytest.raises(
        InvalidParameterError,
        match=rf"augment='light' augments uint8 images \(N x H x W x C\), but X holds "
        rf"{kind} data; use augment=None",
    ):
        clf.fit(X_bad, Y)
    assert not hasattr(clf, "module_")


def test_augment_on_texts_is_refused():
    clf = FineTuneClassifier(text_backbone(), augment="strong")
    with pytest.raises(
        InvalidParameterError,
        match=r"augment='strong' augments uint8 images \(N x H x W x C\), but X "
        r"holds text data; use augment=None",
    ):
        clf.fit(["good food", "bad food"] * 12, Y)
    assert not hasattr(clf, "module_")


def test_strong_needs_one_or_three_channels():
    four = rng.randint(0, 256, size=(24, 16, 16, 4), dtype=np.uint8)
    with pytest.raises(
        InvalidParameterError,
        match=r"augment='strong' applies TrivialAugmentWide, which takes 1- or "
        r"3-channel images, but X holds 4-channel images",
    ):
        FineTuneClassifier(tiny_cnn(), augment="strong").fit(four, Y)


# -- search, clone, pickle, save ---------------------------------------------------------


def test_augment_is_tuned_in_a_grid_search():
    search = GridSearchCV(
        FineTuneClassifier(tiny_cnn(), max_epochs=1, random_state=0, verbose=0),
        {"augment": [None, "light", flip_rows]},
        cv=2,
    ).fit(X, Y)
    assert [p["augment"] for p in search.cv_results_["params"]] == [
        None,
        "light",
        flip_rows,
    ]
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


@pytest.mark.parametrize(
    "augment", [flip_rows, v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(16)])]
)
def test_a_callable_augment_survives_clone_and_pickle(augment):
    est = FineTuneRegressor(tiny_cnn(), augment=augment, max_epochs=1, verbose=0)
    assert clone(est).augment is augment or isinstance(clone(est).augment, v2.Compose)
    fitted = est.fit(X, Y.astype(np.float32))
    loaded = pickle.loads(pickle.dumps(fitted))
    assert type(loaded.augment) is type(augment)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))


def test_save_pretrained_keeps_a_named_augment_and_leaves_out_a_callable(tmp_path):
    named = fit("light", freeze=1)
    named.save_pretrained(tmp_path / "named")
    loaded = FineTuneClassifier.from_pretrained(tmp_path / "named", backbone=tiny_cnn())
    assert loaded.augment == "light"
    np.testing.assert_array_equal(loaded.predict_proba(X), named.predict_proba(X))

    own = fit(flip_rows, freeze=1)
    own.save_pretrained(tmp_path / "own")
    config = json.loads((tmp_path / "own" / "sktune_config.json").read_text())
    assert "augment" in config["not_saved"]
    loaded = FineTuneClassifier.from_pretrained(tmp_path / "own", backbone=tiny_cnn())
    assert loaded.augment is None  # not needed to predict
    np.testing.assert_array_equal(loaded.predict_proba(X), own.predict_proba(X))
