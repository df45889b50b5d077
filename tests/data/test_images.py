"""uint8 images: preprocessing, resizing, the channels-last layout."""

import numpy as np
import pytest
import torch
from helpers import (
    mlp_backbone,
    tiny_cnn,
)
from torch import nn

from sktune import FineTuneClassifier, Freeze
from sktune.cache import STORE
from sktune.data import ImagePreprocess


def test_uint8_images_are_converted_per_batch(images):
    X, y = images
    X8 = np.round(X[:, 0] * 255).astype(np.uint8)  # N x H x W grayscale
    # A random-init CNN learns from scratch: the backbone at the head's rate,
    # its BatchNorm statistics learned too.
    params = dict(
        freeze=Freeze(1, train_bn=True),
        lr=3e-3,
        backbone_lr=3e-3,
        max_epochs=10,
        random_state=0,
    )
    clf = FineTuneClassifier(tiny_cnn(), **params)
    clf.fit(X8, y)
    assert clf.score(X8, y) > 0.8
    # The same images as floats in [0, 1], N x C x H x W, give the same model.
    floats = torch.as_tensor(X8).float().div(255).unsqueeze(1).numpy()
    as_float = FineTuneClassifier(tiny_cnn(), **params)
    np.testing.assert_allclose(
        as_float.fit(floats, y).predict_proba(floats), clf.predict_proba(X8), atol=1e-5
    )


def test_image_preprocess_normalizes_and_resizes():
    x = torch.full((2, 4, 6, 3), 255, dtype=torch.uint8)
    out = ImagePreprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=(8, 8))(x)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out, torch.ones_like(out))
    floats = torch.rand(2, 3, 5, 5)
    assert ImagePreprocess(size=(8, 8))(floats) is floats


def test_image_size_resizes_uint8_images(images):
    X, y = images
    X8 = np.round(X[:, 0] * 255).astype(np.uint8)
    clf = FineTuneClassifier(
        tiny_cnn(), image_size=16, max_epochs=1, random_state=0
    ).fit(X8, y)
    assert clf.module_.preprocess.size == (16, 16)
    # Resized anyway, images of another size are welcome after fit too.
    big = np.repeat(np.repeat(X8, 3, axis=1), 3, axis=2)  # 24 x 24
    assert clf.module_.preprocess(torch.as_tensor(big[:2])).shape == (2, 1, 16, 16)
    proba = clf.predict_proba(big)
    assert proba.shape == (len(big), 3) and np.isfinite(proba).all()
    clf.partial_fit(big, y)
    assert clf.input_spec_.shape == (8, 8)  # what fit saw, not partial_fit


def five_band_cnn():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(5, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )


def test_multispectral_uint8_images_reach_a_backbone_that_takes_their_bands():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(16, 12, 12, 5), dtype=np.uint8)
    y = np.arange(16) % 2
    params = dict(max_epochs=2, random_state=0, channels_last=False)
    clf = FineTuneClassifier(five_band_cnn(), **params).fit(X, y)
    assert clf.input_spec_.kind == "image" and clf.input_spec_.shape == (12, 12, 5)
    # Without a pretrained normalization, pixels are scaled to [0, 1] only:
    # the same model as float N x C x H x W images.
    floats = (X.transpose(0, 3, 1, 2) / 255).astype(np.float32)
    as_float = FineTuneClassifier(five_band_cnn(), **params).fit(floats, y)
    np.testing.assert_allclose(
        clf.predict_proba(X), as_float.predict_proba(floats), atol=1e-5
    )


def test_more_channels_than_the_pretrained_normalization_are_refused():
    x = torch.zeros((1, 4, 4, 5), dtype=torch.uint8)
    assert ImagePreprocess()(x).shape == (1, 5, 4, 4)  # mean 0, std 1: any bands
    imagenet = ImagePreprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(
        ValueError,
        match=r"The images have 5 channels, but the backbone's pretrained "
        r"normalization has 3 \(\[0.485",
    ):
        imagenet(x)


# -- channels-last layout


def make(backbone, **kwargs):
    params = dict(freeze=1, max_epochs=3, lr=3e-3, random_state=0)
    params.update(kwargs)
    return FineTuneClassifier(backbone, **params)


def conv_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_auto_runs_a_cnn_channels_last_and_leaves_the_users_module_alone(images):
    X, y = images
    backbone = tiny_cnn()
    clf = make(backbone).fit(X, y)
    assert clf.module_.channels_last
    trained = conv_weights(clf.module_.backbone)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in trained)
    assert not all(w.is_contiguous() for w in trained)  # a 1-channel conv is both
    # The user's module keeps its layout (and, as tested elsewhere, its values).
    assert all(w.is_contiguous() for w in conv_weights(backbone))


def test_the_layout_changes_rounding_only(images):
    X, y = images
    clf = make(tiny_cnn()).fit(X, y)
    proba = clf.predict_proba(X)
    # The same trained weights, run in the default layout.
    clf.module_.backbone.to(memory_format=torch.contiguous_format)
    clf.module_.channels_last = False
    STORE.clear()
    np.testing.assert_allclose(clf.predict_proba(X), proba, atol=1e-5)


@pytest.mark.parametrize("cache", ["auto", False])
def test_training_in_either_layout_learns_the_same(images, cache):
    X, y = images
    fast = make(tiny_cnn(), cache=cache, max_epochs=10).fit(X, y)
    plain = make(tiny_cnn(), cache=cache, max_epochs=10, channels_last=False).fit(X, y)
    assert fast.module_.channels_last and not plain.module_.channels_last
    # Adam turns rounding differences of near-zero gradients into steps of
    # size lr, so the weights drift apart slightly; the models agree.
    np.testing.assert_allclose(fast.predict_proba(X), plain.predict_proba(X), atol=0.02)
    assert np.mean(fast.predict(X) == plain.predict(X)) > 0.95


def test_not_used_for_vectors(blobs):
    X, y = blobs
    assert not make(mlp_backbone()).fit(X, y).module_.channels_last


class FlattensWithView(nn.Module):
    """A CNN whose forward calls ``.view``, which channels-last tensors refuse."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)  # a layout-sensitive weight
        self.fc = nn.Linear(4 * 8 * 8, 8)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(h.view(h.shape[0], -1))


def test_a_backbone_that_fails_channels_last_falls_back_under_auto(images):
    X, y = images
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = FlattensWithView()
    clf = make(backbone, freeze=0, backbone_lr=3e-3).fit(X, y)
    assert not clf.module_.channels_last
    # The failed check put the weights back in the default layout.
    weights = conv_weights(clf.module_.backbone)
    assert all(w.is_contiguous() for w in weights)
    assert not weights[1].is_contiguous(memory_format=torch.channels_last)
    assert clf.score(X, y) > 0.5
    with pytest.raises(
        ValueError, match=r"channels_last=True, but it fails in channels-last layout"
    ):
        make(backbone, freeze=0, channels_last=True).fit(X, y)
