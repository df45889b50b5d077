"""Seeds: one ``random_state`` makes a fit reproducible, the global RNGs untouched.

A fit's seeded section (head and lazy-layer initialization, the validation
split) draws from torch and numpy seeded with the fit's seed, inside a fork
of the global RNG state that is restored afterwards. Each epoch then
reseeds from ``(seed, epoch)``, so a fit resumed from a checkpoint replays
the epochs it missed exactly.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["FitSeeds", "epoch_seed", "fit_seeds", "seed_of", "seeded"]

# The global torch/numpy RNGs are process-wide: seeded fits in two threads
# would draw from one stream. Seeded sections take this lock so each fit sees
# only its own seed (an RLock, so a fit inside a callback of a fit works).
_RNG_LOCK = threading.RLock()


def seed_of(random_state) -> int | None:
    """The integer seed of a valid ``random_state`` (None: unseeded).

    A numpy ``RandomState`` draws one, as scikit-learn estimators do.
    """
    if random_state is None:
        return None
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    return int(random_state)


@contextmanager
def seeded(seed: int | None, *, cuda: bool = False):
    """Seed torch and numpy inside; restore their global states after.

    Parameters
    ----------
    seed : int or None
        None leaves the RNGs alone.
    cuda : bool
        Also fork (and restore) the CUDA generators of every visible device.
    """
    if seed is None:
        yield
        return
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


class FitSeeds(NamedTuple):
    """The seeds of one training run: weights (head, lazy layers) and data order.

    ``data`` also seeds dropout: each epoch reseeds from ``(data, epoch)``.
    """

    init: int | None
    data: int | None


def fit_seeds(random_state, n_runs: int = 1) -> list[FitSeeds]:
    """The seeds of ``n_runs`` runs (restarts) of a fit with ``random_state``.

    The first run uses the seed itself for both; later runs derive two
    independent seeds from ``(seed, run)``. Without a seed a single run is
    unseeded, and restarts draw a fresh base seed, so they still differ.
    """
    seed = seed_of(random_state)
    if seed is None:
        if n_runs == 1:
            return [FitSeeds(None, None)]
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    runs = [FitSeeds(seed, seed)]
    for run in range(1, n_runs):
        init, data = np.random.SeedSequence([seed, run]).generate_state(2)
        runs.append(FitSeeds(int(init), int(data)))
    return runs


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of epoch ``epoch`` of a fit seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
