"""freeze="auto": the depth chosen in one fit, checked stage by stage."""

import numpy as np
import pytest
import torch
from helpers import make_classifier, mlp_backbone, state_snapshot, tiny_cnn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback
from skorch.dataset import ValidSplit
from torch import nn
from torch.utils.data import Subset

from sktune import FineTuneClassifier, FineTuneRegressor, Freeze, plot_history
from sktune._constraints import InvalidParameterError

# The MLP's blocks (input side first) are the children "0", "2" and "5".
BLOCKS = ("0", "2", "5")


class Stages(Callback):
    """Per epoch: the blocks that train, the parameters holding optimizer
    state, the split's sizes and indices, and the network's state at the
    epoch's end."""

    def initialize(self):
        self.rows = []
        return self

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kw):
        backbone = net.module_.backbone
        named = dict(net.module_.named_parameters())
        self.rows.append(
            {
                "epoch": len(net.history_),
                "search": net.history_[-1]["freeze_search"],
                "training": sorted(
                    {
                        n.split(".")[0]
                        for n, p in backbone.named_parameters()
                        if p.requires_grad
                    }
                ),
                "with_state": sorted(
                    n for n, p in named.items() if p in net.optimizer_.state
                ),
                "frozen": sorted(n for n, p in named.items() if not p.requires_grad),
                "train": _indices(dataset_train),
                "valid": None if dataset_valid is None else _indices(dataset_valid),
                "begin": state_snapshot(net.module_),
            }
        )

    def on_epoch_end(self, net, **kwargs):
        self.rows[-1]["end"] = state_snapshot(net.module_)


def _indices(dataset):
    return np.asarray(dataset.indices) if isinstance(dataset, Subset) else len(dataset)


def auto(**kwargs):
    params = {"freeze": "auto", "max_epochs": 10, "verbose": 0}
    return make_classifier(**{**params, **kwargs})


