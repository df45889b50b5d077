"""FineTuneMixin: the scikit-learn and skorch protocol of both estimators.

The mixin sits in front of skorch's ``NeuralNetClassifier`` /
``NeuralNetRegressor`` in the MRO. It speaks the protocol and hands the
work to collaborators, in the order of a fit:

- parameters and their validation: :mod:`sktune._params`; seeds:
  :mod:`sktune._random`;
- input checks and target encoding: :mod:`sktune.data.inputs`; sample and
  class weights: :mod:`sktune.data.weights`;
- the network, its blocks, freeze plans and caches: :mod:`sktune._builder`;
- the learning rates: :mod:`sktune.schedules`;
- the freeze stages, the split they share and what each trains on (the
  frozen-prefix cache or the input): :class:`sktune.stages.FitStages`;
- the DataLoaders: :mod:`sktune.data.loaders`;
- backward and the divergence guard: :class:`sktune.runtime.StepGuard`;
- restarts: :mod:`sktune._restarts`; did it learn: :mod:`sktune.diagnostics`;
  the summary and bars: :mod:`sktune.progress`; files: :mod:`sktune.persistence`.

Each skorch hook it overrides hands over in a few lines: ``fit`` and
``partial_fit`` check the data first; ``initialize_module`` builds the
network; ``get_all_learnable_params`` and ``get_params_for_optimizer`` give
frozen parameters no optimizer state and each block its rate;
``fit_loop``, ``get_split_datasets`` and ``on_epoch_begin`` run the stages
on one split, each epoch reseeded; ``get_dataset`` and ``get_iterator``
bring texts and cached rows their batching, and the batches of a weighted
fit their sample weights, which ``infer`` takes out and ``get_loss``
weighs the loss with (:mod:`sktune.data.weights`); ``train_step_single`` and
``_step_optimizer`` go through the step guard; ``evaluation_step`` pads
short batches; ``save_params`` writes atomically. ``set_params``,
``__setattr__``, ``__sklearn_clone__``, ``__deepcopy__`` and the pickling
hooks treat the backbone and nested objects as parameters, not components,
and never copy a shared backbone. ``device="auto"`` and ``verbose`` are
read by skorch through :mod:`sktune._scoped`, never written over.
"""

from __future__ import annotations

import copy
import numbers
from contextlib import nullcontext, suppress

import numpy as np
import torch
from sklearn.base import clone
from skorch.dataset import unpack_data
from skorch.exceptions import NotInitializedError
from torch.utils.data import Dataset

from ._builder import build_network
from ._freeze_search import describe_search
from ._params import (
    CONSTRAINTS,
    NETWORK_PARAMS,
    check_against_input,
    estimator_repr,
    pop_nested,
    set_nested,
    validate_params,
)
from ._random import epoch_seed, fit_seeds, seeded
from ._restarts import fit_restarts
from ._scoped import ScopedParam, private, restored_on_error, scoped
from .adapters.inject import adapter_params, merge
from .backbones import as_backbone
from .blocks import describe_blocks
from .cluster import reference
from .data.inputs import (
    FittedInput,
    check_fit_data,
    check_predict_data,
    input_kind,
)
from .data.loaders import make_loader, pad_batch
from .data.photos import PhotoDataset, Photos, PhotoSpec
from .data.text import TextCollator, TextDataset, is_texts
from .data.weights import (
    WeightedDataset,
    fit_weights,
    split_weights,
    unreduced,
    weighted_base,
    weighted_loss,
)
from .diagnostics import warn_if_learned_nothing
from .freeze import is_auto
from .persistence import PretrainedMixin, save_atomically
from .progress import bar, default_callbacks, fit_summary, shows_bar
from .runtime import StepGuard, compute_dtype, grad_scaler, resolve_device
from .schedules import (
    block_index,
    format_rates,
    optimizer_groups,
    rates_in_effect,
    resolve_backbone_lr,
)
from .stages import FitStages, n_samples

__all__ = ["FineTuneMixin"]

# Parameters of our own that hold objects with nested parameters
# (``freeze__depth``), routed the sklearn way instead of skorch's.
_OWN_PARAMS = ("backbone", "freeze", "adapter", "head", "lr_schedule")
# Parameters clones share instead of copying: the read-only backbone, an
# Accelerate accelerator (one per process).
_SHARED_PARAMS = ("backbone", "accelerator")
_NO_REINIT_PREFIXES = ("iterator_train__", "iterator_valid__", "dataset__")


