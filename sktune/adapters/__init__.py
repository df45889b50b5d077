"""Adapters: a few trained parameters inside a frozen backbone, through PEFT.

``adapter="lora"`` (Hu et al. 2021) adds a trainable low-rank update
``B @ A`` beside each adapted layer; ``adapter="ia3"`` (Liu et al. 2022)
learns one scale per output (per input for feed-forward layers). With
either, all of the backbone's own weights stay frozen and only the adapters
and the head train. Hugging Face PEFT does the work
(``inject_adapter_in_model`` on the private training copy, so the pristine
weights are never touched); it is imported only when an adapter is asked
for.

``freeze`` and ``adapter`` compose: adapters go only into the parts of the
backbone that ``freeze`` leaves trainable, so ``freeze=k`` keeps the first
k blocks adapter-free and the frozen-prefix cache still serves them.
"""

from __future__ import annotations

from .._constraints import Constraint, NestedParams, is_int, is_real, one_of

__all__ = [
    "ADAPTER_ACCEPTED",
    "ADAPTER_KINDS",
    "Adapter",
    "as_adapter",
    "is_adapter",
]

ADAPTER_KINDS = ("lora", "ia3")
ADAPTER_ACCEPTED = (
    f"None, one of {list(ADAPTER_KINDS)} or an Adapter(kind, r=..., alpha=..., "
    "dropout=..., target=...)"
)


class Adapter(NestedParams):
    """A parameter-efficient adapter, usable as a nested hyperparameter.

    ``GridSearchCV(clf, {"adapter__r": [4, 8, 16]})`` tunes the rank of a
    ``FineTuneClassifier(..., adapter=Adapter("lora"))``.

    Parameters
    ----------
    kind : {"lora", "ia3"}, default="lora"
        LoRA: a trainable low-rank update beside each adapted layer. (IA)^3:
        a trainable scale per output (per input of feed-forward layers).
    r : int, default=8
        The rank of LoRA's update (ignored by (IA)^3).
    alpha : float, default=16
        LoRA's scale: the update is multiplied by ``alpha / r``.
    dropout : float, default=0.0
        Dropout on the input of LoRA's update.
    target : None or list of str, default=None
        The backbone modules to adapt: module names, name suffixes
        (``"query"`` matches every module whose name ends in ``.query``) or
        fnmatch patterns (``"blocks.*.attn.qkv"``). None: the family's
        default, the attention and feed-forward projections of a transformer,
        the linear and convolution layers of other networks (for LoRA the
        non-depthwise ones).

    Examples
    --------
    >>> from sktune import Adapter
    >>> Adapter("lora", r=4).get_params()
    {'alpha': 16, 'dropout': 0.0, 'kind': 'lora', 'r': 4, 'target': None}
    """

    _constraints = {
        "kind": Constraint(f"one of {list(ADAPTER_KINDS)}", one_of(*ADAPTER_KINDS)),
        "r": Constraint("a positive int", lambda v: is_int(v, 1)),
        "alpha": Constraint("a positive number", lambda v: is_real(v) and v > 0),
        "dropout": Constraint(
            "a number in [0, 1)", lambda v: is_real(v) and 0 <= v < 1
        ),
        "target": Constraint(
            "None or a list of module names or patterns",
            lambda v: (
                v is None
                or (
                    isinstance(v, (list, tuple))
                    and len(v) > 0
                    and all(isinstance(t, str) for t in v)
                )
            ),
        ),
    }

    def __init__(self, kind="lora", r=8, alpha=16, dropout=0.0, target=None):
        self.kind = kind
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target = target


def is_adapter(value) -> bool:
    """Whether ``value`` is an ``adapter`` parameter by its type."""
    if value is None or isinstance(value, Adapter):
        return True
    return isinstance(value, str) and value in ADAPTER_KINDS


def as_adapter(value) -> Adapter | None:
    """The :class:`Adapter` a valid ``adapter`` parameter stands for."""
    return Adapter(value) if isinstance(value, str) else value
