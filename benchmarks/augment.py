"""Augmentation on photos: does ``augment`` help fine-tuning a small set?

EfficientNet-Lite0 (ImageNet weights) on the ant/bee photos, 3-fold
stratified cross-validation (one split for every row), each of the full
fine-tune and ``freeze=k`` (k: half the blocks) with ``augment`` None,
"light" and "strong"; all else at the defaults (the same epochs, lr,
``random_state=0``). The measurement behind ``augment``'s default.

- default: the photos of ``../shared/data/hymenoptera/train`` (one sub-folder
  per class, as distributed), passed as paths: sktune decodes them at
  EfficientNet-Lite0's working size (224 px, its own evaluation crop);
- ``--array``: the same photos as the 64 x 64 array
  ``hymenoptera/hymenoptera_train_64.npz`` (what recipes.py and tuning.py use).

Run from the repository root (at 224 px and 5 epochs about 40 minutes on
2 cores; ``--array`` far less):

    python benchmarks/augment.py                      # 224 px photos
    python benchmarks/augment.py --array              # 64 px array
    python benchmarks/augment.py --out benchmarks/results/augment.md
    python benchmarks/augment.py --quick              # a smoke run, seconds

``--quick`` checks that the script runs (12 photos at 64 px, 1 epoch, 2 folds): its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, ants_bees, efficientnet, provenance, publish

from sktune import FineTuneClassifier, clear_cache

FOLDER = SHARED / "hymenoptera" / "train"
AUGMENTS = (None, "light", "strong")


def load_photos(folder, n: int | None = None):
    """The photos of ``folder`` (one sub-folder per class) as paths, listed
    the scikit-learn way (``load_files``), and their labels; the fits decode
    them at EfficientNet-Lite0's working size (224 px, crop 0.875)."""
    from sklearn.datasets import load_files

    files = load_files(folder, load_content=False, shuffle=False)
    names, y = np.asarray(files.filenames, dtype=object), np.asarray(files.target)
    if n is not None:  # the first n of each class
        keep = np.concatenate([np.flatnonzero(y == c)[: n // 2] for c in np.unique(y)])
        names, y = names[keep], y[keep]
    return names, y


def settings(mid: int) -> list[tuple[str, dict]]:
    return [
        (f"{what}, augment={augment!r}", dict(freeze=freeze, augment=augment))
        for what, freeze in (("full fine-tune", None), (f"freeze={mid}", mid))
        for augment in AUGMENTS
    ]


def measure(X, y, epochs: int, folds: int, **params) -> list[str]:
    backbone = efficientnet()
    backbone.module()
    n_blocks = (
        FineTuneClassifier(backbone, freeze="all", max_epochs=0, verbose=0, **params)
        .fit(X[[0, -1]], y[[0, -1]])
        .n_blocks_
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    rows = []
    for name, setting in settings(n_blocks // 2):
        clear_cache()  # every row pays for its own prefix pass
        clf = FineTuneClassifier(
            backbone, max_epochs=epochs, random_state=0, verbose=0, **setting, **params
        )
        start = time.perf_counter()
        scores = cross_val_score(clf, X, y, cv=cv)
        seconds = (time.perf_counter() - start) / folds
        rows.append(
            f"| {name} | {scores.mean():.3f} +/- {scores.std():.3f} | {seconds:.1f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", nargs="?", default=FOLDER, type=Path, help=f"default: {FOLDER}"
    )
    parser.add_argument(
        "--array", action="store_true", help="the 64 px array instead of the photos"
    )
    parser.add_argument("--epochs", type=int, default=5, help="default: 5")
    parser.add_argument(
        "--quick", action="store_true", help="12 photos at 64 px, 1 epoch, 2 folds"
    )
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    epochs, folds = (1, 2) if args.quick else (args.epochs, 3)
    if args.array:
        X, y = ants_bees()
        if args.quick:
            X, y = X[np.r_[:6, -6:0]], y[np.r_[:6, -6:0]]
        data = f"{len(X)} ant/bee photos ({X.shape[1]}x{X.shape[2]} array)"
        params = {}
    else:
        X, y = load_photos(args.folder, n=12 if args.quick else None)
        params = {"image_size": 64} if args.quick else {}
        size = "64 px" if args.quick else "224 px"
        data = f"{len(X)} ant/bee photos from {args.folder.name}/ (paths) at {size}"
    print(data, flush=True)
    rows = measure(X, y, epochs, folds, **params)
    publish(
        [
            provenance(),
            "",
            f"**EfficientNet-Lite0, {data}, {folds}-fold CV, {epochs} epochs**",
            "",
            "| setting | accuracy | seconds per fold |",
            "|---|---|---|",
            *rows,
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
