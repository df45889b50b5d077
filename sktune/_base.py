"""FineTuneMixin: the scikit-learn and skorch protocol of both estimators.

The mixin sits in front of skorch's ``NeuralNetClassifier`` /
``NeuralNetRegressor`` in the MRO. It holds the protocol and delegates the
rest: parameters and their validation (:mod:`sktune._params`), seeds
(:mod:`sktune._random`), the network (:mod:`sktune._builder`), the
frozen-prefix cache (:class:`sktune.cache.PrefixCache`), input checks
(:mod:`sktune.data`).

skorch hooks overridden, each for one reason:

- ``initialize_module``: the network comes from the builder;
- ``get_all_learnable_params``: frozen parameters get no optimizer state;
- ``get_dataset`` / ``get_iterator``: texts and cached rows bring their
  own batching; training batches are shuffled by default, or grouped by
  length; inference never advances the global RNG;
- ``check_data``: data is validated before skorch sees it;
- ``on_epoch_begin``: each epoch reseeds from ``(seed, epoch)``;
- ``train_step_single``: stop before a non-finite step is applied;
- ``evaluation_step``: predictions do not depend on batch composition;
- ``save_params``: files are written atomically;
- ``set_params``, ``_get_param_names``, ``__setattr__``: the backbone and
  nested objects are parameters, not components;
- ``fit``, ``partial_fit``, ``predict_proba``: the data is checked, the
  targets encoded and the network sized before skorch's loop runs.
"""

from __future__ import annotations

import copy
import numbers
import os
import threading
import warnings
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from skorch.dataset import Dataset as SkorchDataset
from skorch.dataset import unpack_data
from skorch.exceptions import NotInitializedError
from skorch.utils import TeeGenerator, to_device
from torch.utils.data import Dataset, Subset

from ._builder import build_network
from ._modules import eval_mode
from ._params import check_against_input, is_default, param_defaults, validate_params
from ._random import epoch_seed, fit_seeds, seeded
from ._restarts import fit_restarts
from .adapters.inject import adapter_params, merge
from .backbones import as_backbone
from .blocks import describe_blocks
from .cache import WholeSplit
from .cluster import reference
from .data.inputs import check_fit_data, check_predict_data
from .data.text import TextCollator, TextDataset, is_texts, mean_tokens, token_lengths
from .diagnostics import constant_loss, learning_report, stage_losses
from .families import family_of
from .freeze import apply_freeze, options
from .progress import EpochTable, FitProgress, bar, shows_bar
from .runtime import compute_dtype, grad_scaler, resolve_device
from .schedules import (
    WarmupDecay,
    auto_backbone_lr,
    block_rates,
    check_schedule,
    format_rates,
    frozen_at,
    param_groups,
    phases,
    rates_in_effect,
)

__all__ = ["FineTuneMixin"]

# Parameters of our own that hold objects with nested parameters
# (``freeze__depth``), routed the sklearn way instead of skorch's.
_OWN_PARAMS = ("backbone", "freeze", "adapter", "head", "lr_schedule")
# Parameters clones share instead of copying: the read-only backbone, an
# Accelerate accelerator (one per process).
_SHARED_PARAMS = ("backbone", "accelerator")
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


