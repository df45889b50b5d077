"""The estimators' behaviour and DESIGN.md's invariants, on tiny in-file backbones."""

import copy
import gc
import pickle

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from helpers import (
    assert_same_state,
    make_classifier,
    mlp_backbone,
    state_snapshot,
    tiny_cnn,
)
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktune import Backbone, FineTuneClassifier, FineTuneRegressor, Freeze


@pytest.fixture(scope="module")
def fitted(blobs):
    """``fitted(freeze)``: make_classifier(freeze=freeze) fitted on blobs, once
    per module; the tests that take one only read it."""
    X, y = blobs
    fits = {}

    def get(freeze=None):
        if freeze not in fits:
            fits[freeze] = make_classifier(freeze=freeze).fit(X, y)
        return fits[freeze]

    return get


# -- invariant 1: pristine weights, user's backbone untouched -----------------


@pytest.mark.parametrize("freeze", [None, 1, "all"])
def test_user_backbone_is_bit_identical_after_fit(blobs, freeze):
    X, y = blobs
    backbone = mlp_backbone()
    before = state_snapshot(backbone)
    requires_grad = [p.requires_grad for p in backbone.parameters()]
    backbone.train()
    clf = make_classifier(backbone, freeze=freeze).fit(X, y)
    assert_same_state(before, state_snapshot(backbone))
    assert [p.requires_grad for p in backbone.parameters()] == requires_grad
    assert backbone.training
    assert clf.module_.backbone is not backbone
    assert not backbone._forward_pre_hooks and not backbone[0]._forward_pre_hooks


def test_refit_starts_from_pristine_weights(blobs):
    X, y = blobs
    clf = make_classifier()
    first = clf.fit(X, y).predict_proba(X)
    second = clf.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)


def test_clones_do_not_share_training_state(blobs):
    X, y = blobs
    clf = make_classifier()
    other = clone(clf)
    clf.fit(X, y)
    other.fit(X[:60], y[:60])
    assert clf.module_.backbone is not other.module_.backbone
    np.testing.assert_array_equal(
        clf.predict_proba(X), clone(clf).fit(X, y).predict_proba(X)
    )


def test_warm_start_continues_instead_of_restarting(blobs):
    X, y = blobs
    clf = make_classifier(warm_start=True, max_epochs=2).fit(X, y)
    weights = clf.module_.head.weight.detach().clone()
    clf.fit(X, y)
    assert len(clf.history_) == 4
    assert not torch.equal(weights, clf.module_.head.weight)


def test_partial_fit_sequence_is_reproducible(blobs):
    X, y = blobs
    runs = []
    for _ in range(2):
        clf = make_classifier(max_epochs=1)
        clf.partial_fit(X, y, classes=np.unique(y))
        clf.partial_fit(X, y)
        runs.append(clf.predict_proba(X))
        assert len(clf.history_) == 2
    np.testing.assert_array_equal(*runs)


# -- invariant 2: cheap clones ------------------------------------------------


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.parametrize("wrap", [False, True], ids=["module", "Backbone"])
def test_cloning_shares_the_pristine_backbone(wrap):
    big = nn.Sequential(nn.Linear(5000, 5000))  # 25M parameters, 100 MB
    backbone = Backbone(big) if wrap else big
    clf = FineTuneClassifier(backbone, freeze="all")
    before = _rss()
    clones = [clone(clf) for _ in range(10)] + [copy.deepcopy(clf) for _ in range(2)]
    grown = _rss() - before
    assert grown < 20e6, f"12 clones grew memory by {grown / 1e6:.0f} MB"
    assert all(c.backbone is backbone for c in clones)


def test_backbone_factory_is_called_once_and_shared(blobs):
    X, y = blobs
    calls = []

    def factory():
        calls.append(1)
        return mlp_backbone()

    backbone = Backbone(factory)
    a = make_classifier(backbone, freeze=1, max_epochs=1).fit(X, y)
    b = make_classifier(copy.deepcopy(backbone), freeze=1, max_epochs=1).fit(X, y)
    assert len(calls) == 1
    pristine = backbone.module()
    assert copy.deepcopy(backbone).module() is pristine
    # Each fit trained a private copy of the one pristine module.
    copies = {id(a.module_.backbone), id(b.module_.backbone), id(pristine)}
    assert len(copies) == 3
    assert_same_state(state_snapshot(pristine), state_snapshot(mlp_backbone()))


# -- invariant 3: frozen means frozen -----------------------------------------


