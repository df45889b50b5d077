"""Fine-tuning recipes over time and depth: freeze schedules, learning rates.

- :func:`frozen_at`: how many blocks a :class:`sktune.Freeze` schedule keeps
  frozen in each epoch (LP-FT's probe epochs, ULMFiT's gradual unfreezing);
  :func:`phases` groups a fit's epochs by it.
- :func:`auto_backbone_lr`, :func:`block_rates` and :func:`param_groups`:
  discriminative learning rates (the head at ``lr``, the backbone at its
  family's rate or lower, layer-wise decay from the output side, as timm's
  ``param_groups_layer_decay``); :func:`rates_in_effect` reads them back
  from the optimizer.
- :class:`LRSchedule` and :class:`WarmupDecay`: linear warmup, then linear
  or cosine decay, stepped every batch (a skorch callback on torch's
  ``LambdaLR``).
"""

from __future__ import annotations

import fnmatch
import math

from skorch.callbacks import Callback
from torch.optim.lr_scheduler import LambdaLR

from ._constraints import Constraint, NestedParams, is_real, one_of

__all__ = [
    "DECAYS",
    "LR_SCHEDULE_ACCEPTED",
    "LRSchedule",
    "WarmupDecay",
    "as_lr_schedule",
    "auto_backbone_lr",
    "block_index",
    "block_rates",
    "check_schedule",
    "format_rates",
    "frozen_at",
    "is_lr_schedule",
    "optimizer_groups",
    "param_groups",
    "phases",
    "rates_in_effect",
    "resolve_backbone_lr",
    "schedule_depths",
]


# -- freeze schedules -----------------------------------------------------------


def frozen_at(
    epoch: int, *, n_blocks: int, depth: int, probe_epochs: int = 0, unfreeze_every=None
) -> int:
    """The number of blocks frozen in ``epoch`` (counted from 1).

    All of them during the first ``probe_epochs`` epochs (only the head
    trains); after that, one more block from the output side becomes
    trainable every ``unfreeze_every`` epochs until ``depth`` frozen blocks
    remain, or ``depth`` at once without ``unfreeze_every``.

    Examples
    --------
    >>> [frozen_at(e, n_blocks=3, depth=0, probe_epochs=2, unfreeze_every=1)
    ...  for e in range(1, 7)]
    [3, 3, 2, 1, 0, 0]
    """
    if epoch <= probe_epochs:
        return n_blocks
    if unfreeze_every is None:
        return depth
    unfrozen = (epoch - probe_epochs - 1) // unfreeze_every + 1
    return max(depth, n_blocks - unfrozen)


def schedule_depths(
    *, n_blocks: int, depth: int, probe_epochs: int = 0, unfreeze_every=None
) -> set[int]:
    """Every number of frozen blocks :func:`frozen_at` passes through before
    ``depth`` (the schedule's stages, ``depth`` itself excluded)."""
    visited = {n_blocks} if probe_epochs else set()
    if unfreeze_every is not None:
        visited |= set(range(depth + 1, n_blocks))
    return visited - {depth}


def check_schedule(
    *, n_blocks: int, depth: int, probe_epochs: int, unfreeze_every, max_epochs: int
) -> None:
    """Raise unless the schedule reaches ``depth`` within ``max_epochs`` epochs."""
    if probe_epochs == 0 and unfreeze_every is None:
        return
    last = probe_epochs + 1
    if unfreeze_every is not None:
        last += unfreeze_every * max(n_blocks - 1 - depth, 0)
    if depth >= n_blocks:
        raise ValueError(
            f"freeze__probe_epochs and freeze__unfreeze_every need blocks to "
            f"unfreeze, but freeze__depth={depth} freezes all {n_blocks}."
        )
    if last > max_epochs:
        raise ValueError(
            f"The freeze schedule (probe_epochs={probe_epochs}, unfreeze_every="
            f"{unfreeze_every}) reaches depth {depth} of {n_blocks} blocks in epoch "
            f"{last}, after max_epochs={max_epochs}: train for at least {last} "
            "epochs, or shorten the schedule."
        )


def phases(first_epoch: int, epochs: int, frozen) -> list[tuple[int, int]]:
    """``(n_epochs, n_frozen)`` runs of epochs ``first_epoch .. +epochs-1``.

    ``frozen(epoch)`` gives the frozen depth of an epoch (:func:`frozen_at`).
    """
    runs: list[tuple[int, int]] = []
    for epoch in range(first_epoch, first_epoch + epochs):
        depth = frozen(epoch)
        if runs and runs[-1][1] == depth:
            runs[-1] = (runs[-1][0] + 1, depth)
        else:
            runs.append((1, depth))
    return runs


# -- learning rates -------------------------------------------------------------


