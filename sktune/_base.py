"""The behaviour FineTuneClassifier and FineTuneRegressor share.

The mixin sits in front of skorch's estimators in the MRO and overrides only
documented hooks (``initialize_module``, ``get_all_learnable_params``,
``get_iterator``, ``check_data``) plus the sklearn entry points that must see
the data before skorch initializes (``fit``/``partial_fit``: the head is sized
from ``y`` and the backbone's feature size is probed on ``X``).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import numbers
import os
import threading
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import clone
from skorch.dataset import Dataset as SkorchDataset
from skorch.dataset import unpack_data
from skorch.exceptions import NotInitializedError
from skorch.utils import to_device

from .backbones import as_backbone
from .blocks import block_map, record_child_order
from .cache import STORE, fingerprint, plan_split, sample_digests
from .data import (
    ImagePreprocess,
    RowsDataset,
    TextCollator,
    TextDataset,
    batch_as_is,
    check_fit_data,
    check_predict_data,
    input_spec,
    pad_token_states,
)
from .freeze import apply_freeze, plan_freeze
from .heads import POOLINGS, build_head, pool_features
from .network import FineTuneNetwork, use_channels_last

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
    def _seeded(self):
        """Seed torch and numpy from ``random_state`` for one fit call.

        The seed covers what happens before the first epoch (head and lazy
        layer initialization, the validation split); each epoch then reseeds
        from ``(seed, epoch number)`` (see :meth:`on_epoch_begin`), so a fit
        resumed from a checkpoint replays the epochs it missed exactly. The
        global RNG states are restored afterwards.
        """
        seed = _seed_of(self.random_state)
        self._fit_seed = seed
        if seed is None:
            yield
            return
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

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        seed = getattr(self, "_fit_seed", None)
        if seed is not None:
            epoch = len(self.history_)
            torch.manual_seed(
                int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
            )

    # -- fitting ------------------------------------------------------------

    def _encode_targets(self, y, *, reset: bool, classes=None):
        """Convert checked targets for the loss; size the head on reset."""
        raise NotImplementedError

    def fit(self, X, y, **fit_params):
        """Fit the head (and the unfrozen backbone) on ``X, y``.

        Every fit starts from the pristine pretrained weights, unless
        ``warm_start=True`` and the estimator was fitted before.
        """
        warm = bool(self.warm_start) and getattr(self, "initialized_", False)
        return self._fit(X, y, reset=not warm, _routing_method="fit", **fit_params)

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs, initializing on the first call."""
        reset = not getattr(self, "initialized_", False)
        return self._fit(X, y, reset=reset, classes=classes, **fit_params)

    def _fit(self, X, y, *, reset: bool, classes=None, **fit_params):
        if not isinstance(self.group_by_length, bool):
            raise ValueError(
                f"group_by_length={self.group_by_length!r} is not valid; use True or "
                "False."
            )
        if self.group_by_length and importlib.util.find_spec("transformers") is None:
            raise ImportError(
                "group_by_length=True draws batches with transformers' "
                "LengthGroupedSampler; install it with pip install 'sktune[text]'."
            )
        with self._seeded():
            X, y, kind = check_fit_data(
                self, X, y, reset=reset, regression=self._regression
            )
            if self.group_by_length and kind not in ("text", "pairs"):
                raise ValueError(
                    "group_by_length=True groups texts by their length, but X holds "
                    f"{kind} data; use group_by_length=False."
                )
            y = self._encode_targets(y, reset=reset, classes=classes)
            if reset:
                self._input_kind = kind
                self._example_X = _head(X)
                self.initialize()
                self.cache_info_ = {
                    "enabled": False,
                    "reason": None,
                    "computed": 0,
                    "reused": 0,
                }
            # Texts whose token counts group_by_length reads (counted lazily,
            # once per fit, and only if a training loader asks for them).
            self._fit_texts, self._fit_lengths = X, None
            try:
                if self._use_cache(len(y)):
                    H = self._prefix_outputs(X)
                    with self._on_cut():
                        super().partial_fit(H, y, **fit_params)
                else:
                    super().partial_fit(X, y, **fit_params)
            finally:
                del self._fit_texts, self._fit_lengths
        return self

    # -- frozen-prefix cache --------------------------------------------------

    def _use_cache(self, n_samples: int, *, training: bool = True) -> bool:
        """Whether this call runs on cached prefix outputs; say why not."""
        if self.cache is False or self.module_.split is None:
            reason = "cache=False" if self.cache is False else self._cache_reason
        elif not (
            self.dataset is SkorchDataset
            and "collate_fn"
            not in self.get_params_for(
                "iterator_train" if training else "iterator_valid"
            )
        ):
            # Its transforms would be skipped, or handed cached outputs.
            reason = "a custom dataset or collate_fn may augment the data"
        elif n_samples * self._cache_row_bytes() > self.cache_size * 2**20:
            reason = (
                f"the prefix outputs of {n_samples} samples need "
                f"{n_samples * self._cache_row_bytes() / 2**20:.0f} MB, more than "
                f"cache_size={self.cache_size} MB"
            )
        else:
            reason = None
        if training:
            self.cache_info_.update(enabled=reason is None, reason=reason)
            if reason is not None and self.cache is True:
                raise ValueError(
                    f"cache=True, but the frozen prefix cannot be cached: {reason}."
                )
            if reason is not None and self.verbose and self.cache == "auto":
                print(f"Frozen-prefix cache off: {reason}.")
        return reason is None

    def _stored_dtype(self) -> torch.dtype:
        """The precision cached rows are stored at (``cache_dtype``)."""
        return _cache_dtype(self.cache_dtype) or self._cache_row_dtype

    def _cache_row_bytes(self) -> int:
        """Bytes of one sample's stored prefix output (text: of the probe's)."""
        return self._cache_row_numel * self._stored_dtype().itemsize

    def _cache_context(self) -> tuple:
        net = self.module_
        preprocess = net.preprocess
        # The frozen prefix holds the pristine weights, whose digest is
        # memoized across fits and clones; lazy layers are only materialized
        # (by a seeded init) in the training copy, so that is what counts then.
        pristine = as_backbone(self.backbone).module()
        weights = (
            net.backbone
            if any(_is_lazy(p) for p in pristine.parameters())
            else pristine
        )
        return (
            fingerprint(weights),
            net.split.key(),
            self._input_kind,
            None
            if preprocess is None
            else (
                tuple(preprocess.mean.flatten().tolist()),
                tuple(preprocess.std.flatten().tolist()),
                preprocess.size,
            ),
            net.pooling,
            net.channels_last,  # other kernels, other rounding
            self._stored_dtype(),
            self._max_length() if self._is_text() else None,
        )

    def _prefix_outputs(self, X) -> torch.Tensor:
        """Prefix outputs of ``X``, computed once per sample and stored."""
        context = self._cache_context()
        digests = sample_digests(X)
        rows = STORE.lookup(context, digests)
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            if self._is_text():
                # Length buckets: sorted by length, a batch pads to texts of
                # about its own length instead of the longest of a random mix.
                missing.sort(key=lambda i: len(str(X[i])))
            subset = _take(X, missing)
            net = self.module_
            was_training = net.training
            net.eval()
            outputs = []
            with torch.no_grad():
                for batch in self.get_iterator(
                    self.get_dataset(subset), training=False
                ):
                    xb = to_device(unpack_data(batch)[0], self.device)
                    if isinstance(xb, dict) and net.split.tokens:
                        # One (T_i, D) tensor per text: its tokens, no padding.
                        states = net.prefix(**xb).to("cpu")
                        lengths = xb["attention_mask"].sum(1).tolist()
                        outputs.extend(states[i, :n] for i, n in enumerate(lengths))
                    elif isinstance(xb, dict):
                        outputs.extend(net.prefix(**xb).to("cpu"))
                    else:
                        outputs.extend(net.prefix(self._pad(xb))[: len(xb)].to("cpu"))
            net.train(was_training)
            stored = self._stored_dtype()
            computed = [
                row.to(stored) if row.is_floating_point() else row for row in outputs
            ]
            STORE.insert(
                context,
                [digests[i] for i in missing],
                computed,
                self.cache_size * 2**20,
            )
            for i, row in zip(missing, computed, strict=True):
                rows[i] = row
        self.cache_info_["computed"] += len(missing)
        self.cache_info_["reused"] += len(rows) - len(missing)
        return rows if self.module_.split.tokens else torch.stack(rows)

    @contextmanager
    def _on_cut(self):
        """Train or predict on cached prefix outputs instead of raw input."""
        self.module_.from_cut = self._from_cut = True
        try:
            yield
        finally:
            self.module_.from_cut = self._from_cut = False

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
        source = as_backbone(self.backbone)
        backbone = source.training_copy()
        spec = input_spec(source)
        kind = self._input_kind
        _check_input_fits_backbone(kind, example, spec)
        self.tokenizer_ = spec.tokenizer
        pooling = self.pooling if self.pooling is not None else spec.pooling
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(
                f"pooling={pooling!r} is not valid; use one of {list(POOLINGS)} or None "
                "(the backbone's own default)."
            )
        if hasattr(backbone, "pooling") and pooling is not None:
            backbone.pooling = pooling
        preprocess = (
            _image_preprocess(self.image_size, spec) if kind == "image" else None
        )
        batch = next(
            iter(self.get_iterator(self.get_dataset(example), training=False))
        )[0]
        features, order = _probe(backbone, preprocess, batch)
        channels_last = self._plan_layout(backbone, preprocess, batch, features)
        if channels_last and preprocess is not None:
            # uint8 N x H x W x C permuted is channels-last already: no copy.
            preprocess.memory_format = torch.channels_last
        blocks = block_map(backbone, order)
        plan = plan_freeze(backbone, blocks, self.freeze)
        apply_freeze(backbone, plan)
        head = build_head(self.head, features.shape[1], self._n_head_outputs)
        split = self._plan_cache(backbone, plan, blocks, order, batch, preprocess)
        self.module_ = FineTuneNetwork(
            backbone, head, plan, preprocess, pooling, split, channels_last
        )
        if split is not None and split.whole:
            row = features  # the pooled features, as probed
        elif split is not None:
            with torch.no_grad():
                self.module_.eval()
                row = (
                    self.module_.prefix(**batch)
                    if isinstance(batch, dict)
                    else self.module_.prefix(batch)
                )
        if split is not None:
            self._cache_row_dtype = row.dtype
            self._cache_row_numel = row[0].numel()
        self.blocks_ = blocks
        self.n_blocks_ = len(blocks)
        return self

    def _plan_layout(self, backbone, preprocess, batch, features) -> bool:
        """Whether the backbone runs channels-last (see ``channels_last``)."""
        setting = self.channels_last
        if not (
            isinstance(setting, bool)
            or (isinstance(setting, str) and setting == "auto")
        ):
            raise ValueError(
                f"channels_last={setting!r} is not valid; use 'auto', True or False."
            )
        if setting is False or isinstance(batch, dict):
            reason = "channels_last=False" if setting is False else "the input is text"
        else:
            device = _device_of(backbone)
            x = batch.to(device)
            x = preprocess(x) if preprocess is not None else x
            reason = use_channels_last(backbone, x, features.to(device))
        if reason is not None and setting is True:
            raise ValueError(f"channels_last=True, but {reason}.")
        return reason is None

    def _plan_cache(self, backbone, plan, blocks, order, batch, preprocess):
        if not (isinstance(self.cache, bool) or self.cache == "auto"):
            raise ValueError(
                f"cache={self.cache!r} is not valid; use 'auto', True or False."
            )
        size = self.cache_size
        if isinstance(size, bool) or not isinstance(size, numbers.Real) or not size > 0:
            raise ValueError(
                f"cache_size={size!r} is not valid; use a positive number of megabytes."
            )
        _cache_dtype(self.cache_dtype)  # validated before any work
        self._cache_reason = None
        if self.cache is False:
            return None
        split = plan_split(backbone, plan, blocks, order, batch, preprocess)
        if (
            not isinstance(split, str)
            and split.tokens
            and getattr(self.tokenizer_, "padding_side", "right") != "right"
        ):
            split = "the tokenizer pads on the left"
        if isinstance(split, str):
            self._cache_reason = split
            return None
        return split

    def get_dataset(self, X, y=None):
        if isinstance(X, torch.utils.data.Dataset):
            return super().get_dataset(X, y)
        if self._is_text():
            return TextDataset(X, y)
        if getattr(self, "_from_cut", False):
            if self.module_.split.tokens:
                return TextDataset(X, y)  # per-text token states, padded per batch
            # A tensor: index whole batches, back at the network's precision.
            return RowsDataset(X, y, dtype=self._cache_row_dtype)
        return super().get_dataset(X, y)

    def _is_text(self) -> bool:
        if getattr(self, "_from_cut", False):
            return False
        return getattr(self, "_input_kind", None) in ("text", "pairs")

    def train_step_single(self, batch, **fit_params):
        step = super().train_step_single(batch, **fit_params)
        # Raise before the optimizer applies this step: the weights stay those
        # of the last finite step, and the estimator stays usable.
        loss = step["loss"].detach()
        # The optimizer's own parameter list: walking the whole module's
        # named parameters every batch cost 17% of a cached probe's fit.
        grads = [
            p.grad
            for group in self.optimizer_.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
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
        if training and self.group_by_length and kwargs.get("shuffle", False):
            if "sampler" not in kwargs and "batch_sampler" not in kwargs:
                from transformers.trainer_pt_utils import LengthGroupedSampler

                # Shuffled, then sorted by length within mega-batches of up to
                # 50 batches: a batch pads to texts of about its own length.
                del kwargs["shuffle"]
                kwargs["sampler"] = LengthGroupedSampler(
                    kwargs["batch_size"], lengths=self._token_lengths(dataset)
                )
        if self._is_text():
            kwargs.setdefault(
                "collate_fn", TextCollator(self.tokenizer_, self._max_length())
            )
        elif getattr(self, "_from_cut", False) and self.module_.split.tokens:
            kwargs["collate_fn"] = functools.partial(
                pad_token_states, dtype=self._cache_row_dtype
            )
        elif isinstance(getattr(dataset, "dataset", dataset), RowsDataset):
            kwargs["collate_fn"] = batch_as_is
        return iterator(dataset, **kwargs)

    def _token_lengths(self, dataset) -> list[int]:
        """Tokens per sample of the training data (or a subset of it).

        Counted on the texts in ``_fit``, so raw texts and cached prefix
        outputs (token states or pooled features) are grouped alike.
        """
        if isinstance(dataset, torch.utils.data.Subset):
            lengths = self._token_lengths(dataset.dataset)
            return [lengths[i] for i in dataset.indices]
        texts = self._fit_texts
        if len(dataset) != len(texts):
            raise ValueError(
                "group_by_length=True groups the samples passed to fit, but the "
                f"training dataset holds {len(dataset)} samples instead of "
                f"{len(texts)}: use a train_split that returns subsets (like "
                "skorch's ValidSplit), or group_by_length=False."
            )
        if self._fit_lengths is None:
            collate = TextCollator(self.tokenizer_, self._max_length())
            self._fit_lengths = collate.lengths(texts)
        return self._fit_lengths

    def _max_length(self) -> int:
        if self.max_length is None:
            model_max = getattr(self.tokenizer_, "model_max_length", None) or 512
            return min(int(model_max), 512)
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, numbers.Integral)
            or self.max_length < 1
        ):
            raise ValueError(
                f"max_length={self.max_length!r} is not valid; use None or a positive int."
            )
        return int(self.max_length)

    # -- prediction ---------------------------------------------------------

    def _check_predict_X(self, X):
        self.check_is_fitted()
        if isinstance(X, torch.utils.data.Dataset):
            # skorch's scoring callbacks predict on (validated) datasets.
            return X
        return check_predict_data(self, X, self._input_kind)

    def evaluation_step(self, batch, training=False):
        # Pad a short inference batch to the full batch size, so every sample
        # runs through the same kernels: a prediction never depends on which
        # other samples share its batch (float32 GEMMs of different heights
        # round differently).
        Xi, yi = unpack_data(batch)
        if training or not isinstance(Xi, torch.Tensor):
            return super().evaluation_step(batch, training=training)
        return super().evaluation_step((self._pad(Xi), yi), training=training)[
            : len(Xi)
        ]

    def _forward_numpy(self, X) -> np.ndarray:
        """Raw head outputs for validated ``X``, one row per sample."""
        if isinstance(X, torch.utils.data.Dataset) or not self._use_cache(
            _n_samples(X), training=False
        ):
            return super().predict_proba(X)
        H = self._prefix_outputs(X)
        with self._on_cut():
            return super().predict_proba(H)

    def embed(self, X) -> np.ndarray:
        """The pooled backbone features of ``X``: what the head sees.

        Useful to inspect the representation or to fit another model on it.
        With ``freeze="all"`` they come from the frozen-prefix cache.
        """
        X = self._check_predict_X(X)
        net = self.module_
        if (
            net.split is not None
            and net.split.whole
            and self._use_cache(_n_samples(X), training=False)
        ):
            return self._prefix_outputs(X).to(self._cache_row_dtype).numpy()
        was_training = net.training
        net.eval()
        outputs = []
        with torch.no_grad():
            for batch in self.get_iterator(self.get_dataset(X), training=False):
                xb = to_device(unpack_data(batch)[0], self.device)
                if isinstance(xb, dict):
                    outputs.append(net.features(**xb).cpu())
                else:
                    outputs.append(net.features(self._pad(xb))[: len(xb)].cpu())
        net.train(was_training)
        return torch.cat(outputs).numpy()

    def _pad(self, xb: torch.Tensor) -> torch.Tensor:
        """Pad a short batch to the inference batch size (see evaluation_step)."""
        size = self.get_params_for("iterator_valid").get("batch_size", self.batch_size)
        if size == -1 or len(xb) >= size:
            return xb
        return torch.cat([xb, xb[:1].expand(size - len(xb), *xb.shape[1:])])

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