class FineTuneMixin(PretrainedMixin):
    """Shared implementation; see :class:`sktune.FineTuneClassifier`."""

    initialized_ = private("initialized_")
    history_ = private("history_")
    virtual_params_ = private("virtual_params_")
    # Parameters skorch reads with another value inside a call (see _scoped).
    device = ScopedParam()
    verbose = ScopedParam()
    _predicting = ScopedParam(default=False)  # inside predict: a bar over batches
    _source = ScopedParam(default=None)  # inside fit: the Backbone, resolved once
    # Inside a weighted fit: each sample's weight (sktune.data.weights),
    # never stored on the estimator (a fitted model holds no training data).
    _fit_weights = ScopedParam(default=None)
    # What each parameter accepts (checked at the start of fit).
    _constraints = CONSTRAINTS
    # Whether the targets are a multilabel indicator matrix (a classifier's).
    _multilabel = False

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
        augment=None,
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
        self.augment = augment
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
        return estimator_repr(self)

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
        nested = pop_nested(params, _OWN_PARAMS)
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
        set_nested(self, nested)
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

    # -- fitting ------------------------------------------------------------

    def _encode_targets(self, y, *, reset: bool, classes=None):
        """Convert checked targets for the loss; size the head on reset."""
        raise NotImplementedError

    def _sample_weights(self, y, sample_weight):
        """Each sample's weight in the loss of a fit on encoded ``y``,
        normalized to mean 1; None where all weigh the same."""
        return fit_weights(sample_weight, len(y))

    def fit(self, X, y, sample_weight=None, **fit_params):
        """Fit the head (and the unfrozen backbone) on ``X, y``.

        Every fit starts from the pristine pretrained weights, unless
        ``warm_start=True`` and the estimator was fitted before.

        Parameters
        ----------
        X : array-like, DataFrame, tensor, list of str or mapping
            Numeric arrays, images (float ``N x C x H x W``, taken as
            normalized, or uint8 ``N x H x W x C`` with any number of
            channels; other integer images, uint16 say, are refused), photos
            (file paths, PIL images or uint8 pictures of any size, decoded
            at the backbone's working size: see :mod:`sktune.data.photos`),
            texts or text pairs (Hugging Face backbones; empty texts are
            texts), or a mapping of tokenized inputs. Strings are texts for
            a text backbone and paths for any other.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Class labels, a multilabel indicator matrix (classifier: 0/1,
            one column per label), or regression targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Each sample's weight in the loss: each batch's loss is the mean
            of ``weight * loss`` over its samples (the validation loss too).
            The weights (times ``class_weight``'s) are scaled to average 1
            over ``X``, so their scale does not change the learning rate.
            Non-negative; a weight of 0 leaves a sample out. Routed by
            ``Pipeline`` and ``GridSearchCV`` (``set_fit_request``).
        **fit_params
            Passed on to skorch (and on to the train split).

        Returns
        -------
        self
        """
        warm = bool(self.warm_start) and getattr(self, "initialized_", False)
        return self._fit(
            X,
            y,
            reset=not warm,
            sample_weight=sample_weight,
            _routing_method="fit",
            **fit_params,
        )

    def partial_fit(self, X, y, classes=None, sample_weight=None, **fit_params):
        """Train for ``max_epochs`` more epochs, initializing on the first call.

        Parameters
        ----------
        X, y
            As in :meth:`fit`.
        classes : array-like, optional
            All class labels, for a first call on data that lacks some.
        sample_weight : array-like of shape (n_samples,), default=None
            As in :meth:`fit`, scaled to average 1 over this call's ``X``.
        **fit_params
            Passed on to skorch.

        Returns
        -------
        self
        """
        reset = not getattr(self, "initialized_", False)
        return self._fit(
            X,
            y,
            reset=reset,
            classes=classes,
            sample_weight=sample_weight,
            **fit_params,
        )

    def _fit(
        self, X, y, *, reset: bool, classes=None, sample_weight=None, **fit_params
    ):
        validate_params(self)
        source = as_backbone(self.backbone) if reset else None
        seeds = fit_seeds(self.random_state, self.n_restarts if reset else 1)
        cuda = torch.cuda.is_available() and "cuda" in str(self._compute_device)
        with seeded(seeds[0].init, cuda=cuda):
            with restored_on_error(self), scoped(self, _source=source):
                X, y, fitted = check_fit_data(
                    self,
                    X,
                    y,
                    reset=reset,
                    regression=self._regression,
                    strings=self._strings(X, reset, source),
                )
                check_against_input(self, fitted.kind, fitted.shape)
                if fitted.kind == "photos":
                    fitted = self._load_photos(X, reset, source, training=True)
                y = self._encode_targets(y, reset=reset, classes=classes)
                weights = self._sample_weights(y, sample_weight)
                if reset:
                    self.input_spec_ = fitted
                    self._seeds = seeds[0]
                    # A fresh fit searches its depth anew (freeze="auto").
                    self.__dict__.pop("freeze_depth_", None)
                    self.__dict__.pop("freeze_search_", None)
                    self.initialize()
                    self._fit_stages.check(self.max_epochs)
                elif len(self.history_) == 0:
                    self._seeds = seeds[0]
            if len(seeds) == 1:
                first_epoch = len(self.history_) + 1
                with self._weighted(weights):
                    super().partial_fit(X, y, **fit_params)
                warn_if_learned_nothing(
                    self, y, first_epoch, stacklevel=4, sample_weight=weights
                )
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
            sample_weight=weights,
        )
        warn_if_learned_nothing(self, y, 1, stacklevel=4, sample_weight=weights)
        return self

    def _weighted(self, weights):
        """Inside, skorch's loop trains on data weighted by ``weights`` (one
        per sample of the X and y it is given; None: unweighted)."""
        return scoped(self, _fit_weights=weights)

    def _strings(self, X, reset: bool, source) -> str:
        """What strings in X are: "text" for a text backbone, else "photos"
        (paths). The backbone is asked only when X holds strings."""
        if not reset:
            return "photos" if self.input_spec_.kind == "photos" else "text"
        if input_kind(X) not in ("text", "pairs"):
            return "text"
        return "text" if source.tokenizer() is not None else "photos"

    def _load_photos(self, photos, reset: bool, source, *, training: bool):
        """Decode (and check) every photo before any work; return the
        FittedInput of photos decoded so (see :mod:`sktune.data.photos`)."""
        photos.check_paths()
        if reset:
            spec = PhotoSpec.of(self.image_size, source.data_config())
        else:
            spec = self.input_spec_.photo_spec
        iterator = "iterator_train" if training else "iterator_valid"
        photos.load(
            spec,
            budget_mb=self.cache_size,
            workers=self.get_params_for(iterator).get("num_workers"),
        )
        return FittedInput.of_photos(spec)

    def _on_device(self):
        """Inside, skorch reads ``device="auto"`` as the device it resolves to
        (CUDA where available); the parameter itself stays ``"auto"``, and
        callbacks see it as set."""
        if self.__dict__.get("device") == "auto":
            return scoped(self, device=resolve_device("auto"))
        return nullcontext()

    def _skorch_messages(self):
        """skorch's "Re-initializing module." messages from verbose=2 on only
        (inside, skorch reads ``verbose`` as 0; the parameter keeps its value)."""
        verbose = self.__dict__.get("verbose", 0)  # (no int: fit refuses it)
        if isinstance(verbose, numbers.Integral) and verbose < 2:
            return scoped(self, verbose=0)
        return nullcontext()

    def _resume(self, X, y, epochs: int, **fit_params):
        """More epochs of the current training session (no new train begin)."""
        with suppress(KeyboardInterrupt):
            self.fit_loop(X, y, epochs=epochs, **fit_params)
        self.notify("on_train_end", X=X, y=y)

    # -- initialization -----------------------------------------------------

    def initialize(self):
        """Initialize skorch's components, the network from the fitted input."""
        with self._on_device(), self._skorch_messages():
            return super().initialize()

    def initialize_module(self):
        """Build the network for the fitted input (see :mod:`sktune._builder`)."""
        fitted = getattr(self, "input_spec_", None)
        if fitted is None:
            raise NotInitializedError(
                f"{type(self).__name__} sizes its head from the data; call fit or "
                "partial_fit instead of initialize."
            )
        built = build_network(
            self._source or as_backbone(self.backbone),
            fitted,
            n_outputs=self._n_head_outputs,
            device=self._compute_device,
            precision=compute_dtype(self.precision),
            auto_depth=self._auto_depth(),
            **{name: getattr(self, name) for name in NETWORK_PARAMS},
        )
        self.module_ = built.network
        self.device_ = self._compute_device
        self.blocks_ = built.blocks
        self.n_blocks_ = len(built.blocks)
        self.tokenizer_ = built.tokenizer
        self.adapted_modules_ = built.adapted
        self._family = built.family
        self._fit_stages = FitStages(
            built.stages,
            built.depth,
            len(built.blocks),
            self.freeze,
            chosen=self._auto_depth() is not None,
        )
        self.prefix_cache_ = self._fit_stages.final.prefix_cache
        self._trainable = self._fit_stages.trainable(built.network)
        self._collator = (
            TextCollator(built.tokenizer, built.max_length)
            if built.tokenizer is not None
            else None
        )
        return self

    def _auto_depth(self):
        """With ``freeze="auto"``, the depth a fit chose (None before)."""
        if not is_auto(self.freeze):
            return None
        return getattr(self, "freeze_depth_", None)

    @property
    def _compute_device(self):
        """Where the network is planned and trains (``device``, resolved)."""
        return resolve_device(self.device)

    @property
    def _network(self):
        """The FineTuneNetwork (``module_``, unwrapped where a wrapper holds it)."""
        return self.module_

    def get_all_learnable_params(self):
        # Frozen parameters get no optimizer state (DESIGN.md, invariant 3);
        # those a freeze schedule unfreezes later are in from the start.
        for name, param in super().get_all_learnable_params():
            if name in self._trainable:
                yield name, param

    def initialize_optimizer(self, *args, **kwargs):
        super().initialize_optimizer(*args, **kwargs)
        self._guard = self._step_guard()
        return self

    def _step_guard(self) -> StepGuard:
        """Backward and the divergence guard of each training step."""
        return StepGuard(grad_scaler(self.precision, self.device_))

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
        self.backbone_lr_ = resolve_backbone_lr(
            self.backbone_lr,
            kwargs["lr"],
            adapters=bool(self.adapted_modules_),
            family_rate=self._family.backbone_lr(self._network.backbone),
        )
        groups = optimizer_groups(
            named_parameters,
            self.blocks_,
            lr=kwargs["lr"],
            backbone_lr=self.backbone_lr_,
            layer_decay=self.layer_decay,
            patterns=patterns,
        )
        return (groups,), kwargs

    def _rates(self) -> dict:
        """The rates the optimizer applies (:func:`~sktune.schedules.rates_in_effect`)."""
        net = self._network
        # Only what trains at the depth in force: after freeze="auto"'s
        # search the optimizer still holds the parameters frozen again.
        return rates_in_effect(
            self.optimizer_,
            ((n, p) for n, p in net.named_parameters() if n in self._trainable),
            block_index(self.blocks_),
            adapter_params(net.backbone) if self.adapted_modules_ else (),
        )

    @property
    def _default_callbacks(self):
        return default_callbacks(super()._default_callbacks, self.lr_schedule)

    # -- the training loop ----------------------------------------------------

    def check_data(self, X, y=None):
        pass  # Data is validated in fit/partial_fit, before skorch sees it.

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop, run stage by stage of the freeze schedule, each on
        its own data (see :class:`sktune.stages.FitStages`)."""
        epochs = self.max_epochs if epochs is None else epochs

        def loop(data, n_epochs):
            super(FineTuneMixin, self).fit_loop(data, y, epochs=n_epochs, **fit_params)

        def announce():
            if self.verbose >= 2 or shows_bar(self.verbose):
                print(fit_summary(self, format_rates(self._rates())), flush=True)

        self._fit_stages.run(self, X, y, epochs, loop, announce)
        return self

    def get_split_datasets(self, X, y=None, **fit_params):
        # The stages of a freeze schedule share the first stage's split.
        return self._fit_stages.split(
            self.get_dataset(X, y),
            lambda: super(FineTuneMixin, self).get_split_datasets(X, y, **fit_params),
        )

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        epoch = len(self.history_)
        seed = getattr(self, "_seeds", None)
        if seed is not None and seed.data is not None:
            torch.manual_seed(epoch_seed(seed.data, epoch))
        stages = self._fit_stages
        self.history_.record("frozen_blocks", stages.frozen_at(epoch))
        if stages.auto:  # the epochs of the depth search (plot_history shades them)
            self.history_.record("freeze_search", not stages.chosen)

    def get_dataset(self, X, y=None):
        """The dataset of ``X`` (texts, photos, cached rows or skorch's own);
        inside a weighted fit, the fit data's batches carry their weights
        (:class:`~sktune.data.weights.WeightedDataset`)."""
        dataset = self._dataset(X, y)
        weights = self._fit_weights
        if weights is None or y is None:
            return dataset
        return WeightedDataset(dataset, weights)

    def _dataset(self, X, y=None):
        if isinstance(X, Dataset):
            return X
        if is_texts(X) and self._collator is not None:
            return TextDataset(X, y, self._collator)
        if isinstance(X, Photos):
            return PhotoDataset(X, y)
        return super().get_dataset(X, y)

    def get_iterator(self, dataset, training=False):
        return self._with_bar(self._loader(dataset, training=training))

    def _loader(self, dataset, *, training: bool):
        """The DataLoader of ``dataset`` (see :mod:`sktune.data.loaders`)."""
        name = "iterator_train" if training else "iterator_valid"
        kwargs = {"batch_size": self.batch_size, **self.get_params_for(name)}
        weighted = weighted_base(dataset)
        if weighted is not None:  # a custom collate_fn makes weighted batches too
            kwargs["collate_fn"] = weighted.collate_with(kwargs.get("collate_fn"))
        return make_loader(
            dataset,
            iterator=getattr(self, name),
            kwargs=kwargs,
            training=training,
            group_by_length=self.group_by_length,
            collator=self._collator,
        )

    def _with_bar(self, loader):
        """A long prediction shows a bar (after a second, where watched)."""
        if self._predicting:
            return bar(self.verbose, loader, desc="predict", unit="batch", delay=1)
        return loader

    def infer(self, x, **fit_params):
        x, _ = split_weights(x)  # the network never sees sample weights
        with self._on_device():  # skorch moves the batch to self.device
            return super().infer(x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """skorch's loss; for a batch that carries sample weights, the mean
        of ``weight * loss`` over its samples."""
        _, weights = split_weights(X)
        with self._on_device():  # skorch moves the targets to self.device
            if weights is None:
                return super().get_loss(y_pred, y_true, X=X, training=training)
            with unreduced(self.criterion_) as reduction:
                losses = super().get_loss(y_pred, y_true, X=X, training=training)
            return weighted_loss(losses, weights, reduction)

    def train_step_single(self, batch, **fit_params):
        # skorch's, through the step guard: the loss scaled for float16 (or
        # the accelerator's backward), and no non-finite step applied.
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        guard = self._guard
        with guard.autocast():
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        guard.backward(loss, self.optimizer_)
        guard.check(
            loss.detach(),
            self.optimizer_,
            f"epoch {len(self.history_)}, batch {len(self.history_[-1]['batches'])}",
            self.lr,
        )
        return {"loss": loss, "y_pred": y_pred}

    def _step_optimizer(self, step_fn):
        # A gradient scaler steps the optimizer itself, without a closure.
        if self._guard.scaler is None:
            return super()._step_optimizer(step_fn)
        step_fn()
        self._guard.step(self.optimizer_)

    # -- prediction ---------------------------------------------------------

    def _check_predict_X(self, X):
        self.check_is_fitted()
        if isinstance(X, Dataset):
            # skorch's scoring callbacks predict on (validated) datasets.
            return X
        X = check_predict_data(self, X, self.input_spec_.kind)
        if isinstance(X, Photos):
            self._load_photos(X, False, None, training=False)
        return X

    def evaluation_step(self, batch, training=False):
        # Pad a short inference batch to the full batch size, so every sample
        # runs through the same kernels: a prediction never depends on which
        # other samples share its batch (float32 GEMMs of different heights
        # round differently).
        Xi, yi = unpack_data(batch)
        if training:
            return super().evaluation_step(batch, training=training)
        size = self.get_params_for("iterator_valid").get("batch_size", self.batch_size)
        padded = pad_batch(Xi, size)
        if padded is Xi:
            return super().evaluation_step(batch, training=training)
        return super().evaluation_step((padded, yi), training=training)[: n_samples(Xi)]

    def _forward_numpy(self, X) -> np.ndarray:
        """Raw head outputs for validated ``X``, one row per sample."""
        with scoped(self, _predicting=True):
            data = X if isinstance(X, Dataset) else self._fit_stages.dataset(self, X)
            return super().predict_proba(data)

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
        return self._fit_stages.embed(self, self._check_predict_X(X))

    # -- the trained part ------------------------------------------------------

    def merge_adapters(self):
        """Merge the adapters into the backbone's weights, for faster inference.

        Predictions stay the same (to rounding); the adapters no longer run
        as separate layers (a later ``fit`` starts afresh anyway).

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
        save_atomically(
            lambda **files: super(FineTuneMixin, self).save_params(
                use_safetensors=use_safetensors, **files
            ),
            dict(
                kwargs,
                f_params=f_params,
                f_optimizer=f_optimizer,
                f_criterion=f_criterion,
                f_history=f_history,
            ),
        )

    @property
    def cache_info_(self) -> dict:
        """Whether the last fit used the frozen-prefix cache, why not, and counts."""
        return self.prefix_cache_.info

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
            + describe_search(self)
        )