def auto_backbone_lr(lr: float, family_rate: float | None) -> float:
    """``backbone_lr="auto"``: the family's rate, never above ``lr``.

    A pretrained backbone trains at its family's fine-tuning rate (1e-5 for
    Hugging Face encoders at the default ``lr=1e-3``), or at ``lr`` where the
    user asked for less: ``lr=5e-5`` on a transformer trains the backbone at
    1e-5, ``lr=5e-6`` at 5e-6, and never at a hundredth of what was typed.
    A family with no rate of its own (None) trains at ``lr``.

    Examples
    --------
    >>> auto_backbone_lr(1e-3, 1e-5), auto_backbone_lr(5e-6, 1e-5)
    (1e-05, 5e-06)
    """
    return float(lr) if family_rate is None else min(float(lr), family_rate)


def resolve_backbone_lr(backbone_lr, lr, *, adapters: bool, family_rate) -> float:
    """The rate of the block nearest the head.

    A number is taken as it is. ``"auto"``: with adapters, ``lr`` (adapters
    are fresh parameters, like the head); else the family's rate capped by
    ``lr`` (:func:`auto_backbone_lr`).
    """
    if backbone_lr != "auto":
        return float(backbone_lr)
    if adapters:
        return float(lr)
    return auto_backbone_lr(lr, family_rate)


def block_rates(
    n_blocks: int, backbone_lr: float, layer_decay: float | None
) -> list[float]:
    """The learning rate of each block, input side first.

    The block nearest the head trains at ``backbone_lr``; each block below
    at ``layer_decay`` times the one above it (no decay: all at
    ``backbone_lr``). Frozen blocks keep their place in the count, so a rate
    does not depend on how many blocks are frozen.
    """
    decay = 1.0 if layer_decay is None else float(layer_decay)
    return [backbone_lr * decay ** (n_blocks - 1 - i) for i in range(n_blocks)]


def block_index(blocks) -> dict[str, int]:
    """Backbone parameter name -> the index of its block."""
    return {p: i for i, block in enumerate(blocks) for p in block.params}


def optimizer_groups(
    named_params, blocks, *, lr, backbone_lr, layer_decay, patterns=()
) -> list[dict]:
    """The optimizer's groups: the head at ``lr``, the block nearest the
    head at ``backbone_lr`` and each block below at ``layer_decay`` times
    the one above; ``patterns`` (``optimizer__param_groups``) first."""
    return param_groups(
        named_params,
        block_index(blocks),
        block_rates(len(blocks), backbone_lr, layer_decay),
        backbone_lr,
        patterns,
        lr=lr,
    )


def param_groups(
    named_params, block_of: dict[str, int], rates, backbone_lr, patterns=(), lr=None
):
    """Optimizer parameter groups: the user's patterns first, then by rate.

    Parameters
    ----------
    named_params : iterable of (str, Parameter)
        The parameters that train, named as in the network (``backbone.*``,
        ``head.*``).
    block_of : dict
        Backbone parameter name -> block index.
    rates : list of float
        Each block's learning rate (:func:`block_rates`).
    backbone_lr : float
        The rate of backbone parameters in no block.
    patterns : list of (str, dict)
        skorch's ``optimizer__param_groups``: parameters whose name matches a
        pattern (fnmatch) go to that group with its options, as in skorch.
    lr : float, optional
        The optimizer's own rate (the head's): blocks at that rate share the
        head's group (one group less for the optimizer to loop over).

    Returns
    -------
    list of dict
        Groups; the head's carries no ``lr`` (it takes the optimizer's).
    """
    params = list(named_params)
    groups = []
    for pattern, options in patterns:
        matched = [p for n, p in params if fnmatch.fnmatch(n, pattern)]
        if matched:
            groups.append({"params": matched, **options})
            params = [(n, p) for n, p in params if not fnmatch.fnmatch(n, pattern)]
    head = [p for n, p in params if not n.startswith("backbone.")]
    by_rate: dict[float, list] = {}
    for name, p in params:
        if name.startswith("backbone."):
            block = block_of.get(name[len("backbone.") :])
            rate = backbone_lr if block is None else rates[block]
            (head if rate == lr else by_rate.setdefault(rate, [])).append(p)
    if head:
        groups.append({"params": head})
    groups += [{"params": ps, "lr": rate} for rate, ps in sorted(by_rate.items())]
    return groups