class FineTuneMixin:
    """Shared implementation; see :class:`sktune.FineTuneClassifier`."""

    initialized_ = _private("initialized_")
    history_ = _private("history_")
    virtual_params_ = _private("virtual_params_")

    def __init__(
        self,
        backbone,
        *,
        freeze=None,
        adapter=None,
        head="linear",
        random_state=None,
        pooling=None,
        max_length=None,
        group_by_length=False,
        image_size=None,
        cache="auto",
        cache_size=1024,
        cache_dtype=None,
        channels_last="auto",
        precision="32",
        criterion,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        backbone_lr="auto",
        layer_decay=None,
        lr_schedule=None,
        max_epochs=10,
        n_restarts=1,
        restart_epochs=1,
        batch_size=32,
        train_split=None,
        verbose=1,
        **kwargs,
    ):
        self.backbone = backbone
        self.freeze = freeze
        self.adapter = adapter
        self.head = head
        self.random_state = random_state
        self.pooling = pooling
        self.max_length = max_length
        self.group_by_length = group_by_length
        self.image_size = image_size
        self.cache = cache
        self.cache_size = cache_size
        self.cache_dtype = cache_dtype
        self.channels_last = channels_last
        self.precision = precision
        self.backbone_lr = backbone_lr
        self.layer_decay = layer_decay
        self.lr_schedule = lr_schedule
        self.n_restarts = n_restarts
        self.restart_epochs = restart_epochs
        super().__init__(
            None,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            verbose=verbose,
            **kwargs,
        )

    # -- parameters ---------------------------------------------------------

    def __repr__(self) -> str:
        # scikit-learn's style (the parameters set away from their defaults)
        # rather than skorch's (the module, which is None until fit); a
        # module backbone shows as its class, not its whole printout.
        defaults = param_defaults(type(self))
        shown = []
        for name, value in sorted(self.get_params(deep=False).items()):
            if name in defaults and is_default(value, defaults[name]):
                continue
            text = (
                f"{type(value).__name__}(...)"
                if isinstance(value, torch.nn.Module)
                else getattr(value, "__name__", None) or repr(value)
            )
            shown.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(shown)})"

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
        """Set parameters, nested ones (``freeze__depth``) included."""
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
        if "verbose" in params:  # before the messages it governs
            self.verbose = params.pop("verbose")
        with self._skorch_messages():
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
            k: v if k in _SHARED_PARAMS else clone(v, safe=False)
            for k, v in params.items()
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
        new.__setstate__(copy.deepcopy(super().__getstate__(), memo))
        return new

    def __getstate__(self):
        state = super().__getstate__()
        # Inside sktune.share_backbones(), a module backbone travels by
        # reference (see sktune.cluster).
        shared = reference(state.get("backbone"))
        if shared is not None:
            state["backbone"] = shared
        return state

    # -- fitting ------------------------------------------------------------

    def _encode_targets(self, y, *, reset: bool, classes=None):
        """Convert checked targets for the loss; size the head on reset."""
        raise NotImplementedError

    def fit(self, X, y, **fit_params):
        """Fit the head (and the unfrozen backbone) on ``X, y``.

        Every fit starts from the pristine pretrained weights, unless
        ``warm_start=True`` and the estimator was fitted before.

        Parameters
        ----------
        X : array-like, DataFrame, tensor, list of str or mapping
            Numeric arrays, images (float ``N x C x H x W``, taken as
            normalized, or uint8 ``N x H x W x C`` with any number of
            channels; other integer images, uint16 say, are refused), texts
            or text pairs (Hugging Face backbones; empty texts are texts), or
            a mapping of tokenized inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Class labels, or regression targets.
        **fit_params
            Passed on to skorch (and on to the train split).

        Returns
        -------
        self
        """
        warm = bool(self.warm_start) and getattr(self, "initialized_", False)
        return self._fit(X, y, reset=not warm, _routing_method="fit", **fit_params)

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs, initializing on the first call.

        Parameters
        ----------
        X, y
            As in :meth:`fit`.
        classes : array-like, optional
            All class labels, for a first call on data that lacks some.
        **fit_params
            Passed on to skorch.

        Returns
        -------
        self
        """
        reset = not getattr(self, "initialized_", False)
        return self._fit(X, y, reset=reset, classes=classes, **fit_params)

    @contextmanager
    def _on_device(self):
        """Inside, ``device`` is the resolved device (``"auto"``: CUDA if any).

        skorch moves modules and batches to ``self.device`` in several
        places; "auto" is resolved for the length of a call and given back.
        """
        if self.__dict__.get("device") != "auto":
            yield
            return
        self.__dict__["device"] = resolve_device("auto")
        try:
            yield
        finally:
            self.__dict__["device"] = "auto"

    def initialize(self):
        """Initialize skorch's components, the network from the fitted input."""
        with self._on_device(), self._skorch_messages():
            return super().initialize()

    @contextmanager
    def _skorch_messages(self):
        """skorch's own messages ("Re-initializing module.") from verbose=2 on.

        At ``verbose=1`` a fit shows progress bars only; restarts and
        ``set_params`` on a fitted estimator re-initialize without a word.
        """
        verbose = self.__dict__.get("verbose", 0)
        if not isinstance(verbose, numbers.Integral) or verbose >= 2:
            yield  # (a verbose that is no int fails validation in fit)
            return
        self.__dict__["verbose"] = 0
        try:
            yield
        finally:
            self.__dict__["verbose"] = verbose

    def initialize_optimizer(self, *args, **kwargs):
        super().initialize_optimizer(*args, **kwargs)
        self._scaler = grad_scaler(self.precision, self.device)
        return self

    def __setstate__(self, state):
        # skorch maps the pickled tensors to the pickled device; "auto" is
        # this machine's device (a model fitted on a GPU loads on a CPU).
        auto = state.get("device") == "auto"
        if auto:
            state = {**state, "device": resolve_device("auto")}
        super().__setstate__(state)
        if auto:
            self.__dict__["device_"] = self.__dict__["device"]
            self.__dict__["device"] = "auto"

    def _fit(self, X, y, *, reset: bool, classes=None, **fit_params):
        with self._on_device():
            return self._fit_on_device(X, y, reset=reset, classes=classes, **fit_params)

    @contextmanager
    def _unchanged_on_error(self):
        """A fit that fails before training leaves the estimator as it was.

        The checks and the network build set fitted attributes (``input_spec_``,
        ``classes_``, ``n_features_in_``, ``module_``) one by one; bad input
        found halfway must not leave a fitted estimator predicting with a
        mix of the old network and the new input's spec.
        """
        state = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state)
            raise

    def _fit_on_device(self, X, y, *, reset: bool, classes=None, **fit_params):
        validate_params(self)
        seeds = fit_seeds(self.random_state, self.n_restarts if reset else 1)
        cuda = torch.cuda.is_available() and "cuda" in str(self.device)
        with seeded(seeds[0].init, cuda=cuda):
            with self._unchanged_on_error():
                X, y, fitted = check_fit_data(
                    self, X, y, reset=reset, regression=self._regression
                )
                check_against_input(self, fitted.kind)
                y = self._encode_targets(y, reset=reset, classes=classes)
                if reset:
                    self.input_spec_ = fitted
                    self._seeds = seeds[0]
                    self.initialize()
                    self._check_schedule()
                elif len(self.history_) == 0:
                    self._seeds = seeds[0]
            if len(seeds) == 1:
                first_epoch = len(self.history_) + 1
                super().partial_fit(X, y, **fit_params)
                self._warn_if_learned_nothing(y, first_epoch)
                return self
        fit_restarts(
            self,
            X,
            y,
            seeds,
            lambda X_, y_, epochs: super(FineTuneMixin, self).partial_fit(
                X_, y_, epochs=epochs, **fit_params
            ),
            lambda X_, y_, epochs: self._resume(X_, y_, epochs, **fit_params),
            cuda,
        )
        self._warn_if_learned_nothing(y, 1)
        return self

    def _warn_if_learned_nothing(self, y, first_epoch: int) -> None:
        """One ``ConvergenceWarning`` when the fit ended no better than a
        constant prediction (see :mod:`sktune.diagnostics`)."""
        stages = stage_losses(self.history_, first_epoch)
        if not stages or y is None:
            return
        try:
            baseline = constant_loss(
                lambda y_pred, y_true: self.get_loss(y_pred, y_true, training=False),
                y,
                regression=self._regression,
                n_outputs=self._n_head_outputs,
                device=self.device,
            )
        except (RuntimeError, ValueError, TypeError):
            return  # a criterion that takes no constant prediction: no check
        rates = self._rates()
        backbone = self._network.backbone
        message = learning_report(
            stages,
            baseline,
            name=type(self).__name__,
            what="the mean target" if self._regression else "the class prior",
            rates=format_rates(rates),
            lr=float(self.get_params_for("optimizer").get("lr", self.lr)),
            backbone_lr=None if rates["top"] is None else rates["top"][1],
            family_lr=(
                None
                if self.adapted_modules_
                else family_of(backbone).backbone_lr(backbone)
            ),
        )
        if message is not None:
            # The user's fit / partial_fit call, four frames up.
            warnings.warn(message, ConvergenceWarning, stacklevel=5)

    def _resume(self, X, y, epochs: int, **fit_params):
        """More epochs of the current training session (no new train begin)."""
        try:
            self.fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt:
            pass
        self.notify("on_train_end", X=X, y=y)

    def _check_schedule(self) -> None:
        policy = options(self.freeze)
        if policy.schedules():
            check_schedule(
                n_blocks=self.n_blocks_,
                depth=self._depth,
                probe_epochs=policy.probe_epochs,
                unfreeze_every=policy.unfreeze_every,
                max_epochs=self.max_epochs,
            )

    def _frozen_at(self, epoch: int) -> int:
        """Blocks frozen in ``epoch`` (the policy's own depth without a schedule)."""
        policy = options(self.freeze)
        if not policy.schedules():
            return self._depth
        return frozen_at(
            epoch,
            n_blocks=self.n_blocks_,
            depth=self._depth,
            probe_epochs=policy.probe_epochs,
            unfreeze_every=policy.unfreeze_every,
        )

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop, run stage by stage of the freeze schedule.

        ``X`` is the validated input; each stage (a run of epochs with the
        same frozen blocks) trains on its own data: the cached outputs of its
        frozen prefix where that is exact, else the input. Stages share one
        train/validation split.
        """
        epochs = self.max_epochs if epochs is None else epochs
        self.__dict__["_epochs_planned"] = epochs
        runs = phases(len(self.history_) + 1, epochs, self._frozen_at)
        self.__dict__["_split_indices"] = {} if len(runs) > 1 else None
        try:
            for n_epochs, n_frozen in runs:
                self._use_stage(n_frozen)
                data = self._data(X, y, training=True)
                super().fit_loop(data, y, epochs=n_epochs, **fit_params)
        finally:
            self.__dict__.pop("_split_indices", None)
        return self

    def _use_stage(self, n_frozen: int) -> None:
        """Train with ``n_frozen`` blocks frozen, on that stage's cache."""
        stage = self._stages[n_frozen]
        apply_freeze(self._network.backbone, stage.plan)
        self._network.set_stage(stage.plan, stage.prefix_cache.split)
        self.prefix_cache_ = stage.prefix_cache

    def get_split_datasets(self, X, y=None, **fit_params):
        # Stages of a freeze schedule train on different data (cached at
        # another cut) but must share one split: the first stage's indices
        # are kept for the rest.
        fixed = self.__dict__.get("_split_indices")
        if fixed and "indices" in fixed:
            dataset = self.get_dataset(X, y)
            train, valid = fixed["indices"]
            return Subset(dataset, train), (
                None if valid is None else Subset(dataset, valid)
            )
        train, valid = super().get_split_datasets(X, y, **fit_params)
        if fixed is not None and isinstance(train, Subset):
            fixed["indices"] = (
                train.indices,
                valid.indices if isinstance(valid, Subset) else None,
            )
        return train, valid

    def initialize_module(self):
        """Build the network for the fitted input (see :mod:`sktune._builder`)."""
        fitted = getattr(self, "input_spec_", None)
        if fitted is None:
            raise NotInitializedError(
                f"{type(self).__name__} sizes its head from the data; call fit or "
                "partial_fit instead of initialize."
            )
        built = build_network(
            as_backbone(self.backbone),
            fitted,
            n_outputs=self._n_head_outputs,
            freeze=self.freeze,
            adapter=self.adapter,
            head=self.head,
            pooling=self.pooling,
            image_size=self.image_size,
            max_length=self.max_length,
            channels_last=self.channels_last,
            cache=self.cache,
            cache_size=self.cache_size,
            cache_dtype=self.cache_dtype,
            device=self._compute_device,
            precision=compute_dtype(self.precision),
        )
        self.module_ = built.network
        self.device_ = self._compute_device
        self.blocks_ = built.blocks
        self.n_blocks_ = len(built.blocks)
        self.tokenizer_ = built.tokenizer
        self.adapted_modules_ = built.adapted
        self._stages = built.stages
        self._depth = built.depth
        self.prefix_cache_ = built.stages[built.depth].prefix_cache
        final = built.stages[built.depth].plan
        self._trainable = {
            f"backbone.{n}"
            for n, _ in built.network.backbone.named_parameters()
            if n not in final.frozen_params
        } | {f"head.{n}" for n, _ in built.network.head.named_parameters()}
        self._collator = (
            TextCollator(built.tokenizer, built.max_length)
            if built.tokenizer is not None
            else None
        )
        return self

    @property
    def _compute_device(self):
        """Where the network is planned and trains (``device``, resolved)."""
        return self.device

    @property
    def _network(self):
        """The FineTuneNetwork (``module_``, unwrapped where a wrapper holds it)."""
        return self.module_

    @property
    def cache_info_(self) -> dict:
        """Whether the last fit used the frozen-prefix cache, why not, and counts."""
        return self.prefix_cache_.info

    def _cache_reason(self, X, *, training: bool) -> str | None:
        """Why ``X`` would not run on cached prefix outputs (None: it would)."""
        cache = self.prefix_cache_
        iterator = "iterator_train" if training else "iterator_valid"
        custom = not (
            self.dataset is SkorchDataset
            and "collate_fn" not in self.get_params_for(iterator)
        )
        ragged = cache.split is not None and cache.split.ragged
        return cache.why_not(
            _len(X),
            custom_data=custom,
            tokens_per_sample=_mean_tokens(X, self._collator) if ragged else None,
        )

    def _data(self, X, y, *, training: bool):
        """What skorch loops over: cached rows, texts, or ``X`` itself."""
        cache = self.prefix_cache_
        reason = self._cache_reason(X, training=training)
        if training:
            use = cache.start_fit(reason, print if self.verbose >= 2 else None)
            if len(self.history_) == 0 and (
                self.verbose >= 2 or shows_bar(self.verbose)
            ):
                print(self._summary(), flush=True)
        else:
            use = reason is None
        texts = is_texts(X)
        if use:
            rows = cache.outputs(X, self._prefix_batches, progress=self._prefix_bar)
            lengths = TextDataset(X, None, self._collator).lengths if texts else None
            return cache.dataset(rows, y, lengths)
        if texts:
            return TextDataset(X, y, self._collator)
        return X

    def _prefix_bar(self, batches):
        return bar(
            self.verbose, batches, desc="frozen prefix, once", unit="batch", delay=1
        )

    def _summary(self) -> str:
        """One screen on what this fit trains, on which device, how fast."""
        net = self._network
        total = sum(p.numel() for p in net.parameters())
        trainable = sum(
            p.numel() for n, p in net.named_parameters() if n in self._trainable
        )
        frozen = self._frozen_at(1)
        schedule = f", then {self._depth} (schedule)" if frozen != self._depth else ""
        cache = self.prefix_cache_.info
        if cache.get("enabled"):
            cached = "on: the frozen prefix runs once per sample"
        else:
            cached = f"off ({cache.get('reason')})"
        backbone = self.backbone
        source = backbone if isinstance(backbone, str) else type(backbone).__name__
        return "\n".join(
            [
                f"{type(self).__name__} on {source}",
                f"  blocks: {self.n_blocks_}, frozen {frozen}{schedule}"
                + (
                    f"; adapters in {len(self.adapted_modules_)} modules"
                    if self.adapted_modules_
                    else ""
                ),
                f"  parameters: {total:,}, trainable {trainable:,} "
                f"({100 * trainable / max(total, 1):.1f}%)",
                f"  learning rates: {format_rates(self._rates())}",
                f"  cache: {cached}",
                f"  device: {self.device}, precision {self.precision}",
            ]
        )

    def _prefix_batches(self, X):
        """(prefix outputs, inputs) per inference batch of ``X``."""
        return self._run_batches(X, self._network.prefix)

    def _run_batches(self, X, fn):
        """``fn`` over the inference batches of ``X``: (outputs, inputs) each.

        In eval mode and without gradients; tensor batches are padded to the
        batch size (see :meth:`evaluation_step`).
        """
        # Every sample, in every process: the cache must hold all rows (an
        # accelerator would shard a prepared loader).
        with eval_mode(self._network):
            for batch in self._loader(self.get_dataset(X), training=False):
                xb = to_device(unpack_data(batch)[0], self._compute_device)
                with torch.no_grad():
                    if isinstance(xb, Mapping):
                        out = fn(**xb)
                    else:
                        out = fn(self._pad(xb))[: len(xb)]
                yield out, xb

    def check_data(self, X, y=None):
        # Data is validated in fit/partial_fit, before skorch sees it.
        pass

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        epoch = len(self.history_)
        seed = getattr(self, "_seeds", None)
        if seed is not None and seed.data is not None:
            torch.manual_seed(epoch_seed(seed.data, epoch))
        self.history_.record("frozen_blocks", self._frozen_at(epoch))

    def get_all_learnable_params(self):
        # Frozen parameters get no optimizer state (DESIGN.md, invariant 3);
        # those a freeze schedule unfreezes later are in from the start.
        for name, param in super().get_all_learnable_params():
            if name in self._trainable:
                yield name, param

    def get_params_for_optimizer(self, prefix, named_parameters):
        """skorch's, with the head at ``lr`` and the backbone's blocks at theirs.

        The block nearest the head trains at ``backbone_lr``, each block
        below at ``layer_decay`` times the one above; parameters matching
        ``optimizer__param_groups`` patterns keep the options given there.
        """
        if prefix != "optimizer":
            return super().get_params_for_optimizer(prefix, named_parameters)
        kwargs = self.get_params_for(prefix)
        patterns = kwargs.pop("param_groups", [])
        kwargs.setdefault("lr", self.lr)
        backbone_lr = self._resolve_backbone_lr(kwargs["lr"])
        self.backbone_lr_ = backbone_lr
        groups = param_groups(
            named_parameters,
            {p: i for i, block in enumerate(self.blocks_) for p in block.params},
            block_rates(self.n_blocks_, backbone_lr, self.layer_decay),
            backbone_lr,
            patterns,
            lr=kwargs["lr"],
        )
        return (groups,), kwargs

    def _resolve_backbone_lr(self, lr) -> float:
        """The rate of the block nearest the head (see ``backbone_lr``)."""
        if self.backbone_lr != "auto":
            return float(self.backbone_lr)
        if self.adapted_modules_:
            return float(lr)  # adapters are fresh parameters, like the head
        backbone = self._network.backbone
        return auto_backbone_lr(lr, family_of(backbone).backbone_lr(backbone))

    def _rates(self) -> dict:
        """The rates the optimizer applies (:func:`~sktune.schedules.rates_in_effect`)."""
        net = self._network
        return rates_in_effect(
            self.optimizer_,
            net.named_parameters(),
            {p: i for i, block in enumerate(self.blocks_) for p in block.params},
            adapter_params(net.backbone) if self.adapted_modules_ else (),
        )

    @property
    def _default_callbacks(self):
        # skorch's, the epoch table from verbose=2 on, a progress bar before
        # it and, with a schedule, the schedule before both.
        callbacks = [
            (name, EpochTable() if name == "print_log" else cb)
            for name, cb in super()._default_callbacks
        ]
        at = next(
            (i for i, (name, _) in enumerate(callbacks) if name == "print_log"),
            len(callbacks),
        )
        callbacks.insert(at, ("progress", FitProgress()))
        if self.lr_schedule is not None:
            callbacks.insert(at, ("warmup_decay", WarmupDecay()))
        return callbacks

    def get_dataset(self, X, y=None):
        if isinstance(X, Dataset):
            return X
        if is_texts(X) and self._collator is not None:
            return TextDataset(X, y, self._collator)
        return super().get_dataset(X, y)

    def get_iterator(self, dataset, training=False):
        return self._with_bar(self._loader(dataset, training=training))

    def _with_bar(self, loader):
        """A long prediction shows a bar (after a second, where watched)."""
        if self.__dict__.get("_predicting"):
            return bar(self.verbose, loader, desc="predict", unit="batch", delay=1)
        return loader

    def _loader(self, dataset, *, training: bool):
        """The DataLoader of ``dataset``.

        Unlike skorch, training batches are shuffled unless told otherwise;
        an inference loader draws its base seed from a private generator, so
        predicting never advances the global torch RNG. Texts and cached rows
        bring their own collate function.
        """
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
        if training and self.group_by_length and kwargs.get("shuffle", False):
            if "sampler" not in kwargs and "batch_sampler" not in kwargs:
                del kwargs["shuffle"]
                kwargs["sampler"] = self._length_sampler(dataset, kwargs["batch_size"])
        base = dataset
        while isinstance(base, Subset):
            base = base.dataset
        collate = getattr(base, "collate_fn", None)
        if collate is None and isinstance(base, TextDataset):
            collate = self._collator
        if collate is not None:
            kwargs.setdefault("collate_fn", collate)
        return iterator(dataset, **kwargs)

    def _length_sampler(self, dataset, batch_size):
        """Shuffled, then sorted by length within mega-batches of up to 50
        batches (transformers' ``LengthGroupedSampler``): a batch pads to
        texts of about its own length."""
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = token_lengths(dataset)
        if lengths is None:
            raise ValueError(
                "group_by_length=True groups the samples passed to fit by their "
                f"token counts, but the training data set ({type(dataset).__name__}) "
                "is not the fit data or a subset of it: use a train_split that "
                "returns subsets (like skorch's ValidSplit), or group_by_length=False."
            )
        return LengthGroupedSampler(batch_size, lengths=lengths)

    def train_step_single(self, batch, **fit_params):
        # skorch's, with the loss scaled for float16 and a divergence guard.
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        scaler = getattr(self, "_scaler", None)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer_)  # callbacks see true gradients
        self._check_finite(loss.detach(), scaled=scaler is not None)
        return {"loss": loss, "y_pred": y_pred}

    def _check_finite(self, loss, *, scaled: bool) -> None:
        """Raise before the optimizer applies a non-finite step.

        The weights stay those of the last finite step, and the estimator
        usable. With float16 gradient scaling, an overflowing gradient is
        the scaler's business (it skips the step and lowers the scale); only
        the loss is checked.
        """
        grads = (
            []
            if scaled
            else [
                # The optimizer's own parameter list: walking the whole
                # module's parameters every batch cost 17% of a cached probe.
                p.grad
                for group in self.optimizer_.param_groups
                for p in group["params"]
                if p.grad is not None
            ]
        )
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else 0.0
        if torch.isfinite(loss + grad_norm):  # one check (one sync), usually
            return
        what = (
            f"loss is {loss.item()}"
            if not torch.isfinite(loss)
            else "gradient is not finite"
        )
        raise FloatingPointError(
            f"Training diverged at epoch {len(self.history_)}, batch "
            f"{len(self.history_[-1]['batches'])}: the {what}. The estimator keeps "
            f"the weights of the last finite step; try a lower learning rate than "
            f"lr={self.lr}."
        )

    def train_step(self, batch, **fit_params):
        scaler = getattr(self, "_scaler", None)
        if scaler is None:
            return super().train_step(batch, **fit_params)
        # GradScaler steps the optimizer itself (no closure).
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        scaler.step(self.optimizer_)
        scaler.update()
        return step

    def save_params(
        self,
        f_params=None,
        f_optimizer=None,
        f_criterion=None,
        f_history=None,
        use_safetensors=False,
        **kwargs,
    ):
        """skorch's ``save_params``, writing each file atomically.

        Each file is written next to its target under a temporary name and
        moved into place only when complete, so an interrupted save never
        leaves a half-written file where a good one was.
        """
        files = dict(
            kwargs,
            f_params=f_params,
            f_optimizer=f_optimizer,
            f_criterion=f_criterion,
            f_history=f_history,
        )
        staged = {}
        for key, target in files.items():
            if isinstance(target, (str, os.PathLike)):
                staged[key] = (
                    target,
                    f"{os.fspath(target)}.{os.getpid()}.{threading.get_ident()}.tmp",
                )
                files[key] = staged[key][1]
        try:
            super().save_params(use_safetensors=use_safetensors, **files)
            for target, tmp in staged.values():
                os.replace(tmp, target)
        finally:
            for _, tmp in staged.values():
                if os.path.exists(tmp):
                    os.remove(tmp)

    # -- prediction ---------------------------------------------------------

    def _check_predict_X(self, X):
        self.check_is_fitted()
        if isinstance(X, Dataset):
            # skorch's scoring callbacks predict on (validated) datasets.
            return X
        return check_predict_data(self, X, self.input_spec_.kind)

    def evaluation_step(self, batch, training=False):
        # Pad a short inference batch to the full batch size, so every sample
        # runs through the same kernels: a prediction never depends on which
        # other samples share its batch (float32 GEMMs of different heights
        # round differently).
        Xi, yi = unpack_data(batch)
        if training:
            return super().evaluation_step(batch, training=training)
        padded = self._pad(Xi)
        if padded is Xi:
            return super().evaluation_step(batch, training=training)
        return super().evaluation_step((padded, yi), training=training)[: _len(Xi)]

    def _forward_numpy(self, X) -> np.ndarray:
        """Raw head outputs for validated ``X``, one row per sample."""
        with self._on_device():
            data = X if isinstance(X, Dataset) else self._data(X, None, training=False)
            self.__dict__["_predicting"] = True
            try:
                return super().predict_proba(data)
            finally:
                self.__dict__.pop("_predicting", None)

    def embed(self, X) -> np.ndarray:
        """The pooled backbone features of ``X``: what the head sees.

        Useful to inspect the representation or to fit another model on it.
        With ``freeze="all"`` they come from the frozen-prefix cache.

        Parameters
        ----------
        X : array-like, list of str or mapping
            Samples to embed, of the input kind fit saw.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        X = self._check_predict_X(X)
        cache = self.prefix_cache_
        with self._on_device():
            if (
                isinstance(cache.split, WholeSplit)
                and self._cache_reason(X, training=False) is None
            ):
                rows = cache.outputs(X, self._prefix_batches)
                return rows.to(cache.row_dtype).float().numpy()
            batches = self._run_batches(X, self._network.features)
            return torch.cat([out.cpu().float() for out, _ in batches]).numpy()

    def _pad(self, xb):
        """Pad a short batch to the inference batch size (see evaluation_step).

        Tensor batches and batches of cached rows held in one tensor are
        padded; others (tokenized text, whose width varies anyway) are
        returned as they are.
        """
        size = self.get_params_for("iterator_valid").get("batch_size", self.batch_size)
        if isinstance(xb, Mapping) and isinstance(xb.get("cached"), torch.Tensor):
            padded = self._pad(xb["cached"])
            return xb if padded is xb["cached"] else {**xb, "cached": padded}
        if not isinstance(xb, torch.Tensor) or size == -1 or len(xb) >= size:
            return xb
        return torch.cat([xb, xb[:1].expand(size - len(xb), *xb.shape[1:])])

    # -- the trained part ------------------------------------------------------

    def merge_adapters(self):
        """Merge the adapters into the backbone's weights, for faster inference.

        Predictions stay the same (to rounding); the adapters no longer run
        as separate layers, and no longer train: a later ``fit`` starts
        afresh anyway.

        Returns
        -------
        self
        """
        self.check_is_fitted()
        if not self.adapted_modules_:
            raise ValueError(
                f"{type(self).__name__} has no adapters to merge (adapter=None)."
            )
        merge(self._network.backbone)
        return self

    def save_trained(self, path) -> None:
        """Write the trained part of the network to a safetensors file.

        The trained part: the head, the adapters, the blocks ``freeze`` left
        trainable (with an adapter, the adapters and the head only: a small
        file), and the buffers that trained with them (BatchNorm statistics
        under ``Freeze(train_bn=True)``). Load it into an estimator fitted
        alike with :meth:`load_trained`.

        Parameters
        ----------
        path : str or path-like
        """
        from safetensors.torch import save_file

        from .persistence import trained_state

        self.check_is_fitted()
        save_file(
            trained_state(self), os.fspath(path), metadata={"format": "sktune-trained"}
        )

    def load_trained(self, path):
        """Load a trained part written by :meth:`save_trained`.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        self

        Raises
        ------
        ValueError
            When the file does not fit this estimator's network (other
            parameters or shapes); the network is left as it was.
        """
        from .backbones.weights import read_state_dict
        from .persistence import trained_keys

        self.check_is_fitted()
        state = read_state_dict(path, param="path")
        own = self._network.state_dict()
        wrong = sorted(set(state) ^ trained_keys(self))
        shapes = [k for k in state if k in own and own[k].shape != state[k].shape]
        if wrong or shapes:
            raise ValueError(
                f"path={os.fspath(path)!r} does not fit this network's trained part: "
                f"{len(wrong)} parameters differ (e.g. {wrong[:3]}), {len(shapes)} "
                f"shapes differ (e.g. {shapes[:3]}). Fit an estimator with the same "
                "backbone, freeze, adapter and head first."
            )
        self._network.load_state_dict(state, strict=False)
        return self

    def save_pretrained(self, directory) -> None:
        """Write the fitted estimator to a directory, without pickle.

        The directory holds ``sktune_config.json`` (the parameters, where
        the backbone comes from and a fingerprint of its weights, the fitted
        input spec and classes), ``model.safetensors`` (the trained part of
        the network only: head, adapters, the blocks ``freeze`` left
        trainable) and ``history.json``. The pretrained weights are not
        copied: :meth:`from_pretrained` takes them from the backbone.
        Parameters with no JSON form (callbacks, a head factory) are listed
        in the config as not saved; pass them back to ``from_pretrained``.

        Parameters
        ----------
        directory : str or path-like
            Created if missing; files of an earlier save are replaced.

        Examples
        --------
        >>> clf.save_pretrained("sentiment-model")  # doctest: +SKIP
        >>> FineTuneClassifier.from_pretrained("sentiment-model")  # doctest: +SKIP
        """
        from .persistence import save

        with self._on_device():
            save(self, directory)

    @classmethod
    def from_pretrained(cls, directory, backbone=None, **params):
        """Rebuild an estimator written by :meth:`save_pretrained`.

        Nothing is unpickled: the config is JSON (naming classes from
        torch, skorch and sktune only), the weights are safetensors.

        Parameters
        ----------
        directory : str or path-like
        backbone : optional
            The backbone, when the model was saved from a module (a module is
            not stored with the model). By default the saved spec is loaded.
            Either way its weights must match the fingerprint in the config.
        **params
            Parameters to set instead of the saved ones (``device="cuda"``,
            or those the config lists as not saved).

        Returns
        -------
        estimator
            Fitted: it predicts as the saved estimator did.
        """
        from .persistence import load

        return load(cls, directory, backbone=backbone, **params)

    # -- introspection ------------------------------------------------------

    def describe(self) -> str:
        """A table of the backbone's blocks: counts, mode and learning rate.

        Returns
        -------
        str
            One row per block (input side first), then the head: parameter
            counts, how many train, whether the block runs in eval mode and
            the learning rate it trains at; then the rates in one line (the
            head's, the top and lowest trainable blocks' or adapters').

        Examples
        --------
        >>> print(clf.describe())  # doctest: +SKIP
        block  name      params  trainable  frozen  mode     lr
        0      0            144          0     144  eval      -
        1      2            272        272       0  train  0.01
        2      5            272        272       0  train  0.01
        head   Linear        51         51       0  train  0.01
        learning rates: head 0.01, backbone 0.01 (blocks 1-2)
        """
        self.check_is_fitted()
        net = self._network
        rates = self._rates()
        return (
            describe_blocks(
                net.backbone,
                self.blocks_,
                net.head,
                net.plan.eval_modules,
                rates=rates["params"],
            )
            + f"\nlearning rates: {format_rates(rates)}"
        )


def _len(X) -> int:
    if isinstance(X, Mapping):
        return _len(next(iter(X.values())))
    return len(X)


def _mean_tokens(X, collator) -> float | None:
    """The mean token count of texts, or of tokenized input's attention mask."""
    if isinstance(X, Mapping):
        mask = X.get("attention_mask")
        return None if mask is None else float(mask.sum(1).float().mean())
    return mean_tokens(X, collator)