def test_frozen_blocks_and_batchnorm_are_untouched_by_training(images):
    X, y = images
    clf = make_classifier(tiny_cnn(), freeze=2, max_epochs=3).fit(X, y)
    pristine = tiny_cnn()
    net = clf.module_.backbone
    for prefix in ("stem.", "stage1."):
        for name, value in pristine.state_dict().items():
            if name.startswith(prefix):
                assert torch.equal(value, net.state_dict()[name]), name
    # The trainable stage did train; its BatchNorm kept the pretrained
    # statistics while its affine parameters trained.
    assert not torch.equal(pristine.stage2[0].weight, net.stage2[0].weight)
    assert not torch.equal(pristine.stage2[1].weight, net.stage2[1].weight)
    assert torch.equal(pristine.stage2[1].running_mean, net.stage2[1].running_mean)


def test_train_bn_lets_every_batchnorm_train_frozen_blocks_included(images):
    X, y = images
    clf = make_classifier(
        tiny_cnn(), freeze=Freeze(depth=2, train_bn=True), max_epochs=2
    )
    clf.fit(X, y)
    pristine, net = tiny_cnn(), clf.module_.backbone
    assert torch.equal(pristine.stem[0].weight, net.stem[0].weight)
    for bn in ("stem.1", "stage2.1"):
        before = pristine.get_submodule(bn).running_mean
        assert not torch.equal(before, net.get_submodule(bn).running_mean), bn
    assert net.stem[1].weight.requires_grad


def test_frozen_parameters_have_no_optimizer_state(fitted):
    clf = fitted(2)
    in_optimizer = {id(p) for g in clf.optimizer_.param_groups for p in g["params"]}
    for name, p in clf.module_.named_parameters():
        assert (id(p) in in_optimizer) == p.requires_grad, name
        if not p.requires_grad:
            assert p.grad is None and p not in clf.optimizer_.state
    frozen = {
        n for n, p in clf.module_.backbone.named_parameters() if not p.requires_grad
    }
    assert frozen == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_frozen_blocks_run_in_eval_mode_while_training(fitted):
    clf = fitted(2)
    clf.module_.train()
    backbone = clf.module_.backbone
    # Blocks: [Linear, ReLU], [Linear, ReLU, Dropout], [Linear, ReLU].
    assert [m.training for m in backbone] == [False] * 5 + [True, True]
    assert clf.module_.head.training


def test_param_group_patterns_reach_the_optimizer(blobs):
    X, y = blobs
    clf = make_classifier(optimizer__param_groups=[("head.*", {"lr": 0.5})]).fit(X, y)
    lrs = sorted(g["lr"] for g in clf.optimizer_.param_groups)
    assert lrs == [0.01, 0.5]


# -- invariant 6: seeds -------------------------------------------------------


def test_same_seed_same_model_and_global_rng_untouched(blobs):
    X, y = blobs
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch = torch.rand(3)
    expected_np = np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    a = make_classifier().fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected_torch.numpy())
    np.testing.assert_array_equal(np.random.rand(3), expected_np)
    b = make_classifier().fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = make_classifier(random_state=1).fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)


def test_random_state_accepts_a_numpy_random_state(blobs):
    X, y = blobs
    a = (
        make_classifier(random_state=np.random.RandomState(5))
        .fit(X, y)
        .predict_proba(X)
    )
    b = (
        make_classifier(random_state=np.random.RandomState(5))
        .fit(X, y)
        .predict_proba(X)
    )
    np.testing.assert_array_equal(a, b)


def test_pickle_round_trip_gives_identical_predictions(blobs, fitted):
    X, _ = blobs
    clf = fitted(1)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf.predict_proba(X), restored.predict_proba(X))
    np.testing.assert_array_equal(clf.predict(X), restored.predict(X))
    assert restored.n_blocks_ == clf.n_blocks_


def test_predictions_do_not_depend_on_batch_composition(blobs, fitted):
    X, _ = blobs
    clf = fitted()
    full = clf.predict_proba(X)
    one_by_one = np.concatenate([clf.predict_proba(X[i : i + 1]) for i in range(10)])
    np.testing.assert_array_equal(full[:10], one_by_one)


# -- sklearn integration --------------------------------------------------------


