"""Augmentation on photos: does ``augment`` help fine-tuning a small set?

EfficientNet-Lite0 (ImageNet weights) on the ant/bee photos, 3-fold
stratified cross-validation (one split for every row), each of the full
fine-tune and ``freeze=k`` (k: half the blocks) with ``augment`` None,
"light" and "strong"; all else at the defaults (the same epochs, lr,
``random_state=0``). The measurement behind ``augment``'s default.

- default: the photos of ``../shared/data/hymenoptera/train`` (one sub-folder
  per class, as distributed), brought to 224 x 224 (shorter side to 256,
  centre crop 224: EfficientNet-Lite0's own evaluation preprocessing) by
  :func:`load_photos`;
- ``--array``: the same photos as the 64 x 64 array
  ``hymenoptera/hymenoptera_train_64.npz`` (what recipes.py and tuning.py use).

Run from the repository root (at 224 px about 2 hours on 2 cores, judged
from one-epoch fits of 32 photos: a full fine-tune epoch takes about 0.3 s a
photo, freeze=4 a third of it; ``--array`` far less):

    python benchmarks/augment.py                      # 224 px photos
    python benchmarks/augment.py --array              # 64 px array
    python benchmarks/augment.py --out benchmarks/results/augment.md
    python benchmarks/augment.py --quick              # a smoke run, seconds

``--quick`` checks that the script runs (12 photos at 64 px, 1 epoch): its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, SHARED, ants_bees, efficientnet

from sktune import FineTuneClassifier, clear_cache

FOLDER = SHARED / "hymenoptera" / "train"
AUGMENTS = (None, "light", "strong")


def load_photos(folder, size: int = 224, shorter: int = 256, n: int | None = None):
    """The photos of ``folder`` (one sub-folder per class) as uint8 N x size x
    size x 3 and their labels.

    A plain Pillow loop: EXIF orientation applied, RGB, the shorter side
    resized to ``shorter`` (bicubic), a centre crop of ``size``. Once X may
    be a list of paths, this returns ``load_files``' file names instead and
    the fits decode them.
    """
    from PIL import Image, ImageOps
    from sklearn.datasets import load_files

    files = load_files(folder, load_content=False, shuffle=False)
    names, y = np.asarray(files.filenames), np.asarray(files.target)
    if n is not None:  # the first n of each class
        keep = np.concatenate([np.flatnonzero(y == c)[: n // 2] for c in np.unique(y)])
        names, y = names[keep], y[keep]
    X = np.empty((len(names), size, size, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        with Image.open(name) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            scale = shorter / min(image.size)
            w, h = (max(shorter, round(d * scale)) for d in image.size)
            image = image.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            X[i] = np.asarray(image.crop((left, top, left + size, top + size)))
    return X, y


def settings(mid: int) -> list[tuple[str, dict]]:
    return [
        (f"{what}, augment={augment!r}", dict(freeze=freeze, augment=augment))
        for what, freeze in (("full fine-tune", None), (f"freeze={mid}", mid))
        for augment in AUGMENTS
    ]


def measure(X, y, epochs: int, folds: int) -> list[str]:
    backbone = efficientnet()
    backbone.module()
    n_blocks = (
        FineTuneClassifier(backbone, freeze="all", max_epochs=0, verbose=0)
        .fit(X[[0, -1]], y[[0, -1]])
        .n_blocks_
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    rows = []
    for name, params in settings(n_blocks // 2):
        clear_cache()  # every row pays for its own prefix pass
        clf = FineTuneClassifier(
            backbone, max_epochs=epochs, random_state=0, verbose=0, **params
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
    parser.add_argument("--epochs", type=int, default=10, help="default: 10")
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
    else:
        start = time.perf_counter()
        X, y = (
            load_photos(args.folder, size=64, shorter=73, n=12)
            if args.quick
            else load_photos(args.folder)
        )
        data = (
            f"{len(X)} ant/bee photos from {args.folder.name}/ at "
            f"{X.shape[1]}x{X.shape[2]} (Pillow loop, "
            f"{time.perf_counter() - start:.0f} s)"
        )
    print(data, flush=True)
    rows = measure(X, y, epochs, folds)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    table = "\n".join(
        [
            f"`python {' '.join(sys.argv)}` at {commit} on {platform.machine()} "
            "(no GPU); one run.",
            "",
            f"**EfficientNet-Lite0, {data}, {folds}-fold CV, {epochs} epochs**",
            "",
            "| setting | accuracy | seconds per fold |",
            "|---|---|---|",
            *rows,
        ]
    )
    print("\n" + table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
