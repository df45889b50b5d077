"""The frozen-prefix cache of one estimator (DESIGN.md, invariant 4).

When the input side of the backbone is frozen and runs in eval mode, its
output for a sample never changes during a fit. :class:`PrefixCache`
computes it once per sample, keeps it in the process-wide store
(:mod:`sktune.cache.store`) under a :class:`CacheKey`, and hands skorch a
dataset of cached rows, so every epoch (and every refit, fold or
grid-search candidate that shares the backbone, the cut and the sample) runs
only the trainable suffix and the head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.photos import Photos
from ..data.text import is_texts
from .split import NoCache, Split
from .store import STORE, FeatureStore, sample_digests

__all__ = [
    "CACHE_DTYPES",
    "CACHE_DTYPE_ACCEPTED",
    "CacheKey",
    "CachedRows",
    "PrefixCache",
    "is_cache_dtype",
    "storage_dtype",
]

CACHE_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
CACHE_DTYPE_ACCEPTED = "None (store as computed), 'float16', 'bfloat16' or 'float32'"


def is_cache_dtype(value) -> bool:
    """Whether ``value`` is a valid ``cache_dtype`` parameter."""
    if value is None:
        return True
    if isinstance(value, torch.dtype):
        return value in CACHE_DTYPES.values()
    return isinstance(value, str) and value in CACHE_DTYPES


def storage_dtype(value) -> torch.dtype | None:
    """The storage precision a valid ``cache_dtype`` names (None: as computed)."""
    return CACHE_DTYPES[value] if isinstance(value, str) else value


@dataclass(frozen=True)
class CacheKey:
    """What makes two prefix outputs of one sample interchangeable.

    Attributes
    ----------
    weights : str
        Fingerprint of the backbone's (pristine) weights and structure.
    cut : tuple
        The split's key: where the backbone is cut.
    kind : str
        The input kind.
    preprocess : tuple or None
        Image normalization and size, and how photos are decoded.
    pooling : str or None
    channels_last : bool
        The memory layout (other kernels, other rounding).
    precision : str
        The compute precision (autocast dtype) of the prefix.
    dtype : str
        The storage precision.
    max_length : int or None
        The text truncation length.
    """

    weights: str
    cut: tuple
    kind: str
    preprocess: tuple | None
    pooling: str | None
    channels_last: bool
    precision: str
    dtype: str
    max_length: int | None


class PrefixCache:
    """Whether, where and how one estimator caches its frozen prefix.

    Built with the network (``prefix_cache_``); holds no data itself: the
    outputs live in the process-wide store.

    Parameters
    ----------
    plan : Split or NoCache
        The verified cut, or why there is none.
    key : CacheKey or None
        The store context of this estimator's prefix outputs.
    setting : "auto", True or False
        The estimator's ``cache``.
    size_mb : float
        The estimator's ``cache_size``: the most one fit may cache.
    row_dtype : torch.dtype
        The precision the network computes rows in (and reads them back at).
    row_numel : int
        Elements of one row; of one token's state for ragged rows.
    stored_dtype : torch.dtype
        The precision rows are stored at.
    store : FeatureStore
        Where rows are kept (the process-wide store).

    Attributes
    ----------
    info : dict
        ``enabled`` (the last fit used the cache), ``reason`` (why not),
        ``computed`` and ``reused``: samples whose prefix output was computed
        or read from the store, over fits and predictions.
    """

    def __init__(
        self,
        plan: Split | NoCache,
        key: CacheKey | None = None,
        *,
        setting="auto",
        size_mb: float = 1024,
        row_dtype: torch.dtype = torch.float32,
        row_numel: int = 0,
        stored_dtype: torch.dtype = torch.float32,
        store: FeatureStore = STORE,
    ):
        self.plan = plan
        self.key = key
        self.setting = setting
        self.size_mb = size_mb
        self.row_dtype = row_dtype
        self.row_numel = row_numel
        self.stored_dtype = stored_dtype
        self.store = store
        self.info = {"enabled": False, "reason": None, "computed": 0, "reused": 0}

    def __getstate__(self):
        # The store is the process's own; a pickle does not carry it.
        state = dict(self.__dict__)
        del state["store"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, store=STORE)

    @property
    def split(self) -> Split | None:
        """The cut, or None where there is none."""
        return self.plan if isinstance(self.plan, Split) else None

    def why_not(
        self,
        n_samples: int,
        *,
        custom_data: bool = False,
        tokens_per_sample: float | None = None,
        changing: str | None = None,
    ) -> str | None:
        """Why ``n_samples`` samples would not run on cached outputs (None: they would).

        Parameters
        ----------
        n_samples : int
        custom_data : bool
            A custom dataset or collate function is in use: its transforms
            would be skipped, or handed cached outputs.
        tokens_per_sample : float, optional
            The mean token count of ragged rows (texts), for the size check.
        changing : str, optional
            What changes the input every epoch (``"augment='light'"``): the
            blocks that see it cannot be cached.
        """
        if self.setting is False:
            return "cache=False"
        if isinstance(self.plan, NoCache):
            return self.plan.reason
        if changing is not None:
            return f"{changing} changes the input every epoch"
        if custom_data:
            return "a custom dataset or collate_fn may augment the data"
        megabytes = n_samples * self._row_bytes(tokens_per_sample) / 2**20
        if megabytes > self.size_mb:
            return (
                f"the prefix outputs of {n_samples} samples need {megabytes:.0f} MB, "
                f"more than cache_size={self.size_mb} MB"
            )
        return None

    def start_fit(
        self, reason: str | None, report: Callable[[str], None] | None
    ) -> bool:
        """Record whether a fit runs on cached outputs; ``cache=True`` insists.

        Parameters
        ----------
        reason : str or None
            What :meth:`why_not` said.
        report : callable, optional
            Told why the cache is off under ``cache="auto"`` (verbose fits).

        Raises
        ------
        ValueError
            With ``cache=True`` when the prefix cannot be cached.
        """
        self.info.update(enabled=reason is None, reason=reason)
        if reason is not None and self.setting is True:
            raise ValueError(
                f"cache=True, but the frozen prefix cannot be cached: {reason}."
            )
        if reason is not None and report is not None and self.setting == "auto":
            report(f"Frozen-prefix cache off: {reason}.")
        return reason is None

    def _row_bytes(self, tokens_per_sample: float | None) -> float:
        per_row = self.row_numel * self.stored_dtype.itemsize
        if self.split is not None and self.split.ragged:
            per_row *= tokens_per_sample or 1.0
        return per_row

    def outputs(
        self,
        X,
        run: Callable[[object], Iterable[tuple[torch.Tensor, object]]],
        *,
        progress: Callable[[Iterable], Iterable] | None = None,
    ):
        """The prefix outputs of validated input ``X``, computed once per sample.

        Parameters
        ----------
        X : array, texts (:func:`~sktune.data.text.as_texts`) or mapping of arrays
        run : callable
            ``run(X, indices)`` yields ``(prefix outputs, inputs)`` per
            inference batch of the samples ``indices`` of ``X``, in that
            order (the network's prefix, no gradients).
        progress : callable, optional
            Wraps the iterable of batches of the prefix pass (a progress bar).

        Returns
        -------
        The rows, held as the split holds them (:meth:`Split.stack`).
        """
        split = self.split
        digests = sample_digests(X)
        rows = self.store.lookup(self.key, digests)
        missing = [i for i, row in enumerate(rows) if row is None]
        self.info["computed"] += len(missing)
        self.info["reused"] += len(rows) - len(missing)
        if not missing:
            return split.stack(rows)
        if is_texts(X):
            # Length buckets: sorted by length, a batch pads to texts of
            # about its own length instead of the longest of a random mix.
            missing.sort(key=lambda i: len(str(X[i])))
        # The runner draws the missing samples by index, batch by batch: X
        # is never copied to be read.
        batches = run(X, missing)
        batches = progress(batches) if progress else batches
        if split.ragged or len(missing) < len(rows):
            computed = [
                row for out, inputs in batches for row in self._rows(out, inputs)
            ]
            self.store.insert(self.key, [digests[i] for i in missing], computed)
            for i, row in zip(missing, computed, strict=True):
                rows[i] = row
            return split.stack(rows)
        # Nothing cached yet: each batch is written into the one tensor the
        # fit reads, and the store keeps views of its rows (no second copy).
        held, done = None, 0
        for out, inputs in batches:
            batch = torch.stack(self._rows(out, inputs))
            if held is None:
                held = batch.new_empty((len(rows), *batch.shape[1:]))
            index = torch.as_tensor(missing[done : done + len(batch)])
            held[index] = batch
            done += len(batch)
        self.store.insert(self.key, digests, list(held))
        return held

    def _rows(self, outputs, inputs) -> list[torch.Tensor]:
        """One stored row per sample of a batch, on the CPU, at storage precision."""
        return [
            row.to("cpu", self.stored_dtype) if row.is_floating_point() else row.cpu()
            for row in self.split.rows(outputs, inputs)
        ]

    def dataset(self, rows, y=None, lengths: Callable[[], list[int]] | None = None):
        """A dataset of cached rows (and targets) for skorch's loops."""
        return CachedRows(self.split, rows, y, self.row_dtype, lengths)


class CachedRows(Dataset):
    """Cached prefix outputs and targets, a whole batch at a time.

    The ``DataLoader`` hands ``__getitems__`` all indices of a batch (also
    through a ``Subset``, e.g. skorch's validation split): the split gathers
    them in one operation and casts rows stored at a lower precision back to
    the network's, a batch at a time. The sampler, and so the batch order,
    is the ``DataLoader``'s own; ``collate_fn`` passes the ready batch on.
    Batches are ``({"cached": rows}, y)``: the network's forward takes them
    as its ``cached`` argument.
    """

    def __init__(self, split: Split, rows, y=None, dtype=None, lengths=None):
        self.split = split
        self.rows = rows
        self.y = None if y is None else torch.as_tensor(np.asarray(y))
        self.dtype = dtype
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        """A batch of the one sample ``i``."""
        return self.__getitems__([i])

    def __getitems__(self, indices):
        cached = self.split.gather(self.rows, indices, self.dtype)
        if self.y is None:
            y = torch.zeros(len(indices), dtype=torch.long)
        else:
            y = self.y[torch.as_tensor(indices, dtype=torch.long)]
        return {"cached": cached}, y

    @staticmethod
    def collate_fn(batch):
        """Batches arrive ready from :meth:`__getitems__`."""
        return batch

    def lengths(self) -> list[int] | None:
        """Token counts of the texts the rows came from, if known."""
        return self._lengths() if self._lengths is not None else None


def _take(X, indices):
    if isinstance(X, Photos):
        return X.take(indices)
    if isinstance(X, Mapping):
        return {k: v[indices] for k, v in X.items()}
    if isinstance(X, list):
        return [X[i] for i in indices]
    return X[indices]
