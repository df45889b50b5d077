"""Backbones shared by reference: the process registry and what a reference pickles as.

Inside :func:`sktune.share_backbones` a backbone around an ``nn.Module`` pickles
as a :class:`_Reference` (its weight fingerprint and a snapshot path, a few
hundred bytes) instead of its weights. The block's :class:`Session` writes each
backbone once to a snapshot file; unpickling a reference returns the object
this process has registered under its fingerprint (the original in the
process that published it, a backbone delivered by the Dask worker plugin), or
loads the snapshot once.

This module knows nothing of :class:`~sktune.Backbone` beyond its fields
(``source``, ``weights``, ``pretrained``, ``kwargs``): a snapshot names the
class it rebuilds, so ``Backbone`` can ask for its own reference without an
import cycle.
"""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path

from ..cache.store import fingerprint

__all__ = [
    "Session",
    "active",
    "publish",
    "reference",
    "registered",
    "session",
    "unregistered",
]

# Backbones shared by reference, by weight fingerprint: what a reference
# resolves to in this process (published here, delivered by a Dask plugin,
# or loaded from a snapshot file).
_REGISTRY: dict[str, object] = {}
# The share_backbones() sessions open in this process (pickling may run in
# joblib's dispatch threads, so this is process-wide, not thread-local).
_SESSIONS: list[Session] = []
_LOCK = threading.RLock()


def _dumps(obj) -> bytes:
    # cloudpickle (joblib's and Dask's pickler): modules whose class lives in
    # a script or notebook (__main__) reach workers too.
    try:
        import cloudpickle
    except ImportError:
        import pickle as cloudpickle
    return cloudpickle.dumps(obj)


class Session:
    """One ``share_backbones()`` block: where snapshots go, whom to tell."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.paths: dict[str, str] = {}  # fingerprint -> snapshot file
        self.payloads: dict[str, bytes] = {}
        self.nbytes: dict[str, int] = {}
        self.registered: list[str] = []  # entries to drop at the end

    def snapshot(self, fp: str, backbone) -> str:
        """Make ``backbone`` (a Backbone) resolvable by ``fp`` on workers, once."""
        path = self.paths.get(fp)
        if path is not None:
            return path
        # The module, its class and how to wrap it: a Backbone is rebuilt once
        # per process on the other side (pickling it here would recurse).
        payload = _dumps(
            (
                type(backbone),
                backbone.source,
                backbone.weights,
                backbone.pretrained,
                backbone.kwargs,
            )
        )
        target = self.directory / f"{fp[:32]}.pkl"
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, target)
        self.payloads[fp] = payload
        self.nbytes[fp] = len(payload)
        self.paths[fp] = path = os.fspath(target)
        return path


@contextmanager
def session(directory: Path):
    """Open a :class:`Session` for the block; at its end, drop what it registered."""
    opened = Session(directory)
    with _LOCK:
        _SESSIONS.append(opened)
    try:
        yield opened
    finally:
        with _LOCK:
            _SESSIONS.remove(opened)
            for fp in opened.registered:
                _REGISTRY.pop(fp, None)


class _Reference:
    """A shared backbone in a pickle: its fingerprint and a snapshot path."""

    def __init__(self, fp: str, path: str, kind: str):
        self.fp, self.path, self.kind = fp, path, kind

    def __reduce__(self):
        return _resolve, (self.fp, self.path, self.kind)


def active() -> bool:
    """Whether a ``share_backbones()`` block is open in this process."""
    with _LOCK:
        return bool(_SESSIONS)


def reference(backbone, kind: str = "backbone"):
    """A by-reference stand-in for ``backbone`` inside ``share_backbones``, else None.

    ``backbone`` is a :class:`~sktune.Backbone` around an ``nn.Module``.
    ``kind="module"``: the reference unpickles to the module itself (the
    estimator's ``backbone`` parameter was the module); else to the Backbone.
    """
    with _LOCK:
        if not _SESSIONS:
            return None
        current = _SESSIONS[-1]
    fp = publish(current, backbone)
    return _Reference(fp, current.paths[fp], kind)


def publish(current: Session, backbone) -> str:
    """Register ``backbone`` here and snapshot it for workers; its key."""
    fp = fingerprint(backbone.source)
    if backbone.weights is not None or backbone.kwargs:
        extra = repr((os.fspath(backbone.weights or ""), backbone.kwargs))
        fp = f"{fp}-{hashlib.sha256(extra.encode()).hexdigest()[:16]}"
    with _LOCK:
        if fp not in _REGISTRY:
            _REGISTRY[fp] = backbone  # this process resolves to the original
            current.registered.append(fp)
        current.snapshot(fp, _REGISTRY[fp])
    return fp


def _resolve(fp: str, path: str, kind: str):
    """Unpickle a reference: the registered object, else the snapshot's."""
    with _LOCK:
        obj = _REGISTRY.get(fp)
        if obj is None:
            if not os.path.isfile(path):
                raise RuntimeError(
                    f"This process received a backbone shared by reference "
                    f"(fingerprint {fp[:12]}) but neither holds it nor can read its "
                    f"snapshot {path!r} (another machine?). On a Dask cluster pass "
                    "the backbone and the client: share_backbones(module, client=client); or use a Backbone spec or "
                    "weights path that every worker can load."
                )
            import pickle

            # Our own snapshot, written by share_backbones into a private
            # directory (mode 0700) of this machine.
            with open(path, "rb") as f:
                obj = _rebuild(pickle.load(f))
            _REGISTRY[fp] = obj
    return obj.source if kind == "module" else obj


def _rebuild(payload):
    cls, module, weights, pretrained, kwargs = payload
    return cls(module, weights=weights, pretrained=pretrained, **kwargs)


def registered(fp: str, payload) -> None:
    """Register a delivered backbone (the Dask worker plugin's setup)."""
    with _LOCK:
        if fp not in _REGISTRY:
            _REGISTRY[fp] = _rebuild(payload)


def unregistered(fp: str) -> None:
    """Drop a delivered backbone (the Dask worker plugin's teardown)."""
    with _LOCK:
        _REGISTRY.pop(fp, None)