def rates_in_effect(optimizer, named_params, block_of, adapters=()) -> dict:
    """The learning rates the optimizer applies, by part of the network.

    Read back from the optimizer's groups (a schedule's base rate,
    ``initial_lr``, where one runs), so ``optimizer__param_groups`` patterns
    show as they act.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    named_params : iterable of (str, Parameter)
        The network's parameters (``backbone.*``, ``head.*``).
    block_of : dict
        Backbone parameter name -> block index.
    adapters : collection of str
        Backbone parameter names of adapters.

    Returns
    -------
    dict
        ``"params"``: parameter name -> rate, for those the optimizer holds;
        ``"head"``: the head's rate; ``"top"`` and ``"lowest"``: ``(block,
        rate)`` of the trainable blocks nearest the head and the input
        (None when no block trains); ``"adapters"``: the adapters' highest
        rate (None without adapters).
    """
    rate_of = {
        id(p): group.get("initial_lr", group["lr"])
        for group in optimizer.param_groups
        for p in group["params"]
    }
    params = {n: rate_of[id(p)] for n, p in named_params if id(p) in rate_of}
    head = [r for n, r in params.items() if not n.startswith("backbone.")]
    blocks: dict[int, float] = {}
    adapter_rates = []
    for name, rate in params.items():
        if not name.startswith("backbone."):
            continue
        inner = name[len("backbone.") :]
        if inner in adapters:
            adapter_rates.append(rate)
        block = block_of.get(inner)
        if block is not None:
            blocks[block] = max(rate, blocks.get(block, rate))
    top = max(blocks) if blocks else None
    low = min(blocks) if blocks else None
    return {
        "params": params,
        "head": max(head) if head else None,
        "top": None if top is None else (top, blocks[top]),
        "lowest": None if low is None else (low, blocks[low]),
        "adapters": max(adapter_rates) if adapter_rates else None,
    }


def format_rates(rates: dict) -> str:
    """One line: ``head 0.001, backbone 1e-05 (block 6) to 2.4e-06 (block 3)``."""
    parts = [] if rates["head"] is None else [f"head {rates['head']:.2g}"]
    if rates["top"] is not None:
        (top, top_rate), (low, low_rate) = rates["top"], rates["lowest"]
        what = "adapters" if rates["adapters"] is not None else "backbone"
        if low == top or low_rate == top_rate:
            span = f"block {top}" if low == top else f"blocks {low}-{top}"
            parts.append(f"{what} {top_rate:.2g} ({span})")
        else:
            parts.append(
                f"{what} {top_rate:.2g} (block {top}) to {low_rate:.2g} (block {low})"
            )
    return ", ".join(parts) or "nothing trains"


# -- warmup and decay -------------------------------------------------------------

DECAYS = ("linear", "cosine")
LR_SCHEDULE_ACCEPTED = (
    "None (a constant rate), 'linear', 'cosine' or an LRSchedule(decay=..., warmup=...)"
)


class LRSchedule(NestedParams):
    """Linear warmup, then decay to zero, over the epochs of a fit.

    Parameters
    ----------
    decay : {"linear", "cosine"}, default="linear"
    warmup : float, default=0.1
        The fraction of the fit over which the rates rise from 0.

    Examples
    --------
    >>> from sktune.schedules import LRSchedule
    >>> s = LRSchedule(warmup=0.25)
    >>> [round(s.factor(p / 8), 2) for p in range(9)]
    [0.0, 0.5, 1.0, 0.83, 0.67, 0.5, 0.33, 0.17, 0.0]
    """

    _constraints = {
        "decay": Constraint(f"one of {list(DECAYS)}", one_of(*DECAYS)),
        "warmup": Constraint("a number in [0, 1)", lambda v: is_real(v) and 0 <= v < 1),
    }

    def __init__(self, decay="linear", warmup=0.1):
        self.decay = decay
        self.warmup = warmup

    def factor(self, progress: float) -> float:
        """The multiplier of every group's rate, ``progress`` of the way in."""
        if progress < self.warmup:
            return progress / self.warmup
        rest = min(1.0, (progress - self.warmup) / max(1e-12, 1.0 - self.warmup))
        if self.decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * rest))
        return 1.0 - rest


def is_lr_schedule(value) -> bool:
    """Whether ``value`` is an ``lr_schedule`` parameter by its type."""
    return value is None or isinstance(value, LRSchedule) or one_of(*DECAYS)(value)


def as_lr_schedule(value) -> LRSchedule | None:
    """The :class:`LRSchedule` a valid ``lr_schedule`` parameter stands for."""
    return LRSchedule(decay=value) if isinstance(value, str) else value


class WarmupDecay(Callback):
    """Sets the rates from the estimator's ``lr_schedule`` before every batch.

    Progress is counted in epochs of the fit (``max_epochs`` of them; a
    ``partial_fit`` call counts its own), so the schedule holds when the
    training set changes size between epochs. With ``lr_schedule=None`` it
    does nothing, so a skorch ``LRScheduler`` callback can take its place.
    """

    def initialize(self):
        self.scheduler_ = None
        self.epochs_ = 0
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.initialize()

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        schedule = as_lr_schedule(net.lr_schedule)
        if schedule is None or dataset_train is None:
            self.scheduler_ = None
            return
        self.batches_ = max(1, len(net.get_iterator(dataset_train, training=True)))
        self.batch_ = 0
        if self.scheduler_ is None:
            self.scheduler_ = LambdaLR(
                net.optimizer_, lambda _: schedule.factor(self._progress(net))
            )

    def _progress(self, net) -> float:
        return (self.epochs_ + self.batch_ / self.batches_) / max(1, net.max_epochs)

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.scheduler_ is not None:
            self.batch_ += 1
            self.scheduler_.step()

    def on_epoch_end(self, net, **kwargs):
        self.epochs_ += 1

    def on_train_end(self, net, **kwargs):
        self.scheduler_ = None
