"""The constructor parameters the estimators share, and their validation.

Each parameter's constraint is declared once (:data:`CONSTRAINTS`, in the
spirit of scikit-learn's ``_parameter_constraints``); what a valid value is
lives with its concept (``freeze.is_policy``, ``heads.is_head``, ...), and
the nested objects (``Freeze``, ``Adapter``, ``LRSchedule``) check their own
fields (:class:`sktune._constraints.NestedParams`).
:func:`validate_params` checks every one at the start of ``fit``, before
any work and whatever the input kind, and raises
:class:`InvalidParameterError` naming the parameter, the value and what is
accepted. Checks that need the backbone (a freeze depth against its number
of blocks) or the data (``group_by_length`` on images) follow when those are
known.
"""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np

from ._constraints import (
    BOOL,
    Constraint,
    InvalidParameterError,
    NestedParams,
    is_int,
    is_real,
    one_of,
)
from .adapters import ADAPTER_ACCEPTED, is_adapter
from .backbones import BACKBONE_ACCEPTED, is_backbone_source
from .cache.prefix import CACHE_DTYPE_ACCEPTED, is_cache_dtype
from .data.augment import (
    AUGMENT_ACCEPTED,
    AUGMENTED_KINDS,
    augment_hint,
    augment_name,
    is_augment,
)
from .data.images import IMAGE_SIZE_ACCEPTED, is_image_size
from .data.weights import CLASS_WEIGHT_ACCEPTED, is_class_weight
from .freeze import FREEZE_ACCEPTED, is_auto, is_policy
from .heads import HEAD_ACCEPTED, POOLINGS, head_hint, is_head
from .runtime import PRECISIONS
from .schedules import LR_SCHEDULE_ACCEPTED, is_lr_schedule

__all__ = [
    "CLASSIFIER_CONSTRAINTS",
    "CONSTRAINTS",
    "Constraint",
    "InvalidParameterError",
    "check_against_input",
    "validate_params",
]


_AUTO_BOOL = Constraint("'auto', True or False", one_of("auto", True, False))

#: The shared parameters' constraints (skorch's own are checked by skorch).
CONSTRAINTS: dict[str, Constraint] = {
    "backbone": Constraint(BACKBONE_ACCEPTED, is_backbone_source),
    "freeze": Constraint(FREEZE_ACCEPTED, is_policy),
    "head": Constraint(HEAD_ACCEPTED, is_head, head_hint),
    "random_state": Constraint(
        "None, a non-negative int or a numpy RandomState",
        lambda v: v is None or is_int(v, 0) or isinstance(v, np.random.RandomState),
    ),
    "pooling": Constraint(
        f"one of {list(POOLINGS)} or None (the backbone's own default)",
        lambda v: v is None or (isinstance(v, str) and v in POOLINGS),
    ),
    "max_length": Constraint(
        "None or a positive int", lambda v: v is None or is_int(v, 1)
    ),
    "group_by_length": BOOL,
    "image_size": Constraint(IMAGE_SIZE_ACCEPTED, is_image_size),
    "augment": Constraint(AUGMENT_ACCEPTED, is_augment, augment_hint),
    "cache": _AUTO_BOOL,
    "cache_size": Constraint(
        "a positive number of megabytes", lambda v: is_real(v) and v > 0
    ),
    "cache_dtype": Constraint(CACHE_DTYPE_ACCEPTED, is_cache_dtype),
    "channels_last": _AUTO_BOOL,
    "lr": Constraint("a non-negative number", lambda v: is_real(v) and v >= 0),
    "max_epochs": Constraint("a non-negative int", lambda v: is_int(v, 0)),
    "batch_size": Constraint(
        "a positive int, or -1 (the whole data set)",
        lambda v: is_int(v, 1) or (is_int(v, -1) and v == -1),
    ),
    "adapter": Constraint(ADAPTER_ACCEPTED, is_adapter),
    "backbone_lr": Constraint(
        "'auto' (a rate for the backbone's family) or a non-negative number",
        lambda v: (isinstance(v, str) and v == "auto") or (is_real(v) and v >= 0),
    ),
    "layer_decay": Constraint(
        "None or a number in (0, 1]", lambda v: v is None or (is_real(v) and 0 < v <= 1)
    ),
    "lr_schedule": Constraint(LR_SCHEDULE_ACCEPTED, is_lr_schedule),
    "n_restarts": Constraint("a positive int", lambda v: is_int(v, 1)),
    "precision": Constraint(
        f"one of {list(PRECISIONS)} (float32, bfloat16 or float16 autocast)",
        lambda v: isinstance(v, str) and v in PRECISIONS,
    ),
    "restart_epochs": Constraint("a positive int", lambda v: is_int(v, 1)),
}

#: The classifier's own parameters' constraints (with :data:`CONSTRAINTS`).
CLASSIFIER_CONSTRAINTS: dict[str, Constraint] = {
    "class_weight": Constraint(CLASS_WEIGHT_ACCEPTED, is_class_weight),
}

#: The parameters the network is built from (:func:`sktune._builder.build_network`).
NETWORK_PARAMS = (
    "freeze",
    "adapter",
    "head",
    "pooling",
    "image_size",
    "max_length",
    "channels_last",
    "cache",
    "cache_size",
    "cache_dtype",
)


