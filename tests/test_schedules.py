"""Recipes over time and depth: freeze schedules, BitFit, learning rates."""

import numpy as np
import pytest
import torch
from helpers import (
    CountingLinear,
    counting_backbone,
    make_classifier,
    mlp_backbone,
    state_snapshot,
    tiny_cnn,
)
from skorch.callbacks import Callback, LRScheduler

from sktune import Freeze, LRSchedule
from sktune.schedules import frozen_at


class Snapshots(Callback):
    """The backbone's state after every epoch, and the rates of every batch."""

    def initialize(self):
        self.states, self.lrs = [], []
        return self

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.lrs.append([g["lr"] for g in net.optimizer_.param_groups])

    def on_epoch_end(self, net, **kwargs):
        self.states.append(state_snapshot(net.module_.backbone))


def moved_blocks(before: dict, after: dict) -> list[str]:
    """MLP blocks whose weights changed: "0", "2", "5"."""
    return sorted(
        {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    )


def test_frozen_at_follows_the_documented_example():
    depths = [
        frozen_at(e, n_blocks=3, depth=0, probe_epochs=2, unfreeze_every=1)
        for e in range(1, 7)
    ]
    assert depths == [3, 3, 2, 1, 0, 0]
    assert [frozen_at(e, n_blocks=3, depth=1, probe_epochs=1) for e in (1, 2, 5)] == [
        3,
        1,
        1,
    ]
    assert [
        frozen_at(e, n_blocks=4, depth=0, unfreeze_every=2) for e in range(1, 9)
    ] == [3, 3, 2, 2, 1, 1, 0, 0]


def test_gradual_unfreezing_moves_exactly_the_scheduled_blocks(blobs):
    X, y = blobs
    snaps = Snapshots()
    clf = make_classifier(
        freeze=Freeze(depth=0, probe_epochs=2, unfreeze_every=1),
        max_epochs=6,
        callbacks=[snaps],
    ).fit(X, y)
    assert list(clf.history_[:, "frozen_blocks"]) == [3, 3, 2, 1, 0, 0]
    pristine = state_snapshot(mlp_backbone())
    states = [pristine, *snaps.states]
    moved = [moved_blocks(states[i], states[i + 1]) for i in range(6)]
    # A frozen block gets no update at all: no gradient, no weight decay, no
    # momentum carried over from an earlier epoch.
    assert moved == [[], [], ["5"], ["2", "5"], ["0", "2", "5"], ["0", "2", "5"]]


def test_lp_ft_probes_on_the_cached_features(blobs):
    X, y = blobs
    CountingLinear.seen = 0
    clf = make_classifier(
        counting_backbone(), freeze=Freeze(depth=0, probe_epochs=3), max_epochs=5
    ).fit(X, y)
    assert list(clf.history_[:, "frozen_blocks"]) == [2, 2, 2, 0, 0]
    # One cached pass for the probe epochs, then two epochs of the whole
    # network: not five.
    assert len(X) * 3 <= CountingLinear.seen <= len(X) * 3 + 2 * clf.batch_size


def test_stages_share_one_validation_split(blobs):
    from skorch.dataset import ValidSplit

    X, y = blobs
    clf = make_classifier(
        freeze=Freeze(depth=0, probe_epochs=1, unfreeze_every=1),
        max_epochs=4,
        train_split=ValidSplit(0.2, stratified=True),
    ).fit(X, y)
    sizes = {
        sum(b["valid_batch_size"] for b in e["batches"] if "valid_batch_size" in b)
        for e in clf.history_
    }
    assert sizes == {30}
    assert np.isfinite(clf.history_[:, "valid_loss"]).all()


@pytest.mark.parametrize(
    ("freeze", "epochs", "message"),
    [
        (
            Freeze(depth=0, probe_epochs=2, unfreeze_every=2),
            5,
            r"reaches depth 0 of 3 blocks in epoch 7, after max_epochs=5",
        ),
        (Freeze(depth="all", probe_epochs=1), 5, r"freeze__depth=3 freezes all 3"),
        (
            Freeze(depth=["0.*"], probe_epochs=1),
            5,
            r"freeze__depth=\['0.\*'\] is a list of parameter patterns",
        ),
        (Freeze(unfreeze_every=0), 5, r"freeze__unfreeze_every=0 is not valid"),
    ],
)
def test_schedules_that_do_not_fit_are_reported(blobs, freeze, epochs, message):
    X, y = blobs
    with pytest.raises(ValueError, match=message):
        make_classifier(freeze=freeze, max_epochs=epochs).fit(X, y)


def test_bitfit_trains_the_biases_of_frozen_blocks_only(blobs):
    X, y = blobs
    clf = make_classifier(freeze=Freeze(depth=2, train_bias=True)).fit(X, y)
    before, after = state_snapshot(mlp_backbone()), state_snapshot(clf.module_.backbone)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"0.bias", "2.bias", "5.weight", "5.bias"}
    assert not clf.module_.backbone[0].training or not clf.module_.training


