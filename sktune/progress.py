"""What a fit shows while it runs: progress bars, the epoch table, a summary.

``verbose`` decides:

- 0: nothing at all;
- 1 (the default): tqdm progress bars (``tqdm.auto``: a widget in a
  notebook, a text bar in a terminal) over the fit's batches, the prefix
  pass of the cache and long predictions, shown only where a person is
  watching (tqdm's ``disable=None``: not in pipes or CI logs) and removed
  when done (``leave=False``: a grid search does not pile them up); where a
  bar shows, the fit starts with a one-screen summary;
- 2 and up: also skorch's epoch table, the summary and why the cache is off,
  wherever the output goes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from contextlib import contextmanager

from skorch.callbacks import Callback, PrintLog

__all__ = [
    "EpochTable",
    "FitProgress",
    "bar",
    "default_callbacks",
    "fit_summary",
    "no_widget_warning",
    "shows_bar",
]


@contextmanager
def no_widget_warning():
    """Silence tqdm's "IProgress not found" while ``tqdm.auto`` is imported.

    Where ipywidgets is missing, tqdm warns once per process and falls back
    to a text bar, which is what sktune shows anyway. Wrap any import that
    may be the process's first of ``tqdm.auto`` (sktune's bars, transformers).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        yield


def bar(verbose, iterable: Iterable | None = None, **kwargs):
    """A tqdm bar at ``verbose >= 1`` where a person watches, else a silent one.

    In a notebook with ipywidgets a widget, else a text bar (without tqdm's
    warning that ipywidgets is missing).
    """
    with no_widget_warning():
        from tqdm.auto import tqdm

    return tqdm(
        iterable,
        disable=None if verbose and verbose >= 1 else True,
        leave=False,
        dynamic_ncols=True,
        **kwargs,
    )


def shows_bar(verbose) -> bool:
    """Whether a bar made now at ``verbose`` would be displayed."""
    probe = bar(verbose, total=0, delay=float("inf"))  # never drawn
    shown = not probe.disable
    probe.close()
    return shown


class EpochTable(PrintLog):
    """skorch's epoch table, printed from ``verbose=2`` on (1 shows bars)."""

    def _sink(self, text, verbose):
        super()._sink(text, verbose and verbose >= 2)


class FitProgress(Callback):
    """One bar over all training batches of a fit, with epoch and loss.

    The bar opens at the first epoch, sized from the training set and the
    epochs the fit plans (a freeze schedule's stages and a continued
    restart share it), and closes at the end of the fit.
    """

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self._close()

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        if getattr(self, "bar_", None) is not None:
            return
        self.bar_ = bar(net.verbose, unit="batch", desc=type(net).__name__)
        if dataset_train is not None:
            size = net.get_params_for("iterator_train").get(
                "batch_size", net.batch_size
            )
            per_epoch = 1 if size == -1 else math.ceil(len(dataset_train) / size)
            planned = getattr(net, "_fit_stages", None)
            epochs = getattr(planned, "epochs_planned", None) or net.max_epochs
            self.bar_.reset(total=per_epoch * epochs)

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training and getattr(self, "bar_", None) is not None:
            self.bar_.update(1)

    def on_epoch_end(self, net, **kwargs):
        if getattr(self, "bar_", None) is None:
            return
        last = net.history[-1]
        postfix = {"epoch": last["epoch"]}
        for key in ("train_loss", "valid_loss", "valid_acc"):
            if key in last:
                postfix[key] = f"{last[key]:.4g}"
        self.bar_.set_postfix(postfix)  # drawn once an epoch

    def on_train_end(self, net, **kwargs):
        self._close()

    def _close(self):
        bar_ = self.__dict__.pop("bar_", None)
        if bar_ is not None:
            bar_.close()

    def __getstate__(self):
        # A bar does not pickle; a fitted estimator carries none.
        state = dict(self.__dict__)
        state.pop("bar_", None)
        return state


def fit_summary(net, rates: str) -> str:
    """One screen on what ``net``'s fit trains, on which device, how fast.

    ``rates``: the learning rates in effect, formatted.
    """
    network = net._network
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(
        p.numel() for n, p in network.named_parameters() if n in net._trainable
    )
    stages = net._fit_stages
    frozen = stages.frozen_at(1)
    schedule = f", then {stages.depth} (schedule)" if frozen != stages.depth else ""
    if stages.auto and not stages.chosen:
        schedule = (
            f", then fewer by {stages.policy.step} a stage of "
            f"{stages.policy.stage_epochs} epochs while the validation score "
            f"gains (freeze='auto', down to {stages.depth})"
        )
    cache = net.prefix_cache_.info
    if cache.get("enabled"):
        cached = "on: the frozen prefix runs once per sample"
    else:
        cached = f"off ({cache.get('reason')})"
    backbone = net.backbone
    source = backbone if isinstance(backbone, str) else type(backbone).__name__
    adapters = (
        f"; adapters in {len(net.adapted_modules_)} modules"
        if net.adapted_modules_
        else ""
    )
    return "\n".join(
        [
            f"{type(net).__name__} on {source}",
            f"  blocks: {net.n_blocks_}, frozen {frozen}{schedule}{adapters}",
            f"  parameters: {total:,}, trainable {trainable:,} "
            f"({100 * trainable / max(total, 1):.1f}%)",
            f"  learning rates: {rates}",
            f"  cache: {cached}",
            f"  device: {net.device_}, precision {net.precision}",
        ]
    )


def default_callbacks(skorch_defaults, lr_schedule) -> list:
    """skorch's default callbacks, the epoch table (from verbose=2 on) for
    its print log, a progress bar before it and, with an ``lr_schedule``,
    the schedule before both."""
    from .schedules import WarmupDecay

    callbacks = [
        (name, EpochTable() if name == "print_log" else cb)
        for name, cb in skorch_defaults
    ]
    at = next(
        (i for i, (name, _) in enumerate(callbacks) if name == "print_log"),
        len(callbacks),
    )
    callbacks.insert(at, ("progress", FitProgress()))
    if lr_schedule is not None:
        callbacks.insert(at, ("warmup_decay", WarmupDecay()))
    return callbacks