def test_each_stage_trains_one_more_block_from_the_output_side(blobs):
    X, y = blobs
    stages = Stages()
    clf = auto(max_epochs=12, callbacks=[stages]).fit(X, y)
    rows = stages.rows
    searched = [r for r in rows if r["search"]]
    # Stages of 2 epochs: the head alone, then "5", "2" and "0" unfrozen.
    assert [r["training"] for r in searched[::2]][:4] == [
        [],
        ["5"],
        ["2", "5"],
        ["0", "2", "5"],
    ][: len(searched) // 2]
    assert list(clf.history_[:, "frozen_blocks"])[: len(searched)] == [
        3 - i // 2 for i in range(len(searched))
    ]
    for r in rows:  # frozen parameters never hold optimizer state
        assert not set(r["with_state"]) & set(r["frozen"])
    assert [s["depth"] for s in clf.freeze_search_] == [
        3 - i for i in range(len(searched) // 2)
    ]
    assert all(s["epochs"] == 2 and s["seconds"] > 0 for s in clf.freeze_search_)
    assert len(clf.history_) == 12


def test_the_depth_chosen_is_the_best_scored_stage(blobs):
    X, y = blobs
    clf = auto(max_epochs=12).fit(X, y)
    search = clf.freeze_search_
    best = max(search, key=lambda s: s["score"])
    # Scored on the validation loss, the accuracy recorded beside it.
    assert all(s["score"] == -s["valid_loss"] and "valid_acc" in s for s in search)
    assert clf.freeze_depth_ == best["depth"]
    # The search stopped at the first stage that did not gain, or the budget.
    chosen = [s["depth"] for s in search].index(clf.freeze_depth_)
    assert len(search) - chosen <= 2
    final = [r for r in clf.history_ if not r["freeze_search"]]
    assert {r["frozen_blocks"] for r in final} == {clf.freeze_depth_}
    assert f"freeze='auto' chose depth {clf.freeze_depth_}" in clf.describe()


def test_the_search_stops_by_the_tolerance_and_keeps_the_best_weights(blobs):
    X, y = blobs
    stages = Stages()
    # No stage can gain a whole point of accuracy: the head alone is kept.
    clf = auto(freeze=Freeze("auto", tol=1.0), callbacks=[stages]).fit(X, y)
    assert [s["depth"] for s in clf.freeze_search_] == [3, 2]
    assert clf.freeze_depth_ == 3
    rows = stages.rows
    first_final = next(r for r in rows if not r["search"])
    # Restored: the weights at the end of the head-only stage (epoch 2), the
    # block trained in stage 2 back to its pretrained values.
    for key, value in rows[1]["end"].items():
        assert torch.equal(first_final["begin"][key], value), key
    pristine = state_snapshot(mlp_backbone())
    after = state_snapshot(clf.module_.backbone)
    for key in pristine:
        assert torch.equal(pristine[key], after[key]), key
    assert first_final["training"] == []
    assert sorted(first_final["with_state"]) == ["head.bias", "head.weight"]


def test_patience_is_the_stages_in_a_row_without_a_gain(blobs):
    X, y = blobs
    # No stage gains a whole point: patience 2 tries two deeper stages
    # before it stops, and keeps the first.
    clf = auto(freeze=Freeze("auto", tol=1.0, patience=2), max_epochs=12).fit(X, y)
    assert [s["depth"] for s in clf.freeze_search_] == [3, 2, 1]
    assert clf.freeze_depth_ == 3


def test_the_internal_split_never_trains_in_the_search_and_the_end_sees_all(blobs):
    X, y = blobs
    stages = Stages()
    clf = auto(callbacks=[stages]).fit(X, y)
    searched = [r for r in stages.rows if r["search"]]
    final = [r for r in stages.rows if not r["search"]]
    valid = searched[0]["valid"]
    assert len(valid) == 30
    for r in searched:
        np.testing.assert_array_equal(r["valid"], valid)  # one split for all
        assert not set(r["train"]) & set(valid)
        assert len(r["train"]) == 120
    # Stratified: every class held out in proportion.
    assert np.bincount(y[valid]).tolist() == [10, 10, 10]
    assert final and all(r["train"] == 150 and r["valid"] is None for r in final)
    assert all(
        "valid_acc" not in row for row in clf.history_ if not row["freeze_search"]
    )


def test_a_given_train_split_scores_the_stages_and_stays(blobs):
    X, y = blobs
    clf = auto(train_split=ValidSplit(5, stratified=True)).fit(X, y)
    accs = clf.history_[:, "valid_acc"]
    losses = clf.history_[:, "valid_loss"]
    assert len(accs) == 10  # validated in every epoch, the last ones too
    ends = np.cumsum([s["epochs"] for s in clf.freeze_search_]) - 1
    assert [s["score"] for s in clf.freeze_search_] == [-losses[i] for i in ends]
    assert [s["valid_acc"] for s in clf.freeze_search_] == [accs[i] for i in ends]


def test_the_prefix_cache_serves_each_stage(blobs):
    X, y = blobs
    clf = auto(freeze=Freeze("auto", tol=1.0)).fit(X, y)
    info = clf.cache_info_
    assert info["enabled"]
    # Stage 1 (all frozen) and stage 2 (one block unfrozen) each pass their
    # prefix once; the end at the chosen depth reuses stage 1's rows.
    assert info["computed"] == 2 * len(X)
    assert info["reused"] >= len(X)


def test_a_regressor_scores_stages_by_the_validation_loss(blobs):
    X, _ = blobs
    target = X[:, :2] @ np.array([1.0, -2.0])
    reg = FineTuneRegressor(
        mlp_backbone(), freeze="auto", max_epochs=6, lr=1e-2, random_state=0, verbose=0
    ).fit(X, target.astype(np.float32))
    for s in reg.freeze_search_:
        assert s["score"] == -s["valid_loss"]
    assert reg.freeze_depth_ in {3, 2}


def test_same_seed_same_search_and_predictions(blobs):
    X, y = blobs
    a = auto(max_epochs=6).fit(X, y)
    b = auto(max_epochs=6).fit(X, y)
    assert [s["score"] for s in a.freeze_search_] == [
        s["score"] for s in b.freeze_search_
    ]
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_a_refit_searches_again_and_partial_fit_continues_at_the_depth(blobs):
    X, y = blobs
    clf = auto(max_epochs=6).fit(X, y)
    depth = clf.freeze_depth_
    clf.partial_fit(X, y)
    assert len(clf.history_) == 12 and clf.freeze_depth_ == depth
    assert set(clf.history_[:, "frozen_blocks"][6:]) == {depth}
    assert not any(clf.history_[:, "freeze_search"][6:])
    clf.fit(X, y)
    assert len(clf.history_) == 6 and any(clf.history_[:, "freeze_search"])


def test_step_and_floor(blobs):
    X, y = blobs
    clf = auto(freeze=Freeze("auto", step=2, min_frozen=0, tol=0.0), max_epochs=12).fit(
        X, y
    )
    assert [s["depth"] for s in clf.freeze_search_][:2] == [3, 1]
    floor = auto(freeze=Freeze("auto", min_frozen=2), max_epochs=12).fit(X, y)
    assert [s["depth"] for s in floor.freeze_search_] == [3, 2]


def test_clone_and_grid_search_over_the_options(blobs):
    X, y = blobs
    clf = auto(freeze=Freeze("auto", stage_epochs=1), max_epochs=4)
    copy = clone(clf)
    assert copy.get_params()["freeze__stage_epochs"] == 1
    copy.set_params(freeze__tol=0.05)
    assert clf.freeze.tol == 0.0
    search = GridSearchCV(
        clf, {"freeze__stage_epochs": [1], "lr": [1e-2, 3e-2]}, cv=2
    ).fit(X, y)
    assert search.best_estimator_.freeze_depth_ in {3, 2, 1}
    assert not hasattr(clf, "freeze_depth_")


def test_adapters_only_in_the_blocks_the_search_may_unfreeze(blobs):
    pytest.importorskip("peft")
    X, y = blobs
    clf = auto(
        freeze=Freeze("auto", min_frozen=1), adapter="lora", lr=3e-2, max_epochs=6
    ).fit(X, y)
    assert sorted(m.split(".")[0] for m in clf.adapted_modules_) == ["2", "5"]
    trains = {n for n, p in clf.module_.backbone.named_parameters() if p.requires_grad}
    assert trains and all("lora_" in n for n in trains)
    blocks_training = {n.split(".")[0] for n in trains}
    assert blocks_training == set(BLOCKS[clf.freeze_depth_ :])


def test_a_schedule_and_sample_weights_compose(blobs):
    X, y = blobs
    clf = auto(lr_schedule="linear", max_epochs=6).fit(
        X, y, sample_weight=np.where(y == 0, 2.0, 1.0)
    )
    assert len(clf.history_) == 6 and clf.freeze_depth_ in {3, 2}
    lrs = [g["lr"] for g in clf.optimizer_.param_groups]
    assert all(lr < 1e-2 for lr in lrs)  # decayed over all 6 epochs


def test_layer_decay_and_precision_compose(blobs):
    X, y = blobs
    clf = auto(
        freeze=Freeze("auto", stage_epochs=1),
        layer_decay=0.5,
        precision="bf16",
        max_epochs=4,
    ).fit(X, y)
    rates = {id(p): g["lr"] for g in clf.optimizer_.param_groups for p in g["params"]}
    backbone = dict(clf.module_.backbone.named_parameters())
    assert rates[id(backbone["2.weight"])] == pytest.approx(
        0.5 * rates[id(backbone["5.weight"])]
    )
    assert np.isfinite(clf.predict_proba(X)).all()


def test_save_and_load_predict_the_same(blobs, tmp_path):
    X, y = blobs
    clf = auto(freeze=Freeze("auto", tol=1.0)).fit(X, y)
    clf2 = auto(max_epochs=6).fit(X, y)
    for i, fitted in enumerate((clf, clf2)):
        fitted.save_pretrained(tmp_path / str(i))
        loaded = FineTuneClassifier.from_pretrained(tmp_path / str(i), mlp_backbone())
        assert loaded.freeze_depth_ == fitted.freeze_depth_
        assert [s["score"] for s in loaded.freeze_search_] == [
            s["score"] for s in fitted.freeze_search_
        ]
        np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


def test_plot_history_shades_the_search(blobs):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    X, y = blobs
    clf = auto(freeze=Freeze("auto", tol=1.0)).fit(X, y)
    ax = plot_history(clf)
    labels = [h.get_label() for h in [*ax.get_lines(), *ax.patches]]
    assert "freeze='auto' search" in labels
    assert "chosen: 3 blocks frozen from epoch 5" in labels
    assert "valid loss" in labels
    plt.close("all")


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (
            {"freeze": Freeze("auto", tol=-0.1)},
            InvalidParameterError,
            r"freeze__tol=-0.1 is not valid; use a non-negative number",
        ),
        (
            {"freeze": Freeze("auto", stage_epochs=2), "max_epochs": 5},
            InvalidParameterError,
            r"freeze__stage_epochs=2 does not fit max_epochs=5: .* use max_epochs "
            r"of at least 6 \(3 x stage_epochs\)",
        ),
        (
            {"freeze": "auto", "n_restarts": 2},
            InvalidParameterError,
            r"n_restarts=2 is not valid with freeze='auto'; use n_restarts=1",
        ),
        (
            {"freeze": Freeze("auto", probe_epochs=1)},
            InvalidParameterError,
            r"freeze__depth='auto' runs a schedule of its own",
        ),
        (
            {"freeze": Freeze("auto", min_frozen=3)},
            ValueError,
            r"freeze__min_frozen=3 leaves no depth to search: the backbone has 3 "
            r"blocks, so use an int in \[0, 2\]",
        ),
        (
            {"freeze": Freeze("auto", step=0)},
            InvalidParameterError,
            r"freeze__step=0 is not valid; use a positive int",
        ),
    ],
)
def test_bad_settings(blobs, params, error, message):
    X, y = blobs
    with pytest.raises(error, match=message):
        auto(**params).fit(X, y)


