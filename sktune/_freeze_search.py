"""``freeze="auto"``: the depth chosen inside one fit, stage by stage.

How much of a pretrained network to freeze is usually tuned with a grid
search: depths x folds fine-tunes. The search here costs about one
fine-tune, because it continues one run from stage to stage and the
frozen-prefix cache makes the early, mostly frozen stages nearly free:

1. stage 0 trains the head alone (every block frozen, on cached features);
2. each next stage unfreezes ``step`` more blocks from the output side and
   continues from the weights the stage before left (head included); every
   stage trains ``stage_epochs`` epochs and is scored on a validation split
   at its end;
3. the search stops after ``patience`` stages in a row whose score does
   not gain ``tol`` over the best so far, at the floor ``min_frozen``, or
   when the next stage would leave fewer than ``stage_epochs`` of
   ``max_epochs`` to finish;
4. the best stage's weights are restored (the parameters the search may
   train, the head's, every buffer) with the optimizer's state of that
   moment; the state of parameters frozen again is dropped, so frozen
   parameters hold no optimizer state (DESIGN.md, invariant 3);
5. the fit finishes at the chosen depth for the rest of ``max_epochs``.

The split is the estimator's ``train_split`` (the same indices in every
stage) or, without one, an internal 20% holdout, stratified for classifiers
as the restarts draw it (:mod:`sktune._restarts`). The holdout never trains
during the search, and the finishing epochs train on all the data: the model
ends having seen every sample, as with ``train_split=None``.

The score is minus the validation loss, for classifiers too: on a split of
a few hundred samples accuracy moves in steps of a sample and ties often,
while the loss (log loss, a proper scoring rule) ranks the stages by how
well they fit every sample. Scored on accuracy, MiniLM's search chose 6
frozen blocks where a 3-fold grid search chose 4 (1.5 points lower held
out); on the loss it chose 4 (``benchmarks/auto_freeze.py``). A stage gains
when its loss is lower by more than ``tol``. The validation accuracy of a
classifier is recorded beside it (``valid_acc``). Continuing rather than restarting each stage is what keeps the
cost near one fine-tune; its price is that a deeper stage has also trained
the head longer, which favours depth a little. The defaults
(``stage_epochs=2``, ``step=1``, ``tol=0``) are provisional until
``benchmarks/auto_freeze.py`` has measured them on real tasks.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from ._constraints import InvalidParameterError
from ._restarts import _holdout
from .freeze import is_auto

__all__ = ["check_search", "describe_search", "search", "stage_score"]


def check_search(policy, max_epochs: int) -> None:
    """Raise unless two stages and the finishing epochs fit ``max_epochs``."""
    least = 3 * policy.stage_epochs
    if max_epochs < least:
        raise InvalidParameterError(
            f"freeze__stage_epochs={policy.stage_epochs} does not fit "
            f"max_epochs={max_epochs}: freeze='auto' trains at least two stages "
            f"of {policy.stage_epochs} epochs and finishes at the depth chosen "
            f"for at least {policy.stage_epochs} more, so use max_epochs of at "
            f"least {least} (3 x stage_epochs), or shorter stages."
        )


def stage_score(net) -> tuple[float, float]:
    """The last epoch's validation score (minus the loss) and accuracy (None
    for a regressor); see the module docstring."""
    last = net.history_[-1]
    if "valid_loss" not in last:
        raise ValueError(
            f"freeze='auto' scores each stage on a validation split, but "
            f"train_split={net.train_split!r} held out no samples; use "
            "train_split=None (an internal stratified split) or one that holds "
            "samples out."
        )
    accuracy = float(last["valid_acc"]) if "valid_acc" in last else None
    return -float(last["valid_loss"]), accuracy


def search(stages, net, X, y, epochs: int, loop, announce) -> None:
    """Run the search of ``stages`` (a :class:`~sktune.stages.FitStages` of
    ``freeze="auto"``) and finish at the depth it chooses; ``epochs`` in all.

    Sets ``net.freeze_depth_`` and ``net.freeze_search_``.
    """
    policy = stages.policy
    length = policy.stage_epochs
    depths = sorted(stages.stages, reverse=True)  # all frozen first
    depths = depths[: max(epochs // length - 1, 1)]
    internal = net.train_split is None
    if internal:
        seed = getattr(getattr(net, "_seeds", None), "data", None)
        train, valid = _holdout(np.asarray(_labels(y)), net._regression, seed)
        stages.split_indices = {"indices": (train, valid)}
    else:
        stages.split_indices = {}  # the first stage's split, for all
    results, best, misses = [], None, 0
    for n_frozen in depths:
        start = time.perf_counter()
        stages.train_stage(net, X, y, n_frozen, length, loop, announce)
        score, accuracy = stage_score(net)
        results.append(
            {
                "depth": n_frozen,
                "epochs": length,
                "score": score,
                "valid_loss": -score,
                **({} if accuracy is None else {"valid_acc": accuracy}),
                "seconds": time.perf_counter() - start,
            }
        )
        if best is None or score > results[best[0]]["score"] + policy.tol:
            best, misses = (len(results) - 1, _snapshot(net)), 0
        else:
            misses += 1
            if misses >= policy.patience:
                break
    index, state = best
    chosen = results[index]["depth"]
    _restore(net, state)
    stages.depth, stages.chosen = chosen, True
    net._trainable = stages.trainable(net._network)
    _drop_frozen_state(net)
    net.freeze_depth_ = chosen
    net.freeze_search_ = results
    remaining = epochs - length * len(results)
    if internal:
        stages.split_indices = {"indices": (None, None)}  # all the data
    else:
        stages.split_indices = {}
    stages.enter(net, chosen)
    if remaining > 0:
        stages.train_stage(net, X, y, chosen, remaining, loop)


def _labels(y):
    return y.cpu().numpy() if hasattr(y, "cpu") else y


def _snapshot(net) -> dict:
    """What the stages to come may change: the parameters the search may
    train (the head's too), every buffer, and the optimizer's state of those
    parameters, by name."""
    network = net._network
    params = dict(network.named_parameters())
    tensors = {
        k: v.detach().clone()
        for k, v in network.state_dict().items()
        if k in net._trainable or k not in params
    }
    optimizer = net.optimizer_
    moments = {
        name: copy.deepcopy(optimizer.state[p])
        for name, p in params.items()
        if p in optimizer.state
    }
    return {"tensors": tensors, "optimizer": moments}


def _restore(net, state) -> None:
    network = net._network
    network.load_state_dict(state["tensors"], strict=False)
    optimizer = net.optimizer_
    optimizer.state.clear()
    for name, p in network.named_parameters():
        if name in state["optimizer"]:
            optimizer.state[p] = state["optimizer"][name]


def _drop_frozen_state(net) -> None:
    """Parameters frozen again at the chosen depth: no gradient left over
    from the last step (the optimizer would apply it) and no state."""
    optimizer = net.optimizer_
    for name, p in net._network.named_parameters():
        if name not in net._trainable:
            p.grad = None
            optimizer.state.pop(p, None)


def describe_search(net) -> str:
    """describe()'s line on the depth freeze="auto" chose ("" without one)."""
    depth = getattr(net, "freeze_depth_", None)
    if depth is None or not is_auto(net.freeze):
        return ""
    losses = ", ".join(
        f"{s['depth']}: {s['valid_loss']:.4g}"
        for s in getattr(net, "freeze_search_", [])
    )
    return (
        f"\nfreeze='auto' chose depth {depth} ({depth} of {net.n_blocks_} blocks "
        f"frozen); validation loss by depth: {losses}"
    )
