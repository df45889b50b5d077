"""The process-wide store of prefix outputs, its budget, and what keys it.

Prefix outputs are stored per sample under a context (a
:class:`sktune.cache.prefix.CacheKey`: the backbone's weight fingerprint,
the cut, the preprocessing, ...) and a digest of the sample, so refits,
cross-validation folds and grid-search candidates that share a backbone and
a cut reuse each other's work. The store has one memory budget, its own
(:func:`set_cache_budget`); least recently used contexts are evicted beyond
it. :func:`clear_cache` frees everything.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..data.photos import Photos

__all__ = [
    "DEFAULT_BUDGET_MB",
    "STORE",
    "FeatureStore",
    "clear_cache",
    "fingerprint",
    "sample_digests",
    "set_cache_budget",
]

#: The store's budget unless :func:`set_cache_budget` says otherwise.
DEFAULT_BUDGET_MB = 1024


class FeatureStore:
    """Per-sample prefix outputs, shared by every estimator of the process.

    Parameters
    ----------
    budget_mb : float
        Memory budget in megabytes. Inserting beyond it evicts the least
        recently used contexts, never the one being inserted.
    """

    def __init__(self, budget_mb: float = DEFAULT_BUDGET_MB):
        self._lock = threading.Lock()
        self._contexts: OrderedDict[object, dict[bytes, torch.Tensor]] = OrderedDict()
        self._bytes: dict[object, int] = {}
        self.budget_mb = budget_mb

    def lookup(self, context, digests: list[bytes]) -> list[torch.Tensor | None]:
        """The stored row of each digest under ``context`` (None if absent)."""
        with self._lock:
            rows = self._contexts.get(context)
            if rows is None:
                return [None] * len(digests)
            self._contexts.move_to_end(context)
            return [rows.get(d) for d in digests]

    def insert(self, context, digests, rows) -> None:
        """Store ``rows`` (one tensor per sample) under ``context``."""
        with self._lock:
            entries = self._contexts.setdefault(context, {})
            self._contexts.move_to_end(context)
            for d, row in zip(digests, rows, strict=True):
                if d not in entries:
                    entries[d] = row
                    size = row.numel() * row.element_size()
                    self._bytes[context] = self._bytes.get(context, 0) + size
            self._evict(keep=context)

    def _evict(self, keep=None) -> None:
        budget = self.budget_mb * 2**20
        while self._contexts and sum(self._bytes.values()) > budget:
            oldest = next(iter(self._contexts))
            if oldest == keep:
                if len(self._contexts) == 1:
                    break
                self._contexts.move_to_end(oldest)
                continue
            del self._contexts[oldest]
            del self._bytes[oldest]

    def set_budget(self, megabytes: float) -> float:
        """Set the budget in megabytes (evicting now if over); return the old one."""
        if (
            isinstance(megabytes, bool)
            or not isinstance(megabytes, (int, float))
            or not megabytes >= 0
        ):
            raise ValueError(
                f"megabytes={megabytes!r} is not valid; use a non-negative number of "
                "megabytes (0 keeps nothing)."
            )
        with self._lock:
            old, self.budget_mb = self.budget_mb, float(megabytes)
            self._evict()
        return old

    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return sum(self._bytes.values())

    def clear(self) -> None:
        """Drop every stored output."""
        with self._lock:
            self._contexts.clear()
            self._bytes.clear()


STORE = FeatureStore()


def clear_cache() -> None:
    """Free every prefix output the frozen-prefix cache holds in this process.

    Fitted estimators stay usable: a later fit or prediction computes what
    it needs again.

    Examples
    --------
    >>> import sktune
    >>> sktune.clear_cache()
    """
    STORE.clear()


def set_cache_budget(megabytes: float) -> float:
    """Set the memory budget of the frozen-prefix cache; return the previous one.

    The budget belongs to the process-wide store that every estimator shares
    (default :data:`DEFAULT_BUDGET_MB`, 1024 MB). Beyond it, the outputs of
    the least recently used backbone and cut are dropped. An estimator's
    ``cache_size`` bounds what one fit may cache, not the store.

    Parameters
    ----------
    megabytes : float
        The new budget, in MB (non-negative; 0 keeps nothing).

    Returns
    -------
    float
        The budget before this call, in MB.

    Examples
    --------
    >>> import sktune
    >>> previous = sktune.set_cache_budget(512)
    >>> _ = sktune.set_cache_budget(previous)
    """
    return STORE.set_budget(megabytes)


# -- keys -------------------------------------------------------------

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FINGERPRINT_LOCK = threading.Lock()


def fingerprint(module: nn.Module) -> str:
    """A digest of a module's weights, buffers and structure.

    Memoized per module object while no tensor of it changes: in-place
    updates bump a tensor's version counter, and a replaced tensor changes
    identity, so a stale digest is never returned.
    """
    state = module.state_dict(keep_vars=True)
    stamp = tuple((k, id(t), t._version) for k, t in state.items())
    with _FINGERPRINT_LOCK:
        cached = _FINGERPRINTS.get(module)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    # SHA-256: CPUs with SHA extensions hash it twice as fast as BLAKE2b.
    digest = hashlib.sha256(repr(module).encode())
    for key, tensor in state.items():
        digest.update(key.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str((data.dtype, tuple(data.shape))).encode())
        if data.numel():
            # A uint8 view, hashed through the buffer protocol: no byte copy of
            # what may be a large embedding matrix.
            digest.update(data.view(torch.uint8).numpy())
    value = digest.hexdigest()
    with _FINGERPRINT_LOCK:
        _FINGERPRINTS[module] = (stamp, value)
    return value


def sample_digests(X) -> list[bytes]:
    """One digest per sample of an array, a list of texts, a dict of arrays
    or photos (:meth:`sktune.data.photos.Photos.digests`)."""
    if isinstance(X, Photos):
        return X.digests()
    if isinstance(X, dict):
        parts = [sample_digests(v) for _, v in sorted(X.items())]
        return [
            hashlib.blake2b(b"".join(p), digest_size=16).digest()
            for p in zip(*parts, strict=True)
        ]
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if isinstance(X, np.ndarray) and X.dtype != object:
        X = np.ascontiguousarray(X)
        head = str((X.dtype, X.shape[1:])).encode()
        return [
            hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in X
        ]
    return [hashlib.blake2b(repr(item).encode(), digest_size=16).digest() for item in X]
