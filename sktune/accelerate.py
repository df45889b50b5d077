"""One model on many GPUs or machines, through Hugging Face Accelerate.

:class:`AcceleratedFineTuneClassifier` and :class:`AcceleratedFineTuneRegressor`
are the estimators composed with skorch's ``AccelerateMixin``: an
``accelerate.Accelerator`` places the network, shards the training batches
over the processes ``accelerate launch`` starts (data parallel), runs mixed
precision and gathers predictions. sktune's own behaviour stays: every fit
starts from the pristine weights, frozen blocks and the frozen-prefix cache
work as in the plain estimators, the divergence guard stops a non-finite
step, predictions do not depend on their batch, saves are atomic.

Where the two overlap, this module decides (rather than the class order):

- the training step is sktune's, through Accelerate's autocast and
  ``accelerator.backward`` (:class:`sktune.runtime.AcceleratorGuard`), inside
  Accelerate's gradient accumulation; sktune's finiteness check follows;
- mixed precision is the accelerator's (``Accelerator(mixed_precision=
  "bf16")``); ``precision`` stays ``"32"``;
- the network is planned (probe, cut check) on ``accelerator.device``;
- the frozen prefix is computed in every process over all samples (the
  cache must hold every row); training batches are sharded, predictions
  gathered.

``accelerate`` itself is needed only for the ``Accelerator`` you pass.
"""

from __future__ import annotations

from skorch.hf import AccelerateMixin

from ._base import FineTuneMixin
from .estimators import FineTuneClassifier, FineTuneRegressor
from .runtime import AcceleratorGuard

__all__ = ["AcceleratedFineTuneClassifier", "AcceleratedFineTuneRegressor"]


class _AccelerateFineTune(AccelerateMixin):
    """skorch's AccelerateMixin, reconciled with sktune's hooks."""

    def initialize(self):
        with self._skorch_messages():
            return super().initialize()

    def _validate_params(self):
        super()._validate_params()
        if self.precision != "32":
            raise ValueError(
                f"precision={self.precision!r}: with an accelerator, mixed precision "
                "is the accelerator's: Accelerator(mixed_precision='bf16' or 'fp16'); "
                "leave precision='32'."
            )

    @property
    def _compute_device(self):
        return self.accelerator.device

    @property
    def _network(self):
        # A multi-process run wraps the network (DistributedDataParallel).
        return self.accelerator.unwrap_model(self.module_)

    def get_iterator(self, dataset, training=False):
        loader = self.accelerator.prepare(self._loader(dataset, training=training))
        return self._with_bar(loader)

    def _step_guard(self):
        return AcceleratorGuard(self.accelerator)

    # sktune's step through the guard above, not AccelerateMixin's (the
    # same autocast and backward, without the divergence guard).
    train_step_single = FineTuneMixin.train_step_single


_DOC = """{base}, trained through Hugging Face Accelerate.

    Takes every parameter of :class:`sktune.{base}` and those of skorch's
    ``AccelerateMixin``:

    Parameters
    ----------
    accelerator : accelerate.Accelerator
        Places the network and the batches (leave ``device=None``), runs
        mixed precision (``Accelerator(mixed_precision="bf16")``; leave
        ``precision="32"``) and, under ``accelerate launch``, shards the
        training batches over the processes. Shared, not copied, by
        ``clone``.
    unwrap_after_train : bool, default=True
        Unwrap the network after ``fit`` (it then pickles and predicts
        without the accelerator's wrappers).

    See :mod:`sktune.accelerate` for how the two combine.

    Examples
    --------
    >>> from accelerate import Accelerator  # doctest: +SKIP
    >>> from sktune.accelerate import {name}  # doctest: +SKIP
    >>> est = {name}(backbone, accelerator=Accelerator(), freeze=4)  # doctest: +SKIP
    >>> est.fit(X, y).predict(X)  # doctest: +SKIP

    Run the script with ``accelerate launch script.py`` for several GPUs or
    machines; a plain ``python script.py`` trains in one process.
"""


class AcceleratedFineTuneClassifier(_AccelerateFineTune, FineTuneClassifier):
    __doc__ = _DOC.format(
        base="FineTuneClassifier", name="AcceleratedFineTuneClassifier"
    )


class AcceleratedFineTuneRegressor(_AccelerateFineTune, FineTuneRegressor):
    __doc__ = _DOC.format(base="FineTuneRegressor", name="AcceleratedFineTuneRegressor")