def test_pipeline_grid_search_over_freeze_depth(blobs):
    X, y = blobs
    pipe = Pipeline(
        [("scale", StandardScaler()), ("ft", make_classifier(max_epochs=3))]
    )
    search = GridSearchCV(pipe, {"ft__freeze": [0, 1, "all"]}, cv=3).fit(X, y)
    assert search.best_score_ > 0.9
    # Each candidate scores as the same pipeline cross-validated on its own:
    # candidates and folds start from the pristine weights, nothing leaks.
    for i, freeze in enumerate(search.cv_results_["param_ft__freeze"]):
        alone = cross_val_score(clone(pipe).set_params(ft__freeze=freeze), X, y, cv=3)
        assert search.cv_results_["mean_test_score"][i] == pytest.approx(alone.mean())
    n_trainable = {
        freeze: sum(
            p.requires_grad
            for p in clone(pipe)
            .set_params(ft__freeze=freeze)
            .fit(X, y)[-1]
            .module_.backbone.parameters()
        )
        for freeze in (0, 1, "all")
    }
    assert n_trainable == {0: 6, 1: 4, "all": 0}


def test_grid_search_over_nested_freeze_depth(blobs):
    X, y = blobs
    clf = make_classifier(freeze=Freeze(), max_epochs=2)
    search = GridSearchCV(clf, {"freeze__depth": [0, 2, -1]}, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 3
    assert clf.freeze.depth == 0  # the grid search worked on clones
    assert search.best_estimator_.freeze.depth == search.best_params_["freeze__depth"]
    assert clf.get_params()["freeze__depth"] == 0


def test_cross_val_score(blobs):
    X, y = blobs
    scores = cross_val_score(make_classifier(max_epochs=3), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8


def test_set_params_rejects_nested_params_of_plain_values():
    with pytest.raises(ValueError, match=r"freeze=2 has no nested parameters"):
        make_classifier(freeze=2).set_params(freeze__depth=1)


# -- data handling ----------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["ant", "bee", "wasp"]),
        np.array([10, 20, 30]),
        np.array(["x", "y", "z"], dtype=object),
    ],
)
def test_classifier_returns_original_labels(blobs, labels):
    X, y = blobs
    y_labels = labels[y]
    clf = make_classifier().fit(X, y_labels)
    assert set(clf.classes_) == set(labels)
    pred = clf.predict(X)
    assert pred.dtype == y_labels.dtype
    assert clf.score(X, y_labels) > 0.9


def test_binary_bool_labels(blobs):
    X, y = blobs
    clf = make_classifier().fit(X, y == 0)
    assert clf.predict(X).dtype == bool
    assert clf.predict_proba(X).shape == (len(X), 2)


def test_classes_parameter_fixes_the_column_order(blobs):
    X, y = blobs
    clf = make_classifier(classes=[2, 0, 1]).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, [2, 0, 1])
    proba = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.predict(X), np.array([2, 0, 1])[proba.argmax(1)])
    assert clf.score(X, y) > 0.9


def test_dataframe_input_records_feature_names(blobs):
    X, y = blobs
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = make_classifier().fit(df, pd.Series(y))
    np.testing.assert_array_equal(clf.feature_names_in_, df.columns)
    assert clf.n_features_in_ == 8
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        from_array = clf.predict(X)
    np.testing.assert_array_equal(clf.predict(df), from_array)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_numeric_dtypes_and_tensors(blobs, dtype):
    X, y = blobs
    Xd = (X * 10).astype(dtype)
    clf = make_classifier(max_epochs=1).fit(Xd, y)
    np.testing.assert_array_equal(clf.predict(Xd), clf.predict(torch.as_tensor(Xd)))


def test_logits_head_is_trained_with_cross_entropy(blobs, fitted):
    X, y = blobs
    clf = fitted()
    assert isinstance(clf.criterion_, nn.CrossEntropyLoss)
    clf.module_.eval()
    logits = clf.module_(torch.as_tensor(X[:5], dtype=torch.float32))
    # The network outputs raw logits; predict_proba is their softmax.
    assert not torch.allclose(logits.sum(1), torch.ones(5))
    np.testing.assert_allclose(
        clf.predict_proba(X[:5]), torch.softmax(logits, 1).detach().numpy(), rtol=1e-5
    )
    assert clf.score(X, y) > 0.95


def test_regressor_1d_and_2d_targets(blobs):
    X, _ = blobs
    y1 = X[:, 0] * 2 + X[:, 1]
    reg = FineTuneRegressor(mlp_backbone(), lr=1e-2, max_epochs=20, random_state=0)
    pred = reg.fit(X, y1).predict(X)
    assert pred.shape == (len(X),) and pred.dtype == np.float64
    assert reg.score(X, y1) > 0.9
    y2 = np.c_[y1, -y1, X[:, 2]]
    pred2 = clone(reg).fit(X, y2).predict(X)
    assert pred2.shape == (len(X), 3)
    assert not hasattr(reg, "predict_proba")


