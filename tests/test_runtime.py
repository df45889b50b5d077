"""Device and precision: device="auto", bfloat16 and float16 autocast."""

import pickle
import threading

import numpy as np
import pytest
import torch
from helpers import make_classifier, mlp_backbone, tiny_cnn
from skorch.callbacks import Callback

from sktune import FineTuneRegressor
from sktune._scoped import scoped

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_device_is_resolved_in_fit_and_kept_as_the_parameter(blobs):
    X, y = blobs
    clf = make_classifier(device="auto", max_epochs=2).fit(X, y)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert clf.device_ == expected
    assert clf.get_params()["device"] == "auto"
    assert next(clf.module_.parameters()).device.type == expected
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.device == "auto" and restored.device_ == expected
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))


class _Seen(Callback):
    """Records the parameters a callback reads during a fit."""

    def initialize(self):
        self.seen = set()
        return self

    def on_batch_end(self, net, **kwargs):
        params = net.get_params()
        self.seen.add((net.device, net.verbose, params["device"], params["verbose"]))


def test_a_fit_never_rewrites_device_or_verbose(blobs, capsys):
    # skorch reads device="auto" as the resolved device, and verbose=1 as 0
    # while it re-initializes, but only inside its own reads: callbacks,
    # get_params and other threads see what the user set.
    seen = _Seen()
    clf = make_classifier(device="auto", verbose=1, callbacks=[("seen", seen)])
    clf.set_params(max_epochs=2).fit(*blobs)
    clf.set_params(lr=0.05)  # re-initializes the optimizer, silently
    clf.partial_fit(*blobs)
    assert dict(clf.callbacks_)["seen"].seen == {("auto", 1, "auto", 1)}
    assert "Re-initializing" not in capsys.readouterr().out

    with scoped(clf, device="cpu"):
        other = []
        thread = threading.Thread(target=lambda: other.append(clf.device))
        thread.start()
        thread.join()
        assert clf.device == "cpu" and other == ["auto"]
    assert clf.device == "auto" and clf.__dict__["device"] == "auto"


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_half_precision_trains_the_backbone_under_autocast(images, precision):
    X, y = images
    full = make_classifier(tiny_cnn(), freeze=1, lr=3e-3, max_epochs=5).fit(X, y)
    half = make_classifier(
        tiny_cnn(), freeze=1, lr=3e-3, max_epochs=5, precision=precision
    ).fit(X, y)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # The cache stores the prefix at the compute precision; the head and its
    # outputs stay float32.
    assert half.prefix_cache_.stored_dtype == dtype
    assert half.module_.head.weight.dtype == torch.float32
    assert half.predict_proba(X).dtype == np.float32
    assert (half._guard.scaler is not None) == (precision == "16")
    assert np.mean(half.predict(X) == full.predict(X)) > 0.9
    assert half.prefix_cache_.key != full.prefix_cache_.key


def test_the_divergence_guard_under_float16_scaling(blobs):
    X, _ = blobs
    y_bad = X[:, 0].copy()
    y_bad[5] = 1e30  # an infinite loss, whatever the scale
    reg = FineTuneRegressor(mlp_backbone(), precision="16", max_epochs=1)
    reg.set_params(iterator_train__shuffle=False)
    with pytest.raises(FloatingPointError, match=r"the loss is inf"):
        reg.fit(X, y_bad)
    assert all(torch.isfinite(p).all() for p in reg.module_.parameters())


@cuda
def test_a_fit_on_the_gpu_predicts_on_the_gpu_and_unpickles_anywhere(blobs):
    X, y = blobs
    clf = make_classifier(device="cuda", precision="bf16", max_epochs=2).fit(X, y)
    assert next(clf.module_.parameters()).is_cuda
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(
        restored.predict_proba(X), clf.predict_proba(X), atol=1e-6
    )
