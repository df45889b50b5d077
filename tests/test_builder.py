"""The network builder: data-free planning on the training device."""

import pickle

import numpy as np
import pytest
from helpers import mlp_backbone, text_backbone
from torch import nn

from sktune import FineTuneClassifier, FineTuneRegressor
from sktune.data import FittedInput


def distinctive_rows(n=40, width=8):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(n, width)).astype(np.float32)
    X[0] = np.arange(1, width + 1) * 1234.5678  # a first row like no other
    return X


@pytest.mark.parametrize("freeze", [None, 1, "all"])
def test_a_fitted_estimator_on_arrays_holds_no_training_sample(freeze):
    X = distinctive_rows()
    y = np.arange(len(X)) % 2
    clf = FineTuneClassifier(mlp_backbone(), freeze=freeze, max_epochs=2).fit(X, y)
    blob = pickle.dumps(clf)
    for row in X:
        for dtype in (np.float32, np.float64):
            assert row.astype(dtype).tobytes() not in blob
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    restored.fit(X, y)  # refits from the pristine weights, no sample needed
    assert restored.predict(X).shape == (len(X),)


def test_a_fitted_estimator_on_texts_holds_no_training_sample():
    texts = [f"the {w} food was great" for w in ("zyxwvutsrqp", "good", "fine")] * 8
    texts += ["awful service"] * 24
    y = np.array([1] * 24 + [0] * 24)
    for freeze in ("all", 1):
        clf = FineTuneClassifier(text_backbone(), freeze=freeze, lr=1e-2)
        blob = pickle.dumps(clf.fit(texts, y))
        assert b"zyxwvutsrqp" not in blob and b"awful service" not in blob
        restored = pickle.loads(blob)
        assert list(restored.predict(texts)) == list(clf.predict(texts))
        assert restored.fit(texts, y).score(texts, y) == 1.0


def test_a_saved_directory_holds_no_training_sample(tmp_path):
    # Invariant 7 for save_pretrained: config, weights and history only.
    X = distinctive_rows()
    clf = FineTuneClassifier(mlp_backbone(), freeze=1, max_epochs=2)
    clf.fit(X, np.arange(len(X)) % 2).save_pretrained(tmp_path)
    blob = b"".join(path.read_bytes() for path in sorted(tmp_path.iterdir()))
    for row in X:
        for dtype in (np.float32, np.float64):
            assert row.astype(dtype).tobytes() not in blob
    assert "1234.5678" not in blob.decode("latin-1")


def test_the_fitted_input_spec_rebuilds_the_network_without_data():
    X = distinctive_rows()
    reg = FineTuneRegressor(mlp_backbone(), freeze=1, max_epochs=1).fit(X, X[:, :2])
    assert reg.input_spec_ == FittedInput("array", (8,), "float32")
    before = [tuple(p.shape) for p in reg.module_.parameters()]
    reg.initialize()  # skorch's re-initialization: no data at hand
    assert [tuple(p.shape) for p in reg.module_.parameters()] == before
    assert reg.n_blocks_ == 3 and reg.module_.split.cut == 2


class Recording(nn.Sequential):
    """Logs when it is moved to a device and when it runs."""

    events: list[str] = []

    def _apply(self, fn, recurse=True):
        Recording.events.append("moved")
        return super()._apply(fn, recurse)

    def forward(self, x):
        Recording.events.append(f"forward on {x.device.type}")
        return super().forward(x)


def test_planning_runs_on_the_training_device_after_the_move():
    X = distinctive_rows()
    backbone = Recording(nn.Linear(8, 4), nn.ReLU())
    Recording.events.clear()
    clf = FineTuneClassifier(backbone, device="cpu", max_epochs=1)
    clf.fit(X, np.arange(len(X)) % 2)
    events = Recording.events
    # The private copy is moved first; the probe and the checks run after.
    assert events[0] == "moved"
    assert "forward on cpu" in events[1:]
    assert all(p.device.type == "cpu" for p in clf.module_.parameters())
