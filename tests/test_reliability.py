"""Bad input, divergence, interruption, determinism, safe loading, threads."""

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from helpers import (
    assert_same_state,
    make_classifier,
    mlp_backbone,
    state_snapshot,
    text_backbone,
    tiny_cnn,
)
from sklearn.exceptions import NotFittedError
from skorch.callbacks import Callback, Checkpoint, LoadInitState
from torch import nn

from sktune import Backbone, FineTuneClassifier, FineTuneRegressor


class ImageBackbone(Backbone):
    """A Backbone whose pretrained configuration asks for 3-channel 8x8 input."""

    def data_config(self):
        return {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 8, 8)}


def rgb_cnn():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )


rng = np.random.RandomState(0)
X8 = rng.normal(size=(30, 8))
Y3 = np.arange(30) % 3
IMG = rng.randint(0, 256, size=(30, 8, 8), dtype=np.uint8)
TEXT = ["good food", "bad food", "very good", "very bad"] * 5
TEXT_Y = np.array([1, 0, 1, 0] * 5)
# Issue 23's inputs: eight samples each.
Y8 = np.arange(8) % 2
PAIRS = [("good food", "very good"), ("bad food", "very bad")] * 4
TRIPLES = [("a", "b", "c")] * 8
RGB = rng.randint(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
RGB_64 = rng.randint(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
UINT16 = rng.randint(0, 2**16, size=(8, 32, 32, 3)).astype(np.uint16)
FIVE_BANDS = rng.randint(0, 256, size=(8, 32, 32, 5), dtype=np.uint8)
#: Three labels per sample (a multilabel indicator matrix).
LABELS = (rng.rand(30, 3) > 0.5).astype(int)


def with_nan(a):
    a = a.copy()
    a[3, 2] = np.nan
    return a


def with_inf(a):
    a = a.copy()
    a[0, 0] = np.inf
    return a


def clf(backbone=None, **kw):
    kw = {"max_epochs": 1, **kw}
    return FineTuneClassifier(
        backbone if backbone is not None else mlp_backbone(), **kw
    )


def reg(backbone=None, **kw):
    kw = {"max_epochs": 1, **kw}
    return FineTuneRegressor(backbone if backbone is not None else mlp_backbone(), **kw)


def fitted_clf():
    return clf().fit(X8, Y3)


def rgb_clf(**kw):
    return clf(ImageBackbone(rgb_cnn()), **kw)


def fitted_rgb():
    return rgb_clf().fit(RGB, Y8)


def fitted_pairs():
    return clf(text_backbone()).fit(PAIRS, Y8)


def fitted_multilabel():
    return clf().fit(X8, LABELS)


class Kw(dict):
    """Keyword arguments of the call, as the last of a row's args."""


# (id, make estimator, method, args, exception, message regex). Bad parameters
# have their table in test_params.py.
BAD_INPUT = [
    ("nan-X", clf, "fit", (with_nan(X8), Y3), ValueError, "Input X contains NaN"),
    ("inf-X", clf, "fit", (with_inf(X8), Y3), ValueError, "Input X contains infinity"),
    (
        "nan-y-regression",
        reg,
        "fit",
        (X8, with_nan(X8[:, :3])),
        ValueError,
        "Input y contains NaN",
    ),
    ("empty-X", clf, "fit", (X8[:0], Y3[:0]), ValueError, r"0 sample\(s\)"),
    (
        "length-mismatch",
        clf,
        "fit",
        (X8, Y3[:20]),
        ValueError,
        r"inconsistent numbers of samples: \[30, 20\]",
    ),
    (
        "single-class",
        clf,
        "fit",
        (X8, np.zeros(30)),
        ValueError,
        r"y has 1 class \(\[0.0\]\)",
    ),
    (
        "continuous-y",
        clf,
        "fit",
        (X8, X8[:, 0]),
        ValueError,
        "Unknown label type: continuous",
    ),
    ("complex-X", clf, "fit", (X8 + 1j, Y3), ValueError, "Complex data not supported"),
    (
        "object-X",
        clf,
        "fit",
        (np.array([[{"a": 1}] * 8] * 30, dtype=object), Y3),
        TypeError,
        "must be a string or a real number",
    ),
    (
        "sparse-X",
        clf,
        "fit",
        (__import__("scipy.sparse").sparse.csr_matrix(X8), Y3),
        TypeError,
        "Sparse data was passed for X, but dense data is required",
    ),
    (
        "features-for-backbone",
        clf,
        "fit",
        (X8[:, :5], Y3),
        ValueError,
        r"X has 5 features, but the backbone's first layer \(0: Linear",
    ),
    (
        "gray-to-rgb",
        lambda: clf(ImageBackbone(rgb_cnn())),
        "fit",
        (IMG, Y3),
        ValueError,
        r"X holds 1-channel uint8 images \(N x H x W; one sample is 8 x 8\), but the "
        r"backbone expects 3 channels. Repeat the gray channel, e.g. "
        r"np.repeat\(X\[..., None\], 3, axis=-1\)",
    ),
    (
        "channels-float",
        lambda: clf(ImageBackbone(rgb_cnn())),
        "fit",
        (np.zeros((30, 1, 8, 8), np.float32), Y3),
        ValueError,
        r"X holds 1-channel float32 images \(N x C x H x W; one sample is 1 x 8 x 8\), "
        "but the backbone expects 3",
    ),
    (
        "channels-last-float",
        lambda: clf(ImageBackbone(rgb_cnn())),
        "fit",
        (np.zeros((8, 32, 32, 3), np.float32), Y8),
        ValueError,
        r"X holds 32-channel float32 images \(N x C x H x W; one sample is "
        r"32 x 32 x 3\), but the backbone expects 3 channels. If X is N x H x W x C, "
        r"transpose it: X.transpose\(0, 3, 1, 2\)",
    ),
    (
        "pair-of-three",
        lambda: clf(text_backbone()),
        "fit",
        (TRIPLES, Y8),
        ValueError,
        r"X\[0\] is \('a', 'b', 'c'\) \(3 items\); every sample of text pairs must "
        r"hold exactly two strings",
    ),
    (
        "pair-of-three-later",
        lambda: clf(text_backbone()),
        "fit",
        (PAIRS[:5] + TRIPLES[:3], Y8),
        ValueError,
        r"X\[5\] is \('a', 'b', 'c'\) \(3 items\); every sample of text pairs",
    ),
    (
        "uint16-images",
        rgb_clf,
        "fit",
        (UINT16, Y8),
        ValueError,
        r"X holds uint16 images \(8 x 32 x 32 x 3: N x H x W x C\), but images must "
        r"be uint8 \(N x H x W x C or N x H x W\), or float32 \(N x C x H x W\) "
        r"already normalized for the backbone. Scale them to uint8 over the range "
        r"they use, e.g. \(X / 257\).astype\(np.uint8\) for the full 16-bit range",
    ),
    (
        "int64-images",
        rgb_clf,
        "fit",
        (RGB.astype(np.int64), Y8),
        ValueError,
        r"X holds int64 images \(8 x 32 x 32 x 3: N x H x W x C\), but images must "
        r"be uint8 .* e.g. X.astype\(np.uint8\) when the values are 0-255",
    ),
    (
        "five-channel-images",
        rgb_clf,
        "fit",
        (FIVE_BANDS, Y8),
        ValueError,
        r"X holds 5-channel uint8 images \(N x H x W x C; one sample is 32 x 32 x 5\), "
        r"but the backbone expects 3 channels. Keep 3 of them \(e.g. X\[..., :3\]\)",
    ),
    (
        "five-channels-for-the-first-layer",
        lambda: clf(tiny_cnn()),
        "fit",
        (FIVE_BANDS, Y8),
        ValueError,
        r"X holds 5-channel uint8 images \(N x H x W x C; one sample is 32 x 32 x 5\), "
        r"but the backbone's first layer \(stem.0: Conv2d\(1, 4, .*\)\) expects 1 "
        r"channel",
    ),
    (
        "strings-to-numeric-backbone",
        clf,
        "fit",
        (TEXT, TEXT_Y),
        ValueError,
        r"X holds strings, but none is a file: for a backbone without a "
        "tokenizer strings are paths of photos",
    ),
    (
        "images-to-text-backbone",
        lambda: clf(text_backbone()),
        "fit",
        (IMG, Y3),
        ValueError,
        "The backbone is a text model, but X holds numbers or images",
    ),
    (
        "missing-text",
        lambda: clf(text_backbone()),
        "fit",
        (["a", None, "b"], [0, 1, 0]),
        ValueError,
        r"X\[1\] is None; every sample of text input must be a string",
    ),
    (
        "predict-before-fit",
        clf,
        "predict",
        (X8,),
        NotFittedError,
        "is not initialized yet",
    ),
    (
        "predict-feature-count",
        fitted_clf,
        "predict",
        (X8[:, :5],),
        ValueError,
        "X has 5 features, but FineTuneClassifier is expecting 8 features as input",
    ),
    (
        "predict-image-size",
        fitted_rgb,
        "predict",
        (RGB_64,),
        ValueError,
        r"X holds 64 x 64 images \(H x W\), but FineTuneClassifier was fitted on "
        r"32 x 32 images, and image_size=None keeps each image's own size: resize "
        r"them to 32 x 32, or fit with image_size=\(32, 32\)",
    ),
    (
        "predict-image-channels",
        fitted_rgb,
        "predict",
        (FIVE_BANDS,),
        ValueError,
        r"X holds 5-channel images \(N x H x W x C; one sample is 32 x 32 x 5\), but "
        r"FineTuneClassifier was fitted on 3-channel images \(one sample was "
        r"32 x 32 x 3\)",
    ),
    (
        "predict-uint16-images",
        fitted_rgb,
        "predict",
        (UINT16,),
        ValueError,
        r"X holds uint16 images \(8 x 32 x 32 x 3: N x H x W x C\), but images must",
    ),
    (
        "predict-pair-of-three",
        fitted_pairs,
        "predict",
        (TRIPLES,),
        ValueError,
        r"X\[0\] is \('a', 'b', 'c'\) \(3 items\); every sample of text pairs",
    ),
    (
        "predict-kind",
        fitted_clf,
        "predict",
        (TEXT,),
        ValueError,
        "X holds strings, but FineTuneClassifier was fitted on numeric arrays",
    ),
    (
        "unseen-label",
        fitted_clf,
        "partial_fit",
        (X8, Y3 + 1),
        ValueError,
        r"y contains labels \[3\] that are not in classes \[0, 1, 2\]",
    ),
    (
        "regression-targets",
        lambda: reg().fit(X8, X8[:, 0]),
        "partial_fit",
        (X8, X8[:, :2]),
        ValueError,
        "y has 2 targets, but FineTuneRegressor was fitted with 1",
    ),
    (
        "mapping-lengths",
        lambda: clf(text_backbone()),
        "fit",
        (
            {"input_ids": np.zeros((4, 3)), "attention_mask": np.zeros((3, 3))},
            [0, 1, 0, 1],
        ),
        ValueError,
        "mapping of inputs whose lengths differ",
    ),
    (
        "sample-weight-length",
        clf,
        "fit",
        (X8, Y3, Kw(sample_weight=np.ones(20))),
        ValueError,
        r"sample_weight has shape \(20,\), but there are 30 samples; pass one "
        r"weight per sample \(shape \(30,\)\) or a number",
    ),
    (
        "sample-weight-2d",
        reg,
        "fit",
        (X8, X8[:, 0], Kw(sample_weight=np.ones((30, 2)))),
        ValueError,
        r"sample_weight has shape \(30, 2\), but there are 30 samples",
    ),
    (
        "sample-weight-negative",
        clf,
        "fit",
        (X8, Y3, Kw(sample_weight=np.r_[np.ones(4), -2.0, np.ones(25)])),
        ValueError,
        r"sample_weight has 1 negative value\(s\), the first sample_weight\[4\]=-2; "
        r"weights must be non-negative \(a weight of 0 leaves the sample out\)",
    ),
    (
        "sample-weight-nan",
        clf,
        "fit",
        (X8, Y3, Kw(sample_weight=np.r_[np.ones(3), np.nan, np.ones(26)])),
        ValueError,
        "Input sample_weight contains NaN",
    ),
    (
        "sample-weight-all-zero",
        clf,
        "partial_fit",
        (X8, Y3, Kw(sample_weight=np.zeros(30))),
        ValueError,
        r"sample_weight is zero for every sample; at least one sample needs a "
        r"positive weight",
    ),
    (
        "class-weight-times-sample-weight-zero",
        lambda: clf(class_weight={0: 0, 1: 0}),
        "fit",
        (X8, Y3, Kw(sample_weight=(Y3 != 2).astype(float))),
        ValueError,
        r"class_weight times sample_weight is zero for every sample",
    ),
    (
        "class-weight-multilabel",
        lambda: clf(class_weight="balanced"),
        "fit",
        (X8, LABELS),
        ValueError,
        r"class_weight='balanced' weighs the classes of 1-D labels, but y is a "
        r"multilabel indicator matrix \(30 x 3\); use class_weight=None with "
        r"sample_weight, or criterion__pos_weight",
    ),
    (
        "multiclass-multioutput",
        clf,
        "fit",
        (X8, np.c_[Y3, Y3]),
        ValueError,
        r"y should be a 1d array, got an array of shape \(30, 2\) instead",
    ),
    (
        "multilabel-after-labels",
        fitted_clf,
        "partial_fit",
        (X8, LABELS),
        ValueError,
        r"y is a multilabel indicator matrix, but FineTuneClassifier was fitted on "
        r"1-D class labels",
    ),
    (
        "labels-after-multilabel",
        fitted_multilabel,
        "partial_fit",
        (X8, Y3),
        ValueError,
        r"y is 1-D class labels, but FineTuneClassifier was fitted on a multilabel "
        r"indicator matrix",
    ),
    (
        "multilabel-columns",
        fitted_multilabel,
        "partial_fit",
        (X8, LABELS[:, :2]),
        ValueError,
        r"y has 2 label columns, but FineTuneClassifier was fitted with 3",
    ),
    (
        "multilabel-classes",
        lambda: clf(classes=["a", "b", "c"]),
        "fit",
        (X8, LABELS),
        ValueError,
        r"classes=\['a', 'b', 'c'\] names class labels, but y is a multilabel "
        r"indicator matrix with 3 label columns, whose classes are their indices "
        r"\(np.arange\(3\)\); leave it None",
    ),
]


@pytest.mark.parametrize(
    ("make", "method", "args", "error", "message"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_reported_and_nothing_is_mutated(
    make, method, args, error, message
):
    estimator = make()
    backbone = estimator.backbone
    backbone_module = backbone.source if isinstance(backbone, Backbone) else backbone
    before = (
        state_snapshot(backbone_module)
        if isinstance(backbone_module, nn.Module)
        else None
    )
    args_before = copy.deepcopy(args)
    kwargs = args[-1] if args and isinstance(args[-1], Kw) else {}
    positional = args[:-1] if kwargs else args
    with pytest.raises(error, match=message):
        getattr(estimator, method)(*positional, **kwargs)
    if before is not None:
        assert_same_state(before, state_snapshot(backbone_module))
    assert_unchanged(args, args_before)


def assert_unchanged(args, args_before):
    if args and isinstance(args[-1], Kw):
        args = (*args[:-1], *args[-1].values())
        args_before = (*args_before[:-1], *args_before[-1].values())
    for arg, arg_before in zip(args, args_before, strict=True):
        if isinstance(arg, np.ndarray) and arg.dtype != object:
            np.testing.assert_array_equal(arg, arg_before)
            assert arg.dtype == arg_before.dtype
        elif isinstance(arg, list):
            assert arg == arg_before


# (id, fitted estimator, X it predicts, method, bad args, message regex): text
# and images alike, a failed fit, partial_fit or predict changes nothing.
FAILED_CALLS = [
    ("refit-pairs-of-three", fitted_pairs, PAIRS, "fit", (TRIPLES, Y8), "text pairs"),
    (
        "partial-fit-pairs-of-three",
        fitted_pairs,
        PAIRS,
        "partial_fit",
        (TRIPLES, Y8),
        "text pairs",
    ),
    ("predict-pairs-of-three", fitted_pairs, PAIRS, "predict", (TRIPLES,), "pairs"),
    ("refit-uint16", fitted_rgb, RGB, "fit", (UINT16, Y8), "uint16 images"),
    ("predict-uint16", fitted_rgb, RGB, "predict", (UINT16,), "uint16 images"),
    # Fails in the network build, after the checks of X and y passed.
    ("refit-five-bands", fitted_rgb, RGB, "fit", (FIVE_BANDS, Y8), "5-channel"),
    ("predict-five-bands", fitted_rgb, RGB, "predict", (FIVE_BANDS,), "5-channel"),
    (
        "partial-fit-image-size",
        fitted_rgb,
        RGB,
        "partial_fit",
        (RGB_64, Y8),
        "64 x 64 images",
    ),
    ("predict-image-size", fitted_rgb, RGB, "predict", (RGB_64,), "64 x 64 images"),
]


@pytest.mark.parametrize(
    ("make", "X", "method", "args", "message"),
    [case[1:] for case in FAILED_CALLS],
    ids=[case[0] for case in FAILED_CALLS],
)
def test_a_failed_call_leaves_the_fitted_estimator_and_the_input_unchanged(
    make, X, method, args, message
):
    estimator = make()
    proba, spec = estimator.predict_proba(X), estimator.input_spec_
    args_before = copy.deepcopy(args)
    with pytest.raises(ValueError, match=message):
        getattr(estimator, method)(*args)
    np.testing.assert_array_equal(estimator.predict_proba(X), proba)
    assert estimator.input_spec_ == spec
    assert_unchanged(args, args_before)


# -- divergence -----------------------------------------------------------------


def test_divergence_stops_with_a_clear_error_and_a_usable_estimator():
    X, y = rng.normal(size=(64, 8)), rng.normal(size=64)
    estimator = FineTuneRegressor(
        mlp_backbone(), lr=1e-3, max_epochs=5, batch_size=16, random_state=0
    )
    y_bad = y.copy()
    y_bad[40] = 1e30  # overflows float32 in the loss of the third batch
    estimator.set_params(iterator_train__shuffle=False)
    with pytest.raises(
        FloatingPointError,
        match=r"Training diverged at epoch 1, batch 3: the loss is inf.*lower learning rate than lr=0.001",
    ):
        estimator.fit(X, y_bad)
    weights = [p for p in estimator.module_.parameters()]
    assert all(torch.isfinite(p).all() for p in weights)
    assert np.isfinite(estimator.predict(X)).all()


# -- interruption and resume --------------------------------------------------------


class InterruptAt(Callback):
    def __init__(self, epoch, batch=None):
        self.epoch = epoch
        self.batch = batch

    def on_batch_end(self, net, training=False, **kwargs):
        if (
            training
            and len(net.history) == self.epoch
            and len(net.history[-1]["batches"]) == self.batch
        ):
            raise KeyboardInterrupt

    def on_epoch_end(self, net, **kwargs):
        if self.batch is None and len(net.history) == self.epoch:
            raise KeyboardInterrupt


def test_ctrl_c_leaves_a_usable_estimator(blobs):
    X, y = blobs
    estimator = clf(max_epochs=10, callbacks=[InterruptAt(epoch=2, batch=2)]).fit(X, y)
    assert len(estimator.history_) == 2
    assert estimator.predict(X).shape == (len(X),)


def test_checkpoint_resume_equals_an_uninterrupted_fit(blobs, tmp_path):
    X, y = blobs
    kwargs = dict(lr=1e-2, random_state=0, max_epochs=6)
    full = clf(**kwargs).fit(X, y)

    checkpoint = Checkpoint(monitor=None, dirname=str(tmp_path), f_criterion=None)
    first = clf(**kwargs, callbacks=[checkpoint, InterruptAt(epoch=3)]).fit(X, y)
    assert len(first.history_) == 3
    resumed = clf(
        **{**kwargs, "max_epochs": 3},
        callbacks=[
            Checkpoint(monitor=None, dirname=str(tmp_path), f_criterion=None),
            LoadInitState(checkpoint),
        ],
    ).fit(X, y)
    assert len(resumed.history_) == 6
    assert_same_state(state_snapshot(full.module_), state_snapshot(resumed.module_))
    np.testing.assert_array_equal(full.predict_proba(X), resumed.predict_proba(X))


# -- determinism --------------------------------------------------------------------


DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from helpers import mlp_backbone
    from sktune import FineTuneClassifier
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(80, 8)), np.arange(80) % 3
    clf = FineTuneClassifier(mlp_backbone(), max_epochs=3, random_state=7).fit(X, y)
    sys.stdout.write(clf.predict_proba(X).tobytes().hex())
    """
)


@pytest.mark.slow  # two fresh interpreters: seconds of imports
def test_same_seed_gives_bit_identical_predictions_across_processes():
    script = DETERMINISM_SCRIPT.format(tests=os.path.dirname(__file__))
    # Two fresh processes at once (their start-up, importing torch, dominates).
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate()[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    rng_ = np.random.RandomState(0)
    X, y = rng_.normal(size=(80, 8)), np.arange(80) % 3
    here = FineTuneClassifier(mlp_backbone(), max_epochs=3, random_state=7).fit(X, y)
    assert outputs[0] == outputs[1] == here.predict_proba(X).tobytes().hex()


def test_two_threads_do_not_interfere(blobs):
    X, y = blobs
    expected = {
        seed: clf(random_state=seed, max_epochs=3).fit(X, y).predict_proba(X)
        for seed in (0, 1)
    }
    results, errors = {}, []
    estimators = {seed: clf(random_state=seed, max_epochs=3) for seed in (0, 1)}

    def work(seed):
        try:
            results[seed] = estimators[seed].fit(X, y).predict_proba(X)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for seed in (0, 1):
        np.testing.assert_array_equal(results[seed], expected[seed])


# -- safe loading and atomic saving -------------------------------------------------


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_payload_in_a_weights_file_is_refused(blobs, tmp_path):
    X, y = blobs
    estimator = clf().fit(X, y)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"module.weight": Payload()}, f, protocol=2)
    before = state_snapshot(estimator.module_)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        estimator.load_params(f_params=str(path))
    assert_same_state(before, state_snapshot(estimator.module_))


def test_save_params_is_atomic(blobs, tmp_path, monkeypatch):
    X, y = blobs
    estimator = clf().fit(X, y)
    target = tmp_path / "params.pt"
    estimator.save_params(f_params=str(target))
    good = target.read_bytes()
    good_proba = estimator.predict_proba(X)

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    estimator.fit(X[:50], y[:50])
    with pytest.raises(OSError, match="disk full"):
        estimator.save_params(f_params=str(target))
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == good
    assert os.listdir(tmp_path) == ["params.pt"]
    restored = clf().fit(X[:50], y[:50])
    restored.load_params(f_params=str(target))
    np.testing.assert_array_equal(restored.predict_proba(X), good_proba)


def test_loading_the_backbone_does_not_shift_the_head_init(blobs):
    # The first fit of a process builds the backbone (here: a factory drawing
    # its random init); later fits find it built. Both start alike.
    X, y = blobs
    backbone = Backbone(lambda: torch.nn.Sequential(torch.nn.Linear(8, 16)))
    first = make_classifier(backbone, freeze="all", max_epochs=1).fit(X, y)
    second = make_classifier(backbone, freeze="all", max_epochs=1).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