def validate_params(estimator) -> None:
    """Check every parameter of ``estimator`` (at the start of ``fit``): the
    shared ones and its own (``estimator._constraints``).

    Raises
    ------
    InvalidParameterError
        For the first parameter with a value it does not accept.
    ImportError
        When ``group_by_length=True`` and transformers is not installed.
    """
    for name, constraint in estimator._constraints.items():
        constraint.check(name, getattr(estimator, name))
    for name in ("freeze", "adapter", "lr_schedule"):
        value = getattr(estimator, name)
        if isinstance(value, NestedParams):  # checks its own fields
            value.check(name)
    if estimator.n_restarts > 1 and estimator.restart_epochs > estimator.max_epochs:
        raise InvalidParameterError(
            f"restart_epochs={estimator.restart_epochs} is not valid; use at most "
            f"max_epochs={estimator.max_epochs} (each restart trains that many "
            "epochs before the best one continues)."
        )
    if estimator.n_restarts > 1 and is_auto(estimator.freeze):
        raise InvalidParameterError(
            f"n_restarts={estimator.n_restarts} is not valid with freeze='auto'; "
            "use n_restarts=1. Both choose on a validation split over the first "
            "epochs: the restarts would each need a depth search of their own "
            "(n_restarts times its cost), and the search needs the head of one "
            "run to carry from stage to stage."
        )
    if estimator.augment is not None and estimator.cache is True:
        raise InvalidParameterError(
            f"cache=True is not valid with {augment_name(estimator.augment)}: "
            "augmentation changes the input every epoch, so training cannot run "
            "on cached prefix outputs; use cache='auto' (predictions still use "
            "the cache) or cache=False."
        )
    _needs(
        isinstance(estimator.augment, str),
        "torchvision",
        f"augment={estimator.augment!r} is built on torchvision.transforms.v2",
        "vision",
    )
    _needs(
        estimator.group_by_length,
        "transformers",
        "group_by_length=True draws batches with transformers' LengthGroupedSampler",
        "text",
    )
    _needs(
        estimator.adapter is not None,
        "peft",
        f"adapter={estimator.adapter!r} is built on Hugging Face PEFT",
        "adapters",
    )


def _needs(wanted: bool, package: str, what: str, extra: str) -> None:
    if wanted and importlib.util.find_spec(package) is None:
        raise ImportError(f"{what}; install it with pip install 'sktune[{extra}]'.")


def check_against_input(estimator, kind: str, shape: tuple | None = None) -> None:
    """Check the parameters that depend on the input kind of ``fit``'s X
    (``shape``: one sample's, where known)."""
    if estimator.group_by_length and kind not in ("text", "pairs"):
        raise InvalidParameterError(
            "group_by_length=True groups texts by their length, but X holds "
            f"{kind} data; use group_by_length=False."
        )
    augment = estimator.augment
    if augment is not None and kind not in AUGMENTED_KINDS:
        raise InvalidParameterError(
            f"{augment_name(augment)} augments uint8 images (N x H x W x C), but X "
            f"holds {kind} data; use augment=None (float images are taken as "
            "preprocessed: augment them before fit, or pass uint8 images)."
        )
    channels = None if shape is None else (shape[-1] if len(shape) == 3 else 1)
    if (
        isinstance(augment, str)
        and augment == "strong"
        and channels not in (None, 1, 3)
    ):
        raise InvalidParameterError(
            f"augment='strong' applies TrivialAugmentWide, which takes 1- or "
            f"3-channel images, but X holds {channels}-channel images; use "
            "augment='light' or a callable of your own."
        )


def param_defaults(cls) -> dict:
    """Each constructor parameter's default, skorch's and the estimator's own."""
    from skorch import NeuralNet

    return {
        name: p.default
        for klass in reversed(cls.__mro__)
        if isinstance(klass, type) and issubclass(klass, NeuralNet)
        for name, p in inspect.signature(klass.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def is_default(value, default) -> bool:
    """Whether a parameter holds its default (repr and configs leave it out)."""
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # arrays and the like: not the default
        return False


def estimator_repr(estimator) -> str:
    """scikit-learn's style of repr (the parameters set away from their
    defaults) rather than skorch's (the module, None until fit); a module
    backbone shows as its class, not its whole printout."""
    import torch

    defaults = param_defaults(type(estimator))
    shown = []
    for name, value in sorted(estimator.get_params(deep=False).items()):
        if name in defaults and is_default(value, defaults[name]):
            continue
        text = (
            f"{type(value).__name__}(...)"
            if isinstance(value, torch.nn.Module)
            else getattr(value, "__name__", None) or repr(value)
        )
        shown.append(f"{name}={text}")
    return f"{type(estimator).__name__}({', '.join(shown)})"


def pop_nested(params: dict, owners) -> dict[str, dict]:
    """Take ``owner__name`` keys of ``owners`` out of ``params``, by owner."""
    nested: dict[str, dict] = {}
    for key in list(params):
        prefix, sep, sub = key.partition("__")
        if sep and prefix in owners:
            nested.setdefault(prefix, {})[sub] = params.pop(key)
    return nested


def set_nested(estimator, nested: dict[str, dict]) -> None:
    """Set nested parameters (:func:`pop_nested`) on their owners."""
    for prefix, sub_params in nested.items():
        target = getattr(estimator, prefix)
        if not hasattr(target, "set_params"):
            raise ValueError(
                f"Invalid parameter(s) {sorted(prefix + '__' + k for k in sub_params)}:"
                f" {prefix}={target!r} has no nested parameters."
            )
        target.set_params(**sub_params)
