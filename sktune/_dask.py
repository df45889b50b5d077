"""Dask's side of :func:`sktune.share_backbones`: a worker plugin.

Imported only when a ``client`` is passed, so sktune never imports
``distributed`` otherwise.
"""

from __future__ import annotations

import os
import pickle

from distributed.diagnostics.plugin import WorkerPlugin

from .backbones import shared

__all__ = ["SharePlugin", "register", "unregister", "worker_threads"]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(threads_on_host: int) -> int:
    """Torch threads per Dask thread: the cores shared by the host's threads."""
    return max(1, _cores() // max(1, threads_on_host))


class SharePlugin(WorkerPlugin):
    """Delivers pickled backbones to each worker, once, and sets its threads."""

    def __init__(self, payloads: dict, threads, threads_by_host: dict):
        self.payloads = payloads
        self.threads = threads
        self.threads_by_host = threads_by_host

    def setup(self, worker):
        for fp, payload in self.payloads.items():
            # Written by share_backbones in the client process.
            shared.registered(fp, pickle.loads(payload))
        if self.threads is not None:
            import torch

            n = self.threads
            if n == "auto":
                host = worker.address.rpartition(":")[0]
                own = getattr(worker.state, "nthreads", None) or 1
                n = worker_threads(self.threads_by_host.get(host, own))
            torch.set_num_threads(int(n))

    def teardown(self, worker):
        for fp in self.payloads:
            shared.unregistered(fp)


def register(client, payloads: dict, *, threads) -> str:
    """Register the plugin on every worker (and later ones); its name."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025: every worker is listed
        workers = client.scheduler_info()["workers"]
    threads_by_host: dict[str, int] = {}
    for address, info in workers.items():
        host = address.rpartition(":")[0]
        threads_by_host[host] = threads_by_host.get(host, 0) + info.get("nthreads", 1)
    name = f"sktune-share-{os.getpid()}-{id(payloads)}"
    client.register_plugin(SharePlugin(payloads, threads, threads_by_host), name=name)
    return name


def unregister(client, name: str) -> None:
    client.unregister_worker_plugin(name)
