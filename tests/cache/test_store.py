"""The process-wide store: fingerprints, its budget, clearing it."""

import numpy as np
import pytest
import torch
from helpers import make_classifier, mlp_backbone

from sktune import clear_cache, set_cache_budget
from sktune.cache import STORE, FeatureStore, fingerprint


def test_fingerprint_follows_in_place_updates():
    module = mlp_backbone()
    before = fingerprint(module)
    assert fingerprint(module) == before
    with torch.no_grad():
        module[2].bias.add_(1.0)
    assert fingerprint(module) != before


def rows(n, floats):
    return [torch.zeros(floats) for _ in range(n)]


def test_the_budget_evicts_the_least_recently_used_context():
    store = FeatureStore(budget_mb=3 * 1000 * 4 / 2**20)  # three 1000-float rows
    store.insert("a", [b"1"], rows(1, 1000))
    store.insert("b", [b"1"], rows(1, 1000))
    store.lookup("a", [b"1"])  # "a" is now the most recently used
    store.insert("c", [b"1", b"2"], rows(2, 1000))
    assert store.lookup("b", [b"1"]) == [None]
    assert store.lookup("a", [b"1"])[0] is not None
    assert store.nbytes() == 3 * 1000 * 4
    # A context larger than the whole budget is kept while it is the newest.
    store.insert("d", [b"1", b"2", b"3", b"4"], rows(4, 1000))
    assert store.nbytes() == 4 * 1000 * 4


def test_set_cache_budget_belongs_to_the_store(blobs):
    X, y = blobs
    previous = set_cache_budget(0.001)
    try:
        assert STORE.budget_mb == 0.001
        # One fit may still cache (its cache_size allows it); the store keeps
        # only the newest context beyond its budget.
        first = make_classifier(freeze="all").fit(X, y)
        second = make_classifier(freeze=1).fit(X, y)
        assert first.cache_info_["enabled"] and second.cache_info_["enabled"]
        assert len(STORE._contexts) == 1
    finally:
        assert set_cache_budget(previous) == 0.001
    with pytest.raises(ValueError, match=r"megabytes=-1 is not valid"):
        set_cache_budget(-1)


def test_clear_cache_frees_everything_and_fitted_estimators_recompute(blobs):
    X, y = blobs
    clf = make_classifier(freeze="all").fit(X, y)
    assert STORE.nbytes() == len(X) * 16 * 4
    proba = clf.predict_proba(X)
    clear_cache()
    assert STORE.nbytes() == 0
    computed = clf.cache_info_["computed"]
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
    assert clf.cache_info_["computed"] == computed + len(X)
