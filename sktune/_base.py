"""The behaviour FineTuneClassifier and FineTuneRegressor share.

The mixin sits in front of skorch's estimators in the MRO and overrides only
documented hooks (``initialize_module``, ``get_all_learnable_params``,
``get_iterator``, ``check_data``) plus the sklearn entry points that must see
the data before skorch initializes (``fit``/``partial_fit``: the head is sized
from ``y`` and the backbone's feature size is probed on ``X``).
"""

from __future__ import annotations

import copy
import numbers
import threading
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import clone
from skorch.dataset import unpack_data
from skorch.exceptions import NotInitializedError

from .backbones import training_copy
from .blocks import block_map, record_child_order
from .data import check_X
from .freeze import apply_freeze, plan_freeze
from .heads import build_head, pool_features
from .network import FineTuneNetwork

__all__ = ["FineTuneMixin"]

# The global torch/numpy RNGs are process-wide: seeded fits in two threads
# would draw from one stream. Seeded sections take this lock so each fit sees
# only its own seed (an RLock, so a fit inside a callback of a fit works).
_RNG_LOCK = threading.RLock()

# Parameters of our own that hold objects with nested parameters
# (``freeze__depth``), routed the sklearn way instead of skorch's.
_OWN_PARAMS = ("backbone", "freeze", "head")
_NO_REINIT_PREFIXES = ("iterator_train__", "iterator_valid__", "dataset__")


def _private(name: str) -> property:
    """Back a skorch attribute set in ``__init__`` with a private slot.

    skorch's ``__init__`` sets ``history_``, ``initialized_`` and
    ``virtual_params_``; scikit-learn requires ``__init__`` to set nothing but
    parameters. Storing them under ``_name`` keeps both happy, and raising
    AttributeError while unset keeps skorch's "first init" detection working.
    """
    key = "_" + name.rstrip("_")

    def fget(self):
        try:
            return self.__dict__[key]
        except KeyError:
            raise AttributeError(name) from None

    def fset(self, value):
        self.__dict__[key] = value

    return property(fget, fset)


def _seed_of(random_state, param: str = "random_state") -> int | None:
    if random_state is None:
        return None
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, numbers.Integral) and not isinstance(
        random_state, bool
    ):
        if random_state >= 0:
            return int(random_state)
    raise ValueError(
        f"{param}={random_state!r} is not valid; use None, a non-negative int or a "
        "numpy RandomState."
    )


