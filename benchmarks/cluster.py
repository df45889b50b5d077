"""A freeze-depth search serial, on 2 local processes and on a Dask LocalCluster.

EfficientNet-Lite0 (ImageNet weights) on the 244 ant/bee photos of
../shared/data (64x64), GridSearchCV over freeze depths with 3 folds, 3
epochs a fit. Reports:

- the search's wall time serial (one process, torch's threads), with joblib's
  loky backend (``n_jobs=2``: each process gets cores / 2 torch threads) and
  on a ``distributed.LocalCluster`` (2 worker processes x 1 thread), each with
  the same cv scores;
- the bytes a search ships per task (the pickled estimator of one candidate
  on one fold) for a spec backbone, a module backbone, and a module backbone
  inside ``sktune.share_backbones()``, for 3 and for 12 candidates: flat in
  the number of candidates, and far below the weights except for a module
  pickled whole.

    python benchmarks/cluster.py
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, ParameterGrid

sys.path.insert(0, str(Path(__file__).parent))
from common import ants_bees, efficientnet

from sktune import FineTuneClassifier, clear_cache, share_backbones

GRID_3 = {"freeze": ["all", 6, 4]}
GRID_12 = {"freeze": ["all", 6, 4], "lr": [1e-3, 3e-4, 1e-4, 3e-5]}


def estimator(backbone) -> FineTuneClassifier:
    return FineTuneClassifier(backbone, max_epochs=3, random_state=0, verbose=0)


def timed_search(backbone, X, y, **kwargs):
    clear_cache()
    start = time.perf_counter()
    search = GridSearchCV(estimator(backbone), GRID_3, cv=3, **kwargs).fit(X, y)
    return time.perf_counter() - start, search.cv_results_["mean_test_score"]


def bytes_per_task(backbone, grid) -> float:
    """Mean size of one task's pickled estimator over a grid's candidates."""
    sizes = [
        len(pickle.dumps(clone(estimator(backbone)).set_params(**params)))
        for params in ParameterGrid(grid)
    ]
    return float(np.mean(sizes))


def main() -> None:
    import distributed

    X, y = ants_bees()
    spec = efficientnet()
    module = spec.module()
    weights_mb = sum(p.numel() * p.element_size() for p in module.parameters()) / 1e6
    print(f"torch threads in this process: {torch.get_num_threads()}")

    rows = []
    seconds, serial = timed_search(spec, X, y)
    rows.append(("serial, one process", seconds, serial))
    with share_backbones():
        seconds, scores = timed_search(module, X, y, n_jobs=2)
    rows.append(("joblib loky, n_jobs=2, module + share_backbones()", seconds, scores))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(lambda: None)  # workers up before the clock starts
        with joblib.parallel_config("dask"):
            seconds, scores = timed_search(spec, X, y)
            rows.append(("Dask LocalCluster 2x1, spec", seconds, scores))
            with share_backbones(module, client=client):
                seconds, scores = timed_search(module, X, y)
            rows.append(
                (
                    "Dask LocalCluster 2x1, module + share_backbones(client)",
                    seconds,
                    scores,
                )
            )

    print(
        f"\nGridSearchCV, {len(GRID_3['freeze'])} freeze depths x 3 folds, 3 epochs\n"
    )
    print("| engine | wall s | mean cv scores | same as serial |")
    print("|---|---|---|---|")
    for name, seconds, scores in rows:
        same = bool(np.array_equal(scores, serial))
        print(f"| {name} | {seconds:.1f} | {np.round(scores, 3).tolist()} | {same} |")

    print(f"\nBytes shipped per task (weights: {weights_mb:.1f} MB)\n")
    print("| backbone | 3 candidates | 12 candidates |")
    print("|---|---|---|")
    kinds = [("Backbone(spec, weights=path)", spec), ("nn.Module", module)]
    for name, backbone in kinds:
        sizes = [bytes_per_task(backbone, g) for g in (GRID_3, GRID_12)]
        print(f"| {name} | {sizes[0]:,.0f} | {sizes[1]:,.0f} |")
    with share_backbones() as shipped:
        sizes = [bytes_per_task(module, g) for g in (GRID_3, GRID_12)]
    print(f"| nn.Module inside share_backbones() | {sizes[0]:,.0f} | {sizes[1]:,.0f} |")
    print(
        f"\nshare_backbones() shipped the module once: "
        f"{sum(shipped.values()) / 1e6:.1f} MB per machine (or per Dask worker)."
    )


if __name__ == "__main__":
    main()