def test_a_single_block_backbone_is_refused(blobs):
    X, y = blobs
    one = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"freeze='auto' chooses how many blocks"):
        auto(backbone=one).fit(X, y)


def test_unknown_options_are_refused():
    clf = auto(freeze=Freeze("auto"))
    with pytest.raises(ValueError, match=r"Invalid parameter 'gamma'"):
        clf.set_params(freeze__gamma=2)
    with pytest.raises(ValueError, match=r"freeze='auto' has no nested parameters"):
        auto().set_params(freeze__tol=0.1)


def test_images_with_a_cnn(images):
    X, y = images
    clf = FineTuneClassifier(
        tiny_cnn(), freeze="auto", max_epochs=6, lr=1e-2, random_state=0, verbose=0
    ).fit(X, y)
    # 3 blocks (stem, stage1, stage2): the head alone, then stage2, ...
    assert [s["depth"] for s in clf.freeze_search_][:2] == [3, 2]
    assert clf.freeze_depth_ in {s["depth"] for s in clf.freeze_search_}
    assert clf.cache_info_["enabled"]


def test_more_classes_than_the_holdout_holds(blobs):
    # 20 samples, 10 classes: a 4-sample holdout cannot hold every class, so
    # it is drawn unstratified (as the restarts' is).
    X, _ = blobs
    y = np.arange(20) % 10
    clf = auto(max_epochs=6).fit(X[:20], y)
    assert len(clf.freeze_search_) == 2
