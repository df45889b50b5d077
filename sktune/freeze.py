"""Freeze policies: which backbone parameters train, which modules run in eval.

A policy is resolved against a backbone's block map (:mod:`sktune.blocks`)
into a :class:`FreezePlan`; the plan is applied with plain functions on an
``nn.Module``. Frozen parameters get ``requires_grad=False`` (so they get no
gradient and stay out of the optimizer) and frozen modules run in eval mode
while the rest trains: dropout is off there.

BatchNorm layers run in eval mode everywhere by default, in trainable blocks
too: their running statistics stay the pretrained ones while their affine
parameters train with their block (Keras's advice for fine-tuning; on 244
ant/bee photos it turned EfficientNet-Lite0's full fine-tune from below its
linear probe to above it, ``benchmarks/recipes.py``). ``train_bn=True`` lets
every BatchNorm layer train, statistics included, in frozen blocks too.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from ._constraints import (
    BOOL,
    Constraint,
    InvalidParameterError,
    NestedParams,
    is_int,
    is_real,
)

if TYPE_CHECKING:
    from .blocks import Block

__all__ = [
    "FREEZE_ACCEPTED",
    "Freeze",
    "FreezePlan",
    "apply_freeze",
    "at_depth",
    "auto_depths",
    "frozen_modules",
    "is_auto",
    "is_policy",
    "options",
    "plan_freeze",
    "with_adapters",
]

FREEZE_ACCEPTED = (
    "None or 0 (train everything), an int k (freeze the first k blocks), a "
    "negative int -k (freeze all but the last k blocks), a float in [0, 1] (that "
    "fraction of the blocks), 'all' (train only the head), 'auto' (the depth "
    "chosen in the fit, on a validation split), a list of "
    "parameter-name patterns, or a Freeze(...) object"
)


class Freeze(NestedParams):
    """A freeze policy with options, usable as a nested hyperparameter.

    ``GridSearchCV(clf, {"freeze__depth": [0, 2, 4]})`` tunes the depth of a
    ``FineTuneClassifier(..., freeze=Freeze(train_bn=True))``.

    Parameters
    ----------
    depth : None, int, float, "all" or list of str, default=0
        What to freeze: see the ``freeze`` parameter of the estimators.
    train_bn : bool, default=False
        False: every BatchNorm layer keeps its pretrained running statistics
        (eval mode); its affine parameters train where its block trains.
        True: every BatchNorm layer trains, statistics included, also inside
        frozen blocks.
    train_bias : bool, default=False
        BitFit (Ben Zaken et al. 2022): the bias terms inside frozen blocks
        train too (the blocks stay in eval mode).
    probe_epochs : int, default=0
        LP-FT (Kumar et al. 2022): train only the head for this many epochs
        first (on cached features, nearly free), then the blocks ``depth``
        leaves trainable.
    unfreeze_every : None or int, default=None
        Gradual unfreezing (ULMFiT, Howard & Ruder 2018): after the probe
        epochs, make one more block trainable from the output side every
        this many epochs until ``depth`` is reached. None: all at once.
    stage_epochs : int, default=2
        ``depth="auto"`` only: the epochs each stage of the search trains.
    step : int, default=1
        ``depth="auto"`` only: the blocks each stage unfreezes beyond the
        one before (from the output side).
    tol : float, default=0.0
        ``depth="auto"`` only: the least decrease of the validation loss a
        deeper stage needs to count as a gain (the stages are scored on the
        loss, for classifiers too: see :mod:`sktune._freeze_search`).
    min_frozen : int, default=0
        ``depth="auto"`` only: the floor, the fewest blocks the search
        leaves frozen (0: it may reach the full fine-tune).
    patience : int, default=1
        ``depth="auto"`` only: the stages in a row without a gain after
        which the search stops. 2 went one stage further on MiniLM and chose
        the same depth with fewer epochs left to finish at, and lower
        held-out accuracy (``benchmarks/auto_freeze.py``).

    Notes
    -----
    With a schedule, the number of frozen blocks starts at all of them;
    epochs 1 to ``probe_epochs`` train only the head; after that, every
    ``unfreeze_every`` epochs one more block becomes trainable until
    ``depth``. With 3 blocks, ``Freeze(depth=0, probe_epochs=2,
    unfreeze_every=1)`` trains the head in epochs 1-2, the last block too in
    epoch 3, the middle block too in epoch 4, everything from epoch 5. A
    block frozen in an epoch gets no update at all (no gradient, so no
    weight decay or momentum either); ``history_[:, "frozen_blocks"]``
    records each epoch's depth, and the frozen-prefix cache follows it.

    ``depth="auto"`` chooses the depth in the fit (see
    :mod:`sktune._freeze_search`): the head alone on cached features first,
    then ``step`` more blocks from the output side per stage, each stage
    ``stage_epochs`` epochs long and scored on a validation split (the
    estimator's ``train_split``, else an internal stratified 20%), until a
    ``patience`` stages in a row gain less than ``tol``, or the floor
    ``min_frozen`` is reached.
    The best stage's weights are kept and the fit finishes at its depth for
    the rest of ``max_epochs`` (on all the data where the split was
    internal). The search uses at most ``max_epochs - stage_epochs`` epochs,
    so ``max_epochs`` must be at least ``3 * stage_epochs``. The fields
    ``stage_epochs``, ``step``, ``tol``, ``min_frozen`` and ``patience`` are
    ignored at
    any other depth; the defaults are provisional until the benchmark
    (``benchmarks/auto_freeze.py``) has measured them.

    Examples
    --------
    >>> from sktune import Freeze
    >>> Freeze(depth=2).get_params()["depth"]
    2
    >>> lp_ft = Freeze(depth=0, probe_epochs=3)
    >>> searched = Freeze("auto", stage_epochs=3, tol=0.01)
    """

    _constraints = {
        "depth": Constraint(
            FREEZE_ACCEPTED.replace(", or a Freeze(...) object", ""),
            lambda v: is_policy(v) and not isinstance(v, Freeze),
        ),
        "train_bn": BOOL,
        "train_bias": BOOL,
        "probe_epochs": Constraint("a non-negative int", lambda v: is_int(v, 0)),
        "unfreeze_every": Constraint(
            "None or a positive int", lambda v: v is None or is_int(v, 1)
        ),
        "stage_epochs": Constraint("a positive int", lambda v: is_int(v, 1)),
        "step": Constraint("a positive int", lambda v: is_int(v, 1)),
        "tol": Constraint(
            "a non-negative number (a decrease of the validation loss)",
            lambda v: is_real(v) and v >= 0,
        ),
        "min_frozen": Constraint("a non-negative int", lambda v: is_int(v, 0)),
        "patience": Constraint("a positive int", lambda v: is_int(v, 1)),
    }

    def __init__(
        self,
        depth=0,
        train_bn=False,
        train_bias=False,
        probe_epochs=0,
        unfreeze_every=None,
        stage_epochs=2,
        step=1,
        tol=0.0,
        min_frozen=0,
        patience=1,
    ):
        self.depth = depth
        self.train_bn = train_bn
        self.train_bias = train_bias
        self.probe_epochs = probe_epochs
        self.unfreeze_every = unfreeze_every
        self.stage_epochs = stage_epochs
        self.step = step
        self.tol = tol
        self.min_frozen = min_frozen
        self.patience = patience

    def schedules(self) -> bool:
        """Whether the frozen depth changes during a fit."""
        return bool(self.probe_epochs) or self.unfreeze_every is not None

    def _check_fields_together(self, name: str) -> None:
        if self.schedules() and isinstance(self.depth, (list, tuple)):
            raise InvalidParameterError(
                f"{name}__probe_epochs and {name}__unfreeze_every count blocks, but "
                f"{name}__depth={self.depth!r} is a list of parameter patterns; "
                "give a depth (an int, a float or 'all')."
            )
        if self.schedules() and is_auto(self.depth):
            raise InvalidParameterError(
                f"{name}__probe_epochs and {name}__unfreeze_every set a schedule, "
                f"but {name}__depth='auto' runs a schedule of its own (the head "
                "alone first, then one more block per stage); use "
                f"{name}__stage_epochs and {name}__step, or give a depth."
            )


@dataclass(frozen=True)
class FreezePlan:
    """A freeze policy resolved against one backbone.

    Attributes
    ----------
    frozen_params : frozenset of str
        Backbone parameter names that get ``requires_grad=False``.
    eval_modules : tuple of str
        Backbone submodule names that stay in eval mode during training.
    n_frozen_blocks : int or None
        How many blocks are frozen (None for pattern-based policies).
    """

    frozen_params: frozenset[str]
    eval_modules: tuple[str, ...]
    n_frozen_blocks: int | None


def is_policy(freeze) -> bool:
    """Whether ``freeze`` is a freeze policy by its type (ranges need blocks).

    A :class:`Freeze` is checked field by field when validated as a nested
    parameter; here it counts as a policy.
    """
    if freeze is None or isinstance(freeze, Freeze):
        return True
    if isinstance(freeze, str):
        return freeze in ("all", "auto")
    if isinstance(freeze, (list, tuple)):
        return all(isinstance(p, str) for p in freeze)
    if isinstance(freeze, numbers.Integral):
        return not isinstance(freeze, bool)
    return is_real(freeze) and 0.0 <= freeze <= 1.0


def is_auto(freeze) -> bool:
    """Whether ``freeze`` asks for the depth to be chosen in the fit."""
    depth = freeze.depth if isinstance(freeze, Freeze) else freeze
    return isinstance(depth, str) and depth == "auto"


def auto_depths(freeze, n_blocks: int, *, param: str = "freeze") -> list[int]:
    """The depths (frozen blocks) the search of ``freeze="auto"`` may visit,
    all frozen first, then ``step`` fewer each stage, down to ``min_frozen``.

    Raises
    ------
    ValueError
        For a backbone of a single block, or a floor that leaves no depth
        to search.
    """
    policy = options(freeze)
    name = f"{param}__depth='auto'" if isinstance(freeze, Freeze) else f"{param}='auto'"
    if n_blocks < 2:
        raise ValueError(
            f"{name} chooses how many blocks to freeze, but the backbone has "
            f"{n_blocks} block: there is no depth between the head alone and the "
            "whole network to choose; use freeze='all' or freeze=0 (or compare "
            "them with GridSearchCV)."
        )
    floor = policy.min_frozen
    if floor >= n_blocks:
        raise ValueError(
            f"{param}__min_frozen={floor} leaves no depth to search: the backbone "
            f"has {n_blocks} blocks, so use an int in [0, {n_blocks - 1}]."
        )
    depths = list(range(n_blocks, floor, -policy.step))
    return [*depths, floor]


def plan_freeze(
    module: nn.Module, blocks: list[Block], freeze, *, param: str = "freeze"
) -> FreezePlan:
    """Resolve a freeze policy against ``module`` and its ``blocks``.

    Raises
    ------
    ValueError
        For an int depth out of the backbone's range, or a pattern that
        matches no parameter: the checks that need the backbone (any other
        bad value is refused by the parameter check first).
    """
    if is_auto(freeze):
        raise ValueError(
            f"{param}='auto' is a search over depths: plan one of its depths "
            "(at_depth)."
        )
    train_bn = train_bias = False
    if isinstance(freeze, Freeze):
        train_bn, train_bias = freeze.train_bn, freeze.train_bias
        freeze, param = freeze.depth, f"{param}__depth"
    n_blocks = len(blocks)

    if isinstance(freeze, (list, tuple)):
        frozen = _match_patterns(module, freeze, param)
        eval_modules = _eval_modules_for_params(module, frozen, train_bn)
        depth = None
    elif isinstance(freeze, str) and freeze == "all":
        frozen = {name for name, _ in module.named_parameters()}
        eval_modules = _descendants(module, [""], train_bn)
        depth = n_blocks
    else:
        depth = _resolve_depth(freeze, n_blocks, param)
        chosen = blocks[:depth]
        frozen = {p for block in chosen for p in block.params}
        roots = [m for block in chosen for m in block.modules]
        eval_modules = _descendants(module, roots, train_bn)
    if train_bn:
        frozen -= _batchnorm_params(module)
    else:
        eval_modules = tuple(
            dict.fromkeys(
                (
                    *eval_modules,
                    *(n for n, m in module.named_modules() if _is_batchnorm(m)),
                )
            )
        )
    if train_bias:
        frozen = {n for n in frozen if n.rsplit(".", 1)[-1] != "bias"}
    return FreezePlan(frozenset(frozen), eval_modules, depth)


def options(freeze) -> Freeze:
    """The :class:`Freeze` a valid ``freeze`` parameter stands for."""
    return freeze if isinstance(freeze, Freeze) else Freeze(depth=freeze)


def at_depth(freeze, n_frozen: int, n_blocks: int) -> Freeze:
    """The policy of ``freeze`` with ``n_frozen`` blocks frozen (all: ``"all"``)."""
    policy = options(freeze)
    return Freeze(
        depth="all" if n_frozen >= n_blocks else n_frozen,
        train_bn=policy.train_bn,
        train_bias=policy.train_bias,
    )


def with_adapters(
    module: nn.Module, plan: FreezePlan, adapters: set[str], freeze
) -> FreezePlan:
    """The plan once adapters are in: the backbone's own weights all freeze.

    What trains: the adapter parameters the plan leaves trainable (adapters
    in frozen blocks stay frozen), and the biases (``train_bias``) and
    BatchNorm parameters (``train_bn``) it leaves trainable.
    """
    policy = options(freeze)
    names = {n for n, _ in module.named_parameters()}
    trainable = names - plan.frozen_params
    keep = trainable & adapters
    if policy.train_bias:
        keep |= {n for n in trainable if n.rsplit(".", 1)[-1] == "bias"}
    if policy.train_bn:
        keep |= trainable & _batchnorm_params(module)
    return FreezePlan(frozenset(names - keep), plan.eval_modules, plan.n_frozen_blocks)


def apply_freeze(module: nn.Module, plan: FreezePlan) -> None:
    """Set ``requires_grad`` on every parameter of ``module`` from ``plan``."""
    for name, p in module.named_parameters():
        p.requires_grad_(name not in plan.frozen_params)


def frozen_modules(module: nn.Module, plan: FreezePlan) -> list[nn.Module]:
    """The submodules of ``module`` that ``plan`` keeps in eval mode."""
    return [module.get_submodule(name) for name in plan.eval_modules]


def _resolve_depth(freeze, n_blocks: int, param: str) -> int:
    # A valid policy (is_policy): only an int's range needs the blocks.
    if freeze is None:
        return 0
    if isinstance(freeze, numbers.Integral):
        k = int(freeze)
        if not -n_blocks <= k <= n_blocks:
            raise ValueError(
                f"{param}={k} is out of range: the backbone has {n_blocks} blocks, "
                f"so use an int in [-{n_blocks}, {n_blocks}] (or 'all')."
            )
        return k if k >= 0 else n_blocks + k
    return math.floor(float(freeze) * n_blocks)


def _match_patterns(module: nn.Module, patterns, param: str) -> set[str]:
    names = [name for name, _ in module.named_parameters()]
    frozen: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            examples = ", ".join(names[:5])
            raise ValueError(
                f"{param} pattern {pattern!r} matches no backbone parameter; "
                f"parameter names look like: {examples}, ..."
            )
        frozen.update(matched)
    return frozen


def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _batchnorm_params(module: nn.Module) -> set[str]:
    return {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, m in module.named_modules()
        if _is_batchnorm(m)
        for p_name, _ in m.named_parameters(recurse=False)
    }


def _descendants(
    module: nn.Module, roots: list[str], train_bn: bool
) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for root in roots:
        for name, m in module.get_submodule(root).named_modules():
            full = ".".join(filter(None, (root, name)))
            if not (train_bn and _is_batchnorm(m)):
                out[full] = None
    return tuple(out)


def _eval_modules_for_params(
    module: nn.Module, frozen: set[str], train_bn: bool
) -> tuple[str, ...]:
    """Modules whose own parameters are all frozen (pattern-based policies)."""
    out = []
    for name, m in module.named_modules():
        own = [
            f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)
        ]
        if (
            own
            and all(p in frozen for p in own)
            and not (train_bn and _is_batchnorm(m))
        ):
            out.append(name)
    return tuple(out)
