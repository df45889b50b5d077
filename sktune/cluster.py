"""Searches over many processes or machines: the backbone travels once.

A search ships one pickled estimator per task (a candidate on a fold). What
that costs depends on the backbone:

- a string spec or ``Backbone(spec, weights=PATH)`` pickles as the spec
  (well under a kilobyte); each worker process loads the model once and
  shares it between its tasks (unpickled copies of one spec are one
  ``Backbone``, see :func:`sktune.backbones.specs.cached_spec`);
- a module, or a ``Backbone`` around one, pickles whole (its weights), once
  per task, unless the search runs inside :func:`share_backbones`: there it
  pickles as a reference of a few hundred bytes, and the module itself
  travels once per machine (a snapshot file that worker processes on the
  same machine load) or, with a Dask ``client``, once per worker (a worker
  plugin, for clusters without a shared disk).

Each worker process keeps its own frozen-prefix cache: candidates that share
a cut (the same backbone and freeze depth) reuse it only when they run in
the same process (see the README, "Running on a cluster").
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from torch import nn

__all__ = ["share_backbones"]

# Backbones shared by reference, by weight fingerprint: what a reference
# resolves to in this process (published here, delivered by a Dask plugin,
# or loaded from a snapshot file).
_REGISTRY: dict[str, object] = {}
# The share_backbones() sessions open in this process (pickling may run in
# joblib's dispatch threads, so this is process-wide, not thread-local).
_SESSIONS: list[_Session] = []
_LOCK = threading.RLock()


def _dumps(obj) -> bytes:
    # cloudpickle (joblib's and Dask's pickler): modules whose class lives in
    # a script or notebook (__main__) reach workers too.
    try:
        import cloudpickle
    except ImportError:
        import pickle as cloudpickle
    return cloudpickle.dumps(obj)


class _Session:
    """One ``share_backbones()`` block: where snapshots go, whom to tell."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.paths: dict[str, str] = {}  # fingerprint -> snapshot file
        self.payloads: dict[str, bytes] = {}
        self.nbytes: dict[str, int] = {}
        self.registered: list[str] = []  # entries to drop at the end

    def publish(self, fp: str, backbone) -> str:
        """Make ``backbone`` (a Backbone) resolvable by ``fp`` on workers, once."""
        path = self.paths.get(fp)
        if path is not None:
            return path
        # The module and how to wrap it: a Backbone is rebuilt once per
        # process on the other side (pickling it here would recurse).
        payload = _dumps(
            (backbone.source, backbone.weights, backbone.pretrained, backbone.kwargs)
        )
        target = self.directory / f"{fp[:32]}.pkl"
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, target)
        self.payloads[fp] = payload
        self.nbytes[fp] = len(payload)
        self.paths[fp] = path = os.fspath(target)
        return path


class _Reference:
    """A shared backbone in a pickle: its fingerprint and a snapshot path."""

    def __init__(self, fp: str, path: str, kind: str):
        self.fp, self.path, self.kind = fp, path, kind

    def __reduce__(self):
        return _resolve, (self.fp, self.path, self.kind)


def reference(obj):
    """A by-reference stand-in for ``obj`` inside ``share_backbones``, else None.

    ``obj`` is an estimator's ``backbone`` parameter: an ``nn.Module`` or a
    :class:`~sktune.Backbone` around one (spec backbones pickle small anyway).
    """
    with _LOCK:
        if not _SESSIONS:
            return None
        session = _SESSIONS[-1]
    shared = _shareable(obj)
    if shared is None:
        return None
    kind, backbone = shared
    fp = _publish(session, backbone)
    return _Reference(fp, session.paths[fp], kind)


def _shareable(obj):
    """("module" or "backbone", a Backbone) for a module backbone, else None."""
    from .backbones import Backbone

    if isinstance(obj, Backbone) and isinstance(obj.source, nn.Module):
        return "backbone", obj
    if isinstance(obj, nn.Module):
        return "module", Backbone(obj)
    return None