class FineTuneMixin:
    """Shared implementation; see :class:`sktune.FineTuneClassifier`."""

    initialized_ = _private("initialized_")
    history_ = _private("history_")
    virtual_params_ = _private("virtual_params_")

    # -- parameters ---------------------------------------------------------

    def __setattr__(self, name, value):
        # skorch registers any nn.Module assigned outside ``initialize_*`` as a
        # component (and refuses it); a backbone is a parameter, not a component.
        if name in _OWN_PARAMS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _get_param_names(self):
        # skorch treats every attribute without a trailing underscore as a
        # parameter. Private state is not, and ``module`` is built internally.
        return [
            k
            for k in super()._get_param_names()
            if not k.startswith("_") and k != "module"
        ]

    def set_params(self, **params):
        nested: dict[str, dict] = {}
        for key in list(params):
            prefix, sep, sub = key.partition("__")
            if sep and prefix in _OWN_PARAMS:
                nested.setdefault(prefix, {})[sub] = params.pop(key)
        if (
            "callbacks" in params
            and not getattr(self, "initialized_", False)
            and not any(k.startswith("callbacks__") for k in params)
        ):
            # skorch builds the callbacks right away; like every other
            # parameter, they are validated when the net initializes.
            self.callbacks = params.pop("callbacks")
        for key in [k for k in params if k.startswith(_NO_REINIT_PREFIXES)]:
            # Read when the next iterator is built; skorch would look for a
            # component to re-initialize and fail on a fitted net.
            setattr(self, key, params.pop(key))
            self._params_to_validate.add(key)
        super().set_params(**params)
        for prefix, sub_params in nested.items():
            target = getattr(self, prefix)
            if not hasattr(target, "set_params"):
                raise ValueError(
                    f"Invalid parameter(s) {sorted(prefix + '__' + k for k in sub_params)}:"
                    f" {prefix}={target!r} has no nested parameters."
                )
            target.set_params(**sub_params)
        return self

    def __sklearn_clone__(self):
        # sklearn's clone deep-copies non-estimator parameters; the backbone is
        # read-only and shared instead (DESIGN.md, invariant 2).
        params = self.get_params(deep=False)
        new_params = {
            k: v if k == "backbone" else clone(v, safe=False) for k, v in params.items()
        }
        new = type(self)(**new_params)
        for attr in ("_metadata_request", "_sklearn_output_config"):
            if hasattr(self, attr):
                setattr(new, attr, copy.deepcopy(getattr(self, attr)))
        return new

    def __deepcopy__(self, memo):
        memo[id(self.backbone)] = self.backbone
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    # -- randomness ---------------------------------------------------------

    @contextmanager
    def _seeded(self, fresh: bool):
        """Seed torch and numpy from ``random_state`` for one fit call.

        A fresh fit starts the stream at ``random_state``; each later
        ``partial_fit`` (or warm-started fit) continues with the next seed of
        a ``SeedSequence``, so a sequence of calls is reproducible too. The
        global RNG states are restored afterwards.
        """
        seed = _seed_of(self.random_state)
        if seed is None:
            yield
            return
        calls = 0 if fresh else getattr(self, "_fit_calls", 0) + 1
        self._fit_calls = calls
        if calls:
            seed = int(np.random.SeedSequence([seed, calls]).generate_state(1)[0])
        cuda = torch.cuda.is_available() and "cuda" in str(self.device)
        devices = list(range(torch.cuda.device_count())) if cuda else []
        with _RNG_LOCK, torch.random.fork_rng(devices=devices):
            np_state = np.random.get_state()  # noqa: NPY002 (restored below)
            torch.manual_seed(seed)
            # skorch's ValidSplit and user callbacks draw from numpy's global RNG.
            np.random.seed(seed)  # noqa: NPY002
            try:
                yield
            finally:
                np.random.set_state(np_state)  # noqa: NPY002

    # -- fitting ------------------------------------------------------------

    def _prepare_fit(self, X, y, *, reset: bool, classes=None):
        """Validate and convert the training data; size the head on reset."""
        raise NotImplementedError

    def fit(self, X, y, **fit_params):
        """Fit the head (and the unfrozen backbone) on ``X, y``.

        Every fit starts from the pristine pretrained weights, unless
        ``warm_start=True`` and the estimator was fitted before.
        """
        warm = bool(self.warm_start) and getattr(self, "initialized_", False)
        with self._seeded(fresh=not warm):
            X, y = self._prepare_fit(X, y, reset=not warm)
            if not warm:
                self._example_X = X[:1]
                self.initialize()
            super().partial_fit(X, y, _routing_method="fit", **fit_params)
        return self

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs, initializing on the first call."""
        initialized = getattr(self, "initialized_", False)
        with self._seeded(fresh=not initialized):
            X, y = self._prepare_fit(X, y, reset=not initialized, classes=classes)
            if not initialized:
                self._example_X = X[:1]
                self.initialize()
            super().partial_fit(X, y, **fit_params)
        return self

    def check_data(self, X, y=None):
        # Data is validated in fit/partial_fit, before skorch sees it.
        pass

    def initialize_module(self):
        """Build the network: backbone copy, block map, freeze plan, fresh head."""
        example = getattr(self, "_example_X", None)
        if example is None:
            raise NotInitializedError(
                f"{type(self).__name__} sizes its head from the data; call fit or "
                "partial_fit instead of initialize."
            )
        backbone = training_copy(self.backbone)
        features, order = _probe(backbone, example)
        blocks = block_map(backbone, order)
        plan = plan_freeze(backbone, blocks, self.freeze)
        apply_freeze(backbone, plan)
        head = build_head(self.head, features.shape[1], self._n_head_outputs)
        self.module_ = FineTuneNetwork(backbone, head, plan)
        self.blocks_ = blocks
        self.n_blocks_ = len(blocks)
        return self

    def get_all_learnable_params(self):
        # Frozen parameters get no optimizer state (DESIGN.md, invariant 3).
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def get_iterator(self, dataset, training=False):
        # Unlike skorch, shuffle training batches unless told otherwise; an
        # inference loader draws its base seed from a private generator, so
        # predicting never advances the global torch RNG.
        if training:
            kwargs = {"shuffle": True, "batch_size": self.batch_size}
            kwargs.update(self.get_params_for("iterator_train"))
            iterator = self.iterator_train
        else:
            kwargs = {"generator": torch.Generator(), "batch_size": self.batch_size}
            kwargs.update(self.get_params_for("iterator_valid"))
            iterator = self.iterator_valid
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        return iterator(dataset, **kwargs)

    # -- prediction ---------------------------------------------------------

    def _check_predict_X(self, X):
        self.check_is_fitted()
        if isinstance(X, torch.utils.data.Dataset):
            # skorch's scoring callbacks predict on (validated) datasets.
            return X
        return check_X(self, X, reset=False)

    def evaluation_step(self, batch, training=False):
        # Pad a short inference batch to the full batch size, so every sample
        # runs through the same kernels: a prediction never depends on which
        # other samples share its batch (float32 GEMMs of different heights
        # round differently).
        Xi, yi = unpack_data(batch)
        size = self.get_params_for("iterator_valid").get("batch_size", self.batch_size)
        n = len(Xi) if isinstance(Xi, torch.Tensor) else None
        if training or n is None or size == -1 or n >= size:
            return super().evaluation_step(batch, training=training)
        padded = torch.cat([Xi, Xi[:1].expand(size - n, *Xi.shape[1:])])
        return super().evaluation_step((padded, yi), training=training)[:n]

    def _forward_numpy(self, X) -> np.ndarray:
        """Raw head outputs for validated ``X``, one row per sample."""
        return super().predict_proba(X)

    # -- introspection ------------------------------------------------------

    def describe(self) -> str:
        """Return a table of the backbone's blocks with frozen/trainable counts.

        Examples
        --------
        >>> print(clf.describe())  # doctest: +SKIP
        block  name      params  trainable  frozen  mode
        0      0            160          0     160  eval
        ...
        """
        self.check_is_fitted()
        net = self.module_
        named = dict(net.backbone.named_parameters())
        rows = [("block", "name", "params", "trainable", "frozen", "mode")]
        frozen_modules = set(net.plan.eval_modules)
        for i, block in enumerate(self.blocks_):
            params = [named[p] for p in block.params]
            n = sum(p.numel() for p in params)
            trainable = sum(p.numel() for p in params if p.requires_grad)
            mode = (
                "eval"
                if block.modules and set(block.modules) <= frozen_modules
                else "train"
            )
            rows.append(
                (
                    str(i),
                    block.name,
                    f"{n:,}",
                    f"{trainable:,}",
                    f"{n - trainable:,}",
                    mode,
                )
            )
        head_n = sum(p.numel() for p in net.head.parameters())
        rows.append(
            (
                "head",
                type(net.head).__name__,
                f"{head_n:,}",
                f"{head_n:,}",
                "0",
                "train",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(
                cell.ljust(w) if j < 2 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        )


def _probe(module: torch.nn.Module, example: np.ndarray):
    """Run one sample through ``module`` in eval mode.

    Returns the pooled features (their width sizes the head) and the order in
    which the top-level children ran (for the block map). Lazy modules are
    materialized here, before the optimizer sees their parameters.
    """
    device = next((p.device for p in module.parameters() if not _is_lazy(p)), "cpu")
    order, remove = record_child_order(module)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.as_tensor(example, device=device))
        features = pool_features(out)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(
            f"The backbone could not process an input of shape {tuple(example.shape)}"
            f" (one sample of X): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        remove()
        module.train(was_training)
    return features, order


def _is_lazy(param) -> bool:
    return isinstance(param, torch.nn.parameter.UninitializedParameter)
