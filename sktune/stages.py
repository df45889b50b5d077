"""The stages of a fit and the data each one trains on.

A fit runs in stages: runs of epochs with the same blocks frozen (one stage
without a freeze schedule, several with ``Freeze(probe_epochs,
unfreeze_every)``, or as many as the search of ``freeze="auto"`` visits:
:mod:`sktune._freeze_search`). :class:`FitStages` is the estimator's collaborator for
them. It knows which blocks are frozen in which epoch, switches the network
and its frozen-prefix cache from one stage to the next, keeps one
train/validation split across the stages, and decides what each stage
loops over: the cached outputs of its frozen prefix where that is exact,
else the input itself.

The estimator hands over to it from skorch's hooks (``fit_loop``,
``get_split_datasets``, ``on_epoch_begin``); the state of a running fit
(the epochs planned, the split indices) lives here, not on the estimator.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from skorch.dataset import Dataset as SkorchDataset
from skorch.dataset import unpack_data
from skorch.utils import to_device
from torch.utils.data import Subset

from ._modules import eval_mode
from .cache import WholeSplit
from .data.augment import augment_name, batch_augment
from .data.loaders import pad_batch
from .data.text import TextDataset, is_texts, mean_tokens
from .freeze import apply_freeze, is_auto, options
from .progress import bar
from .schedules import check_schedule, frozen_at, phases

__all__ = ["FitStages", "n_samples"]


class FitStages:
    """The freeze stages of one built network, and the state of a fit.

    Parameters
    ----------
    stages : dict
        ``{n_frozen: stage}`` from the builder, each with its freeze plan
        and its prefix cache.
    depth : int
        The blocks ``freeze`` leaves frozen at the end of the fit.
    n_blocks : int
    freeze
        The ``freeze`` parameter (its schedule, if any).
    chosen : bool, default=False
        With ``freeze="auto"``: whether ``depth`` is the depth a fit chose
        (a fitted network rebuilt), rather than the search's floor.
    """

    def __init__(self, stages, depth: int, n_blocks: int, freeze, chosen=False):
        self.stages = stages
        self.depth = depth
        self.n_blocks = n_blocks
        self.policy = options(freeze)
        self.auto = is_auto(freeze)
        # With freeze="auto": the depth being trained (None: as planned).
        self.current = None
        self.chosen = chosen or not self.auto
        self.epochs_planned = None
        self.split_indices = None

    @property
    def final(self):
        """The stage the fit ends in."""
        return self.stages[self.depth]

    def trainable(self, network) -> set[str]:
        """Names of the parameters that train at some stage of the fit."""
        frozen = self.final.plan.frozen_params
        return {
            f"backbone.{n}"
            for n, _ in network.backbone.named_parameters()
            if n not in frozen
        } | {f"head.{n}" for n, _ in network.head.named_parameters()}

    def check(self, max_epochs: int) -> None:
        """A schedule must fit in ``max_epochs`` (an error says why not)."""
        if self.auto:
            from ._freeze_search import check_search

            check_search(self.policy, max_epochs)
        elif self.policy.schedules():
            check_schedule(
                n_blocks=self.n_blocks,
                depth=self.depth,
                probe_epochs=self.policy.probe_epochs,
                unfreeze_every=self.policy.unfreeze_every,
                max_epochs=max_epochs,
            )

    def frozen_at(self, epoch: int) -> int:
        """Blocks frozen in ``epoch`` (the policy's own depth without a schedule)."""
        if self.auto:
            return self.depth if self.current is None else self.current
        if not self.policy.schedules():
            return self.depth
        return frozen_at(
            epoch,
            n_blocks=self.n_blocks,
            depth=self.depth,
            probe_epochs=self.policy.probe_epochs,
            unfreeze_every=self.policy.unfreeze_every,
        )

    def run(self, net, X, y, epochs: int, loop, announce=None) -> None:
        """Train ``epochs`` epochs, stage by stage: ``loop(data, n_epochs)``.

        Each stage trains on its own data (cached at its own cut); all share
        the split the first stage drew. ``announce()`` runs once the first
        stage of a new fit knows whether it runs on the cache, before the
        prefix pass.
        """
        preprocess = net._network.preprocess
        if preprocess is not None:
            # Set every fit, so that set_params(augment=...) then partial_fit
            # trains with the value set (fit checked it against the input).
            preprocess.augment = batch_augment(net.augment)
        self.epochs_planned = epochs
        try:
            if not self.chosen:
                from ._freeze_search import search

                search(self, net, X, y, epochs, loop, announce)
                return
            runs = phases(len(net.history_) + 1, epochs, self.frozen_at)
            self.split_indices = {} if len(runs) > 1 else None
            for n_epochs, n_frozen in runs:
                self.train_stage(net, X, y, n_frozen, n_epochs, loop, announce)
        finally:
            self.epochs_planned = None
            self.split_indices = None

    def train_stage(self, net, X, y, n_frozen, n_epochs, loop, announce=None):
        """``n_epochs`` epochs with ``n_frozen`` blocks frozen, on that
        stage's data (its cache where it serves)."""
        self.enter(net, n_frozen)
        reason = self.cache_reason(net, X, training=True)
        show = print if net.verbose >= 2 else None
        cached = net.prefix_cache_.start_fit(reason, show)
        if announce is not None and len(net.history_) == 0:
            announce()
        loop(self.dataset(net, X, y, cached=cached), n_epochs)

    def enter(self, net, n_frozen: int) -> None:
        """Train with ``n_frozen`` blocks frozen, on that stage's cache."""
        stage = self.stages[n_frozen]
        network = net._network
        if self.auto:
            self.current = n_frozen
        apply_freeze(network.backbone, stage.plan)
        network.set_stage(stage.plan, stage.prefix_cache.split)
        net.prefix_cache_ = stage.prefix_cache

    def split(self, dataset, split):
        """``split(dataset)``, the same indices for every stage of a fit."""
        fixed = self.split_indices
        if fixed and "indices" in fixed:
            train, valid = fixed["indices"]
            # train None: every sample (the end of a search on an internal split)
            return (dataset if train is None else Subset(dataset, train)), (
                None if valid is None else Subset(dataset, valid)
            )
        train, valid = split()
        if fixed is not None and isinstance(train, Subset):
            fixed["indices"] = (
                train.indices,
                valid.indices if isinstance(valid, Subset) else None,
            )
        return train, valid

    # -- what a stage loops over ----------------------------------------------

    def cache_reason(self, net, X, *, training: bool) -> str | None:
        """Why ``X`` would not run on cached prefix outputs (None: it would)."""
        cache = net.prefix_cache_
        iterator = "iterator_train" if training else "iterator_valid"
        custom = not (
            net.dataset is SkorchDataset
            and "collate_fn" not in net.get_params_for(iterator)
        )
        ragged = cache.split is not None and cache.split.ragged
        # Augmented training batches differ every epoch; inference is never
        # augmented, so predictions and embed() still read the cache.
        augmented = training and net.augment is not None
        return cache.why_not(
            n_samples(X),
            custom_data=custom,
            tokens_per_sample=_mean_tokens(X, net._collator) if ragged else None,
            changing=augment_name(net.augment) if augmented else None,
        )

    def dataset(self, net, X, y=None, *, cached: bool | None = None):
        """What skorch loops over: cached rows, texts, or ``X`` itself.

        ``cached=None``: the cached rows wherever the cache can serve ``X``
        (inference); a fit decides once per stage (:meth:`run`).
        """
        if cached is None:
            cached = self.cache_reason(net, X, training=False) is None
        texts = is_texts(X)
        if cached:
            rows = self.prefix_outputs(net, X)
            lengths = TextDataset(X, None, net._collator).lengths if texts else None
            return net.prefix_cache_.dataset(rows, y, lengths)
        if texts:
            return TextDataset(X, y, net._collator)
        return X

    def prefix_outputs(self, net, X):
        """The frozen prefix's outputs for ``X``, from (or into) the cache."""
        network = net._network

        def progress(batches):
            return bar(
                net.verbose, batches, desc="frozen prefix, once", unit="batch", delay=1
            )

        return net.prefix_cache_.outputs(
            X,
            lambda X_, indices: inference_batches(net, X_, network.prefix, indices),
            progress=progress,
        )

    def embed(self, net, X):
        """The pooled backbone features of ``X`` (from the cache where it
        holds the whole backbone's output)."""
        cache = net.prefix_cache_
        if (
            isinstance(cache.split, WholeSplit)
            and self.cache_reason(net, X, training=False) is None
        ):
            rows = self.prefix_outputs(net, X)
            return rows.to(cache.row_dtype).float().numpy()
        batches = inference_batches(net, X, net._network.features)
        return torch.cat([out.cpu().float() for out, _ in batches]).numpy()


def inference_batches(net, X, fn, indices=None):
    """``fn`` over the inference batches of ``X``: (outputs, inputs) each.

    In eval mode and without gradients; tensor batches are padded to the
    inference batch size, so no output depends on its batch. ``indices``:
    only those samples, in that order, drawn batch by batch (no copy of X).
    """
    network = net._network
    size = net.get_params_for("iterator_valid").get("batch_size", net.batch_size)
    # Every sample, in every process: the cache must hold all rows (an
    # accelerator would shard a prepared loader).
    with eval_mode(network):
        dataset = net.get_dataset(X)
        if indices is not None and list(indices) != list(range(len(dataset))):
            dataset = Subset(dataset, indices)
        for batch in net._loader(dataset, training=False):
            xb = to_device(unpack_data(batch)[0], net._compute_device)
            with torch.no_grad():
                if isinstance(xb, Mapping):
                    out = fn(**xb)
                else:
                    out = fn(pad_batch(xb, size))[: len(xb)]
            yield out, xb


def n_samples(X) -> int:
    """The number of samples in ``X`` (a mapping: in its first entry)."""
    if isinstance(X, Mapping):
        return n_samples(next(iter(X.values())))
    return len(X)


def _mean_tokens(X, collator) -> float | None:
    """The mean token count of texts, or of tokenized input's attention mask."""
    if isinstance(X, Mapping):
        mask = X.get("attention_mask")
        return None if mask is None else float(mask.sum(1).float().mean())
    return mean_tokens(X, collator)