def _publish(session: _Session, backbone) -> str:
    """Register ``backbone`` here and snapshot it for workers; its key."""
    from .cache import fingerprint

    fp = fingerprint(backbone.source)
    if backbone.weights is not None or backbone.kwargs:
        extra = repr((os.fspath(backbone.weights or ""), backbone.kwargs))
        fp = f"{fp}-{hashlib.sha256(extra.encode()).hexdigest()[:16]}"
    with _LOCK:
        if fp not in _REGISTRY:
            _REGISTRY[fp] = backbone  # this process resolves to the original
            session.registered.append(fp)
        session.publish(fp, _REGISTRY[fp])
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
    from .backbones import Backbone

    module, weights, pretrained, kwargs = payload
    return Backbone(module, weights=weights, pretrained=pretrained, **kwargs)


def registered(fp: str, payload) -> None:
    """Register a delivered backbone (the Dask worker plugin's setup)."""
    with _LOCK:
        if fp not in _REGISTRY:
            _REGISTRY[fp] = _rebuild(payload)


def unregistered(fp: str) -> None:
    with _LOCK:
        _REGISTRY.pop(fp, None)


@contextmanager
def share_backbones(*backbones, client=None, threads="auto", directory=None):
    """Ship module backbones to worker processes once, not once per task.

    Inside the block, pickling an estimator whose backbone is an
    ``nn.Module`` (or a :class:`~sktune.Backbone` around one) writes a
    reference of a few hundred bytes instead of the weights. The module is
    written once to a snapshot file in a private temporary directory, which
    worker processes on this machine (joblib's loky processes, a Dask
    ``LocalCluster``) load once each. The ``backbones`` named here are also
    sent once to every worker of a Dask ``client``'s cluster, so workers on
    other machines get them without a shared disk. Spec backbones need none
    of this: they pickle as the spec and each worker loads them once.

    Parameters
    ----------
    *backbones : nn.Module or Backbone
        Backbones to publish now (and, with a ``client``, to deliver to every
        worker, including workers that join later). Others are published
        when first pickled, to this machine's workers only.
    client : dask.distributed.Client, optional
        The Dask cluster to deliver ``backbones`` to and whose workers'
        torch threads to set.
    threads : "auto", int or None, default="auto"
        With a ``client``: torch's intra-op threads on each Dask worker.
        "auto": the machine's cores divided among the threads of all Dask
        workers on it (so threads x workers <= cores); None: leave them
        (Dask starts workers with ``OMP_NUM_THREADS=1``). joblib's local
        processes already get cores / ``n_jobs`` threads each
        (``joblib.parallel_config(inner_max_num_threads=...)`` overrides).
    directory : str or path-like, optional
        Where the snapshots go (default: a new private temporary directory,
        removed at the end of the block).

    Yields
    ------
    dict
        ``{fingerprint: bytes}`` of each backbone shipped, filled as
        backbones are published.

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV
    >>> search = GridSearchCV(clf, {"freeze": [0, 2, 4]}, n_jobs=2)  # doctest: +SKIP
    >>> with sktune.share_backbones():  # doctest: +SKIP
    ...     search.fit(X, y)  # each process loads the backbone once
    >>> import joblib  # doctest: +SKIP
    >>> with sktune.share_backbones(module, client=client):  # doctest: +SKIP
    ...     with joblib.parallel_config("dask"):
    ...         search.fit(X, y)  # each Dask worker receives it once
    """
    own = directory is None
    path = Path(tempfile.mkdtemp(prefix="sktune-backbones-") if own else directory)
    path.mkdir(parents=True, exist_ok=True)
    session = _Session(path)
    plugin = None
    with _LOCK:
        _SESSIONS.append(session)
    try:
        published = []
        for backbone in backbones:
            shared = _shareable(backbone)
            if shared is None:
                raise TypeError(
                    f"share_backbones takes nn.Module backbones or Backbone objects "
                    f"around one (spec backbones travel as their spec); got "
                    f"{type(backbone).__name__}."
                )
            published.append(_publish(session, shared[1]))
        if client is not None:
            from ._dask import register

            plugin = register(
                client,
                {fp: session.payloads[fp] for fp in published},
                threads=threads,
            )
        yield session.nbytes
    finally:
        with _LOCK:
            _SESSIONS.remove(session)
            for fp in session.registered:
                _REGISTRY.pop(fp, None)
        if plugin is not None:
            from ._dask import unregister

            unregister(client, plugin)
        if own:
            for file in path.iterdir():
                file.unlink()
            path.rmdir()