def test_image_backbone_with_feature_maps(images):
    X, y = images
    # Random weights learn from scratch: the backbone at the head's rate,
    # its BatchNorm statistics learned too.
    clf = make_classifier(
        tiny_cnn(),
        freeze=Freeze(1, train_bn=True),
        max_epochs=10,
        lr=3e-3,
        backbone_lr=3e-3,
    )
    clf.fit(X, y)
    assert clf.n_blocks_ == 3
    assert clf.n_features_in_ == 1
    assert clf.score(X, y) > 0.8


# -- defaults, describe, errors -------------------------------------------------


def test_defaults_suit_fine_tuning():
    clf = FineTuneClassifier(mlp_backbone())
    assert clf.optimizer is torch.optim.AdamW
    assert clf.criterion is nn.CrossEntropyLoss
    assert clf.train_split is None
    assert clf.lr == 1e-3 and clf.verbose == 1
    assert "module" not in clf.get_params()


def test_training_batches_are_shuffled_unless_told_otherwise(blobs):
    X, y = blobs
    clf = make_classifier(max_epochs=1).fit(X, y)
    assert (
        clf.get_iterator(
            clf.get_dataset(X, y), training=True
        ).sampler.__class__.__name__
        == "RandomSampler"
    )
    clf.set_params(iterator_train__shuffle=False)  # on a fitted net, too
    assert (
        clf.get_iterator(
            clf.get_dataset(X, y), training=True
        ).sampler.__class__.__name__
        == "SequentialSampler"
    )


def test_early_stopping_when_asked(blobs):
    from skorch.callbacks import EarlyStopping
    from skorch.dataset import ValidSplit

    X, y = blobs
    clf = make_classifier(
        max_epochs=50,
        train_split=ValidSplit(0.2, stratified=True, random_state=0),
        callbacks=[EarlyStopping(patience=2, monitor="valid_loss")],
    ).fit(X, np.array(["a", "b", "c"])[y])
    assert len(clf.history_) < 50
    assert clf.history_[-1, "valid_acc"] > 0.9


def test_describe_lists_blocks_with_counts(fitted):
    text = fitted(1).describe()
    lines = text.splitlines()
    assert lines[0].split() == [
        "block",
        "name",
        "params",
        "trainable",
        "frozen",
        "mode",
        "lr",
    ]
    # The rates each row trains at: a module of no known family at lr.
    assert lines[1].split() == ["0", "0", "144", "0", "144", "eval", "-"]
    assert lines[2].split() == ["1", "2", "272", "272", "0", "train", "0.01"]
    assert lines[-2].split() == ["head", "Linear", "51", "51", "0", "train", "0.01"]
    assert lines[-1] == "learning rates: head 0.01, backbone 0.01 (blocks 1-2)"


def test_head_options(blobs):
    X, y = blobs
    mlp = make_classifier(head="mlp").fit(X, y)
    assert isinstance(mlp.module_.head, nn.Sequential)
    custom = make_classifier(
        head=lambda n_in, n_out: nn.Linear(n_in, n_out, bias=False)
    ).fit(X, y)
    assert custom.module_.head.bias is None
    with pytest.raises(
        ValueError,
        match=r"head='conv' is not valid; use one of \['linear', 'mlp'\] or a callable",
    ):
        make_classifier(head="conv").fit(X, y)


def test_input_the_backbone_cannot_process(blobs):
    X, y = blobs
    with pytest.raises(
        ValueError,
        match=r"X has 5 features, but the backbone's first layer \(0: Linear\("
        r"in_features=8, out_features=16, bias=True\)\) takes 8: pass X with 8",
    ):
        make_classifier().fit(X[:, :5], y)


def test_single_class_is_refused(blobs):
    X, _ = blobs
    with pytest.raises(
        ValueError, match=r"y has 1 class \(\[1.0\]\); a classifier needs at least 2"
    ):
        make_classifier().fit(X, np.ones(len(X)))


def test_initialize_without_data_explains_itself():
    from skorch.exceptions import NotInitializedError

    with pytest.raises(
        NotInitializedError, match="sizes its head from the data; call fit"
    ):
        make_classifier().initialize()


def test_a_failure_past_the_first_layer_is_reported_as_it_is(blobs):
    X, y = blobs
    broken = nn.Sequential(nn.Linear(8, 4), nn.Linear(5, 2))  # 4 out, 5 in
    with pytest.raises(
        ValueError,
        match=r"The backbone could not process an input of shape \(1, 8\) \(one "
        r"sample of X\): RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    ):
        make_classifier(broken).fit(X, y)
