"""The generic chain-of-children cut, on tiny and on real architectures."""

import numpy as np
import pytest
import torch
from helpers import (
    make_classifier as make,
)
from helpers import (
    tiny_cnn,
)

from sktune import Backbone, FineTuneClassifier, Freeze
from sktune.cache import STORE


def test_chain_split_of_a_cnn_and_prediction_from_the_cache(images):
    X, y = images
    clf = make(tiny_cnn(), freeze=2, lr=3e-3).fit(X, y)
    assert clf.module_.split.units == (
        "stem.0",
        "stem.1",
        "stem.2",
        "stage1.0",
        "stage1.1",
        "stage1.2",
        "stage2.0",
        "stage2.1",
        "stage2.2",
        "pool",
    )
    assert clf.module_.split.cut == 6
    reused = clf.cache_info_["reused"]
    proba = clf.predict_proba(X)
    assert clf.cache_info_["reused"] == reused + len(X)  # predict read the store
    off = make(tiny_cnn(), freeze=2, lr=3e-3, cache=False).fit(X, y)
    np.testing.assert_allclose(proba, off.predict_proba(X), atol=1e-5)


def test_train_bn_cuts_before_the_first_trained_batchnorm(images):
    X, y = images
    clf = make(tiny_cnn(), freeze=Freeze(depth=2, train_bn=True), max_epochs=1).fit(
        X, y
    )
    assert clf.cache_info_["enabled"]
    assert clf.module_.split.units[: clf.module_.split.cut] == ("stem.0",)


def test_half_precision_storage_of_a_cnn_cut(images):
    X, y = images
    full = make(tiny_cnn(), freeze=2, lr=3e-3).fit(X, y)
    half = make(tiny_cnn(), freeze=2, lr=3e-3, cache_dtype="float16").fit(X, y)
    assert half.module_.split.cut == 6 and half.cache_info_["enabled"]
    stored = STORE._contexts[half.prefix_cache_.key].values()
    assert stored and all(row.dtype == torch.float16 for row in stored)
    assert np.mean(half.predict(X) == full.predict(X)) > 0.95


@pytest.mark.parametrize(
    ("spec", "first_unit", "vit"),
    [
        ("torchvision:resnet18", "conv1", None),
        # A flatten between its pooling and its MLP classifier:
        ("torchvision:mobilenet_v3_small", "features.0.0", None),
        ("timm:efficientnet_b0", "conv_stem", None),
        ("timm:deit_tiny_patch16_224", None, "timm"),
    ],
)
def test_real_architectures_are_cut_exactly(spec, first_unit, vit):
    # Random weights (nothing is downloaded): the cut and its exactness only
    # depend on the architecture. The vision transformer is built for 32x32
    # input (4 patches), like the CNNs.
    backbone = Backbone(spec, pretrained=False, **({"img_size": 32} if vit else {}))
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    y = np.arange(8) % 2
    # Two steps: the cached rows train (shuffled) and predict; the optimizer
    # step over millions of parameters is most of the cost.
    kwargs = dict(freeze=2, max_epochs=1, batch_size=4, lr=1e-3, random_state=0)
    on = FineTuneClassifier(backbone, **kwargs).fit(X, y)
    assert on.cache_info_["enabled"], on.cache_info_["reason"]
    split = on.module_.split
    assert getattr(split, "kind", None) == vit
    assert (split.units[0] if hasattr(split, "units") else None) == first_unit
    off = FineTuneClassifier(backbone, cache=False, **kwargs).fit(X, y)
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-5)
