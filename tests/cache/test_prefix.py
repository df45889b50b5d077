"""The frozen-prefix cache of an estimator: exactness, reuse, when it is off."""

import tracemalloc

import numpy as np
import pytest
import torch
from helpers import (
    CountingLinear,
    counting_backbone,
    mlp_backbone,
    text_backbone,
    tiny_cnn,
)
from helpers import (
    make_classifier as make,
)
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback
from torch import nn

from sktune import Backbone, FineTuneClassifier, Freeze
from sktune.cache import STORE
from sktune.cache.prefix import PrefixCache


@pytest.mark.parametrize("freeze", ["all", 1, 2, Freeze(depth=-1)])
def test_cache_on_and_off_give_the_same_model(blobs, freeze):
    X, y = blobs
    on = make(freeze=freeze).fit(X, y)
    off = make(freeze=freeze, cache=False).fit(X, y)
    assert on.cache_info_["enabled"] and not off.cache_info_["enabled"]
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-5)
    for (name, a), b in zip(
        on.module_.named_parameters(), off.module_.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_cached_batches_through_a_validation_split_and_drop_last(blobs):
    # Cached rows are indexed a batch at a time (RowsDataset), also through
    # skorch's validation Subset; the loader's sampler, and so the batch
    # order, is the same as without the cache.
    from skorch.dataset import ValidSplit

    X, y = blobs
    kwargs = dict(
        freeze=1,
        train_split=ValidSplit(0.2, stratified=True, random_state=0),
        iterator_train__drop_last=True,
        batch_size=16,
    )
    on = make(**kwargs).fit(X, y)
    off = make(cache=False, **kwargs).fit(X, y)
    assert on.cache_info_["enabled"]
    # 120 training samples: 7 full batches (drop_last); 30 validation: 2.
    assert len(on.history_[-1]["batches"]) == len(off.history_[-1]["batches"]) == 9
    for key in ("train_loss", "valid_loss", "valid_acc"):
        np.testing.assert_allclose(
            on.history_[:, key], off.history_[:, key], atol=1e-5, err_msg=key
        )
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-5)


def test_a_custom_dataset_turns_the_cache_off_for_prediction_too(blobs):
    # Its transforms would be skipped (or fed cached outputs) otherwise.
    from skorch.dataset import Dataset as SkorchDataset

    class Shifted(SkorchDataset):
        def transform(self, X, y):
            X, y = super().transform(X, y)
            return X + 1.0, y

    X, y = blobs
    clf = make(freeze="all", dataset=Shifted, cache_dtype="float16").fit(X, y)
    assert not clf.cache_info_["enabled"]
    assert STORE.nbytes() == 0
    plain = make(freeze="all", cache=False).fit(X + 1.0, y)
    np.testing.assert_allclose(
        clf.predict_proba(X), plain.predict_proba(X + 1.0), atol=1e-5
    )
    assert STORE.nbytes() == 0


def test_frozen_prefix_runs_once_per_sample_not_once_per_epoch(blobs):
    X, y = blobs
    CountingLinear.seen = 0
    make(counting_backbone(), freeze=1, max_epochs=5, cache=False).fit(X, y)
    uncached = CountingLinear.seen
    CountingLinear.seen = 0
    clf = make(counting_backbone(), freeze=1, max_epochs=5).fit(X, y)
    assert clf.module_.split.cut == 2  # Linear and the ReLU after it
    assert uncached >= 5 * len(X)
    # One pass (its last batch padded to the batch size), plus a few probe samples.
    assert CountingLinear.seen <= len(X) + clf.batch_size + 4


def test_grid_search_candidates_and_folds_share_prefix_outputs(blobs):
    X, y = blobs
    search = GridSearchCV(
        make(freeze="all", max_epochs=2), {"lr": [1e-3, 1e-2, 1e-1]}, cv=3, refit=False
    )
    search.fit(X, y)
    # 3 candidates x 3 folds x (fit + score) touch 18 subsets; each sample's
    # features were computed once.
    assert STORE.nbytes() == len(X) * 16 * 4
    clf = clone(search.estimator).fit(X, y)
    assert clf.cache_info_ == {
        "enabled": True,
        "reason": None,
        "computed": 0,
        "reused": len(X),
    }


def test_different_data_or_weights_are_not_confused(blobs):
    X, y = blobs
    backbone = mlp_backbone()
    first = make(backbone, freeze="all").fit(X, y)
    shifted = make(backbone, freeze="all").fit(X + 1.0, y)
    assert shifted.cache_info_["computed"] == len(X)
    with torch.no_grad():
        backbone[0].weight.mul_(2.0)  # a user changing the module in place
    changed = make(backbone, freeze="all").fit(X, y)
    assert changed.cache_info_["computed"] == len(X)
    assert not np.allclose(first.predict_proba(X), changed.predict_proba(X))


def test_text_linear_probe_is_cached(reviews):
    texts, labels = reviews
    on = FineTuneClassifier(
        text_backbone(), freeze="all", lr=1e-2, max_epochs=10, random_state=0
    ).fit(texts, labels)
    off = FineTuneClassifier(
        text_backbone(),
        freeze="all",
        lr=1e-2,
        max_epochs=10,
        random_state=0,
        cache=False,
    ).fit(texts, labels)
    assert on.cache_info_["enabled"]
    np.testing.assert_allclose(
        on.predict_proba(texts), off.predict_proba(texts), atol=1e-5
    )
    partial = FineTuneClassifier(text_backbone(), freeze=1, max_epochs=1).fit(
        texts, labels
    )
    assert partial.cache_info_ == {
        "enabled": False,
        "reason": "the backbone takes keyword inputs and is no known text encoder, "
        "so only freeze='all' is cached",
        "computed": 0,
        "reused": 0,
    }


