"""Fixtures shared by the test suite; tiny models live in helpers.py (those
saved to disk, which need a temporary directory, are fixtures here)."""

import os

# scikit-learn runs its array-API dispatch check only when SciPy's array API
# support is switched on, which must happen before SciPy is imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
# Torch's OpenMP threads spin while they wait for work. Where the cores are
# shared (another test run, a benchmark), a spinning thread holds the core its
# partner needs: tiny fits ran 30-50 times slower, an EfficientNet fit 4-25
# times. Waiting passively changes no result (the same threads split the work
# the same way). On idle cores spinning is faster for the real-model tests
# (one EfficientNet test: 10 s spinning, 17 s passive): set
# OMP_WAIT_POLICY=ACTIVE there. Set before torch is imported; worker
# processes and the notebook's kernel inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from sktune import clear_cache


@pytest.fixture(autouse=True)
def empty_cache():
    """Each test starts and ends with an empty frozen-prefix cache."""
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def blobs():
    """A 3-class tabular problem with 8 features that a small MLP learns fast."""
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=150, n_features=8, centers=3, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    return X, y


@pytest.fixture(scope="module")
def images():
    """8x8 digit images as float N x 1 x 8 x 8, classes 0-2."""
    from sklearn.datasets import load_digits

    X, y = load_digits(n_class=3, return_X_y=True)
    return (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)[:120], y[:120]


@pytest.fixture(scope="module")
def reviews():
    """Short synthetic reviews whose label is carried by one word."""
    rng = np.random.RandomState(0)
    filler = [
        "the",
        "food",
        "was",
        "service",
        "really",
        "quite",
        "place",
        "staff",
        "very",
    ]
    texts, labels = [], []
    for i in range(120):
        label = i % 2
        words = list(rng.choice(filler, size=rng.randint(2, 8)))
        words.insert(rng.randint(len(words) + 1), "great" if label else "awful")
        texts.append(" ".join(words))
        labels.append("pos" if label else "neg")
    return texts, np.array(labels)


def _saved_encoder(tmp_path_factory, texts, family):
    from helpers import save_tiny_hf_encoder

    from sktune import Backbone

    path = tmp_path_factory.mktemp(family)
    return Backbone(str(save_tiny_hf_encoder(path, texts, family)))


@pytest.fixture(scope="module")
def tiny_bert_encoder(tmp_path_factory, reviews):
    """A 3-layer BERT saved as a hub directory with a word-level tokenizer of
    the reviews' words, as a Backbone."""
    return _saved_encoder(tmp_path_factory, reviews[0], "bert")


@pytest.fixture(scope="module")
def tiny_distilbert_encoder(tmp_path_factory, reviews):
    """The DistilBERT counterpart of ``tiny_bert_encoder``."""
    return _saved_encoder(tmp_path_factory, reviews[0], "distilbert")
