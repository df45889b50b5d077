"""Shared tiny backbones and data for the test suite."""

import os

# scikit-learn runs its array-API dispatch check only when SciPy's array API
# support is switched on, which must happen before SciPy is imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np
import pytest
import torch
from torch import nn


def mlp_backbone(n_in: int = 8, width: int = 16) -> nn.Sequential:
    """Three linear blocks; a tiny stand-in for a pretrained tabular network."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(n_in, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(width, width),
            nn.ReLU(),
        )


class TinyCNN(nn.Module):
    """A non-Sequential CNN with BatchNorm: stem, two stages, global pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.stage1 = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.stage2 = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        # Children run in an order that differs from their definition order
        # only in the pooling; the block map follows the forward pass.
        x = self.stem(x)
        x = self.stage1(x)
        x = self.stage2(x)
        return self.pool(x).flatten(1)


def tiny_cnn() -> TinyCNN:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TinyCNN()


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


def state_snapshot(module: nn.Module) -> dict:
    """Parameters and buffers, cloned, by name."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