class TokenModel(nn.Module):
    """Adds a learned token between children: not a chain of its children."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.token = nn.Parameter(torch.ones(8))
        self.block = nn.Linear(8, 8)

    def forward(self, x):
        return self.block(self.embed(x) + self.token)


@pytest.mark.parametrize(
    ("backbone", "kwargs", "reason"),
    [
        (
            TokenModel,
            {"freeze": ["embed.*"]},
            "running the backbone's children in order does not reproduce its forward pass",
        ),
        (mlp_backbone, {"freeze": 0}, "no frozen block at the input side"),
        (
            mlp_backbone,
            {"freeze": 1, "cache_size": 1e-3},
            "need 0 MB, more than cache_size=0.001 MB",
        ),
        (
            mlp_backbone,
            {
                "freeze": 1,
                "iterator_train__collate_fn": torch.utils.data.default_collate,
            },
            "a custom dataset or collate_fn may augment the data",
        ),
        (mlp_backbone, {"freeze": 1, "cache": False}, "cache=False"),
    ],
)
def test_cache_off_with_the_reason(blobs, images, backbone, kwargs, reason):
    X, y = images if backbone is tiny_cnn else blobs
    clf = make(backbone(), max_epochs=1, **kwargs).fit(X, y)
    assert not clf.cache_info_["enabled"]
    assert reason in clf.cache_info_["reason"]


def test_cache_true_raises_when_impossible(blobs):
    X, y = blobs
    with pytest.raises(
        ValueError,
        match=r"cache=True, but the frozen prefix cannot be cached: no frozen block",
    ):
        make(freeze=0, cache=True).fit(X, y)


def test_verbose_says_why_the_cache_is_off(blobs, capsys):
    X, y = blobs
    make(freeze=0, verbose=2, max_epochs=1).fit(X, y)
    assert (
        "Frozen-prefix cache off: no frozen block at the input side."
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("cache", "size", "message"),
    [
        ("yes", 10, r"cache='yes' is not valid; use 'auto', True or False"),
        ("auto", -1, r"cache_size=-1 is not valid"),
    ],
)
def test_bad_cache_parameters(blobs, cache, size, message):
    X, y = blobs
    with pytest.raises(ValueError, match=message):
        make(cache=cache, cache_size=size).fit(X, y)


def test_backbone_wrapper_shares_the_fingerprint_between_clones(blobs):
    X, y = blobs
    clf = make(Backbone(mlp_backbone()), freeze="all")
    clf.fit(X, y)
    again = clone(clf).fit(X, y)
    assert again.cache_info_["reused"] == len(X)


@pytest.mark.parametrize("storage", ["float16", torch.bfloat16])
def test_half_precision_storage_halves_the_cache(blobs, storage):
    X, y = blobs
    full = make(freeze="all").fit(X, y)
    assert STORE.nbytes() == len(X) * 16 * 4
    STORE.clear()
    half = make(freeze="all", cache_dtype=storage).fit(X, y)
    assert STORE.nbytes() == len(X) * 16 * 2
    assert half.embed(X).dtype == np.float32
    np.testing.assert_allclose(half.embed(X), full.embed(X), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(half.predict_proba(X), full.predict_proba(X), atol=0.05)


def test_cache_size_counts_the_storage_precision(blobs):
    X, y = blobs
    budget = len(X) * 16 * 3 / 2**20  # between the float16 and float32 sizes
    assert not make(freeze="all", cache_size=budget).fit(X, y).cache_info_["enabled"]
    half = make(freeze="all", cache_size=budget, cache_dtype="float16").fit(X, y)
    assert half.cache_info_["enabled"]


class StopTraining(Callback):
    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            raise KeyboardInterrupt


@pytest.mark.parametrize("freeze", ["all", 1])
def test_the_prefix_pass_never_copies_x(monkeypatch, freeze):
    # The prefix runs over the samples not yet cached, drawn batch by batch:
    # X itself is never copied to be read (X[all indices] would double it),
    # and the outputs are written once into the tensor the fit reads.
    X = np.random.default_rng(0).integers(0, 255, (1000, 64, 64, 1), dtype=np.uint8)
    y = np.arange(len(X)) % 2
    peaks = []
    outputs = PrefixCache.outputs

    def traced(self, *args, **kwargs):
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        rows = outputs(self, *args, **kwargs)
        peaks.append(tracemalloc.get_traced_memory()[1] - start)
        return rows

    monkeypatch.setattr(PrefixCache, "outputs", traced)
    # The pass runs before the first training batch, where the fit stops
    # (skorch ends a fit at a KeyboardInterrupt): training is not measured.
    clf = make(
        tiny_cnn(), freeze=freeze, max_epochs=1, verbose=0, callbacks=[StopTraining()]
    )
    tracemalloc.start()
    try:
        clf.fit(X, y)
    finally:
        tracemalloc.stop()
    assert clf.cache_info_["computed"] == len(X)
    assert peaks and max(peaks) < X.nbytes / 4
