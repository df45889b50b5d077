"""Searches over many processes or machines: the backbone travels once.

A search ships one pickled estimator per task (a candidate on a fold). What
that costs depends on the backbone:

- a string spec or ``Backbone(spec, weights=PATH)`` pickles as the spec
  (well under a kilobyte); each worker process loads the model once and
  shares it between its tasks (unpickled copies of one spec are one
  ``Backbone``, see :func:`sktune.backbones.backbone.cached_spec`);
- a module, or a ``Backbone`` around one, pickles whole (its weights), once
  per task, unless the search runs inside :func:`share_backbones`: there it
  pickles as a reference of a few hundred bytes, and the module itself
  travels once per machine (a snapshot file that worker processes on the
  same machine load) or, with a Dask ``client``, once per worker (a worker
  plugin, for clusters without a shared disk).

The registry that references resolve from, and the reference a shared
backbone pickles as, live beside :class:`~sktune.Backbone` in
:mod:`sktune.backbones.shared`; this module opens the block and delivers to
Dask workers.

Each worker process keeps its own frozen-prefix cache: candidates that share
a cut (the same backbone and freeze depth) reuse it only when they run in
the same process (see the README, "Running on a cluster").
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from .backbones import Backbone, shared

__all__ = ["reference", "share_backbones"]


def reference(obj):
    """A by-reference stand-in for ``obj`` inside ``share_backbones``, else None.

    ``obj`` is an estimator's ``backbone`` parameter: an ``nn.Module`` or a
    :class:`~sktune.Backbone` around one (spec backbones pickle small anyway).
    """
    if not shared.active():
        return None
    found = _shareable(obj)
    return None if found is None else shared.reference(found[1], found[0])


def _shareable(obj):
    """("module" or "backbone", a Backbone) for a module backbone, else None."""
    if isinstance(obj, Backbone) and isinstance(obj.source, nn.Module):
        return "backbone", obj
    if isinstance(obj, nn.Module):
        return "module", Backbone(obj)
    return None


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
    plugin = None
    try:
        with shared.session(path) as session:
            published = []
            for backbone in backbones:
                found = _shareable(backbone)
                if found is None:
                    raise TypeError(
                        f"share_backbones takes nn.Module backbones or Backbone objects "
                        f"around one (spec backbones travel as their spec); got "
                        f"{type(backbone).__name__}."
                    )
                published.append(shared.publish(session, found[1]))
            if client is not None:
                from ._dask import register

                plugin = register(
                    client,
                    {fp: session.payloads[fp] for fp in published},
                    threads=threads,
                )
            yield session.nbytes
    finally:
        if plugin is not None:
            from ._dask import unregister

            unregister(client, plugin)
        if own:
            for file in path.iterdir():
                file.unlink()
            path.rmdir()