def _probe(backbone: torch.nn.Module, preprocess, batch):
    """Run one batch of one sample through ``backbone`` in eval mode.

    Returns the pooled features (their width sizes the head) and the order in
    which the top-level children ran (for the block map). Lazy modules are
    materialized here, before the optimizer sees their parameters.
    """
    device = _device_of(backbone)
    order, remove = record_child_order(backbone)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            if isinstance(batch, dict):
                out = backbone(**{k: v.to(device) for k, v in batch.items()})
                shape = {k: tuple(v.shape) for k, v in batch.items()}
            else:
                batch = batch.to(device)
                shape = tuple(batch.shape)
                out = backbone(preprocess(batch) if preprocess is not None else batch)
        features = pool_features(out)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(
            f"The backbone could not process an input of shape {shape} (one sample "
            f"of X): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        remove()
        backbone.train(was_training)
    return features, order


def _n_samples(X) -> int:
    return len(next(iter(X.values()))) if isinstance(X, dict) else len(X)


def _take(X, indices):
    if isinstance(X, dict):
        return {k: v[indices] for k, v in X.items()}
    if isinstance(X, list):
        return [X[i] for i in indices]
    return X[indices]


def _head(X):
    """The first sample of validated input, kept to build the network."""
    if isinstance(X, dict):
        return {k: v[:1] for k, v in X.items()}
    return X[:1]


def _check_input_fits_backbone(kind: str, example, spec) -> None:
    text_model = spec.tokenizer is not None
    if kind in ("text", "pairs") and not text_model:
        raise ValueError(
            "X holds strings, but the backbone has no tokenizer: use a Hugging Face "
            "backbone ('hf:ID_OR_DIR' or a sktune.Backbone of one), or turn the "
            "text into numbers first."
        )
    if kind in ("array", "image") and text_model:
        raise ValueError(
            "The backbone is a text model, but X holds numbers or images: pass "
            "strings (or string pairs), or a mapping of tokenized inputs "
            "(input_ids=..., attention_mask=...)."
        )
    expected = spec.input_size[0] if spec.input_size else None
    if expected is None:
        return
    if kind == "image":
        channels = example.shape[-1] if example.ndim == 4 else 1
        layout = "N x H x W x C"
    elif kind == "array" and example.ndim == 4:
        channels, layout = example.shape[1], "N x C x H x W"
    else:
        return
    if channels != expected:
        hint = (
            " Repeat the gray channel, e.g. np.repeat(X[..., None], 3, axis=-1)."
            if channels == 1 and expected == 3 and kind == "image"
            else " Drop the alpha channel with X[..., :3]."
            if channels == 4 and expected == 3 and kind == "image"
            else ""
        )
        raise ValueError(
            f"X holds {channels}-channel images ({layout}), but the backbone expects "
            f"{expected} channels.{hint}"
        )


def _image_preprocess(image_size, spec) -> ImagePreprocess:
    if image_size is None:
        size = None
    elif isinstance(image_size, str) and image_size == "auto":
        if not spec.input_size:
            raise ValueError(
                "image_size='auto' needs the backbone's input size, which this "
                "backbone does not state; pass image_size=(height, width)."
            )
        size = tuple(spec.input_size[1:])
    elif (
        isinstance(image_size, numbers.Integral)
        and not isinstance(image_size, bool)
        and image_size > 0
    ):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(v, numbers.Integral) and v > 0 for v in image_size)
    ):
        size = tuple(int(v) for v in image_size)
    else:
        raise ValueError(
            f"image_size={image_size!r} is not valid; use None (keep the images' "
            "size), 'auto' (the backbone's input size), an int or (height, width)."
        )
    if spec.mean is None:
        return ImagePreprocess(size=size)
    return ImagePreprocess(spec.mean, spec.std, size)


_CACHE_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _cache_dtype(value) -> torch.dtype | None:
    """The storage precision of cached prefix outputs (None: as computed)."""
    if value is None:
        return None
    if isinstance(value, torch.dtype) and value in _CACHE_DTYPES.values():
        return value
    if isinstance(value, str) and value in _CACHE_DTYPES:
        return _CACHE_DTYPES[value]
    raise ValueError(
        f"cache_dtype={value!r} is not valid; use None (store as computed), "
        "'float16', 'bfloat16' or 'float32'."
    )


def _device_of(module: torch.nn.Module):
    """The device of a module's (materialized) parameters; CPU without any."""
    return next((p.device for p in module.parameters() if not _is_lazy(p)), "cpu")


def _is_lazy(param) -> bool:
    return isinstance(param, torch.nn.parameter.UninitializedParameter)