def test_the_head_and_each_block_learn_at_their_rates(blobs, images):
    X, y = blobs
    clf = make_classifier(
        freeze=1, lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, max_epochs=1
    ).fit(X, y)
    groups = {
        round(g["lr"], 8): sorted(
            n
            for n, p in clf.module_.named_parameters()
            if any(p is q for q in g["params"])
        )
        for g in clf.optimizer_.param_groups
    }
    # Block 0 is frozen (not in the optimizer); block 2 at backbone_lr,
    # block 1 at half of it, the head at lr.
    assert groups == {
        0.01: ["head.bias", "head.weight"],
        0.0005: ["backbone.2.bias", "backbone.2.weight"],
        0.001: ["backbone.5.bias", "backbone.5.weight"],
    }


@pytest.mark.parametrize(
    ("lr", "cnn_rate"),
    [
        (1e-2, 1e-4),  # the family's rate
        (1e-3, 1e-4),  # the default lr
        (5e-5, 5e-5),  # never above what the user asked for
    ],
)
def test_auto_backbone_lr_is_the_family_rate_capped_by_lr(blobs, images, lr, cnn_rate):
    # A module of no known family, without convolutions: at lr.
    auto = make_classifier(lr=lr, max_epochs=1, verbose=0).fit(*blobs)
    assert auto.backbone_lr_ == pytest.approx(lr)
    cnn = make_classifier(tiny_cnn(), lr=lr, max_epochs=1, verbose=0).fit(*images)
    assert cnn.backbone_lr_ == pytest.approx(cnn_rate)
    rates = sorted(g["lr"] for g in cnn.optimizer_.param_groups)
    assert rates == sorted({lr, cnn_rate}) or rates == [lr, cnn_rate]
    # Adapters are fresh parameters, like the head: at lr.
    lora = make_classifier(tiny_cnn(), adapter="lora", lr=lr, max_epochs=1)
    assert lora.set_params(verbose=0).fit(*images).backbone_lr_ == pytest.approx(lr)
    assert f"adapters {lr:.2g} (blocks 0-2)" in lora.describe().splitlines()[-1]


def test_backbone_lr_is_set_by_fit(blobs):
    clf = make_classifier(lr=1e-2, backbone_lr="auto", max_epochs=1, verbose=0)
    with pytest.raises(AttributeError):
        clf.backbone_lr_  # noqa: B018
    assert clf.fit(*blobs).backbone_lr_ == pytest.approx(1e-2)


def test_layer_decay_shows_the_lowest_trainable_block(blobs):
    clf = make_classifier(
        freeze=1, lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, max_epochs=1, verbose=0
    ).fit(*blobs)
    assert clf.describe().splitlines()[-1] == (
        "learning rates: head 0.01, backbone 0.001 (block 2) to 0.0005 (block 1)"
    )


def test_param_group_patterns_win_over_the_rates(blobs):
    X, y = blobs
    clf = make_classifier(
        freeze=0, optimizer__param_groups=[("backbone.0.*", {"lr": 0.5})], max_epochs=1
    ).fit(X, y)
    rates = sorted(round(g["lr"], 6) for g in clf.optimizer_.param_groups)
    assert rates == [0.01, 0.5]  # head and blocks 1-2 at lr, block 0


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_warmup_then_decay_over_the_fit(blobs, decay):
    X, y = blobs
    snaps = Snapshots()
    make_classifier(
        lr=1e-2,
        lr_schedule=LRSchedule(decay=decay, warmup=0.2),
        max_epochs=5,
        batch_size=30,
        callbacks=[snaps],
    ).fit(X, y)
    head = [rates[0] for rates in snaps.lrs]  # 5 batches x 5 epochs
    assert len(head) == 25
    schedule = LRSchedule(decay=decay, warmup=0.2)
    expected = [1e-2 * schedule.factor(step / 25) for step in range(25)]
    np.testing.assert_allclose(head, expected, rtol=1e-6, atol=1e-12)
    assert head[5] == pytest.approx(1e-2) and head[-1] < 1e-3


def test_a_skorch_lr_scheduler_takes_the_place_of_the_schedule(blobs):
    X, y = blobs
    snaps = Snapshots()
    make_classifier(
        lr=1e-2,
        max_epochs=3,
        callbacks=[LRScheduler("StepLR", step_size=1, gamma=0.5), snaps],
    ).fit(X, y)
    heads = sorted({round(rates[0], 8) for rates in snaps.lrs})
    assert heads == [0.0025, 0.005, 0.01]
