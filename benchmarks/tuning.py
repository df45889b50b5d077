"""The measurements behind two defaults: no learning-rate schedule, and the
adapters' rate under ``backbone_lr="auto"``.

Each setting is chosen on data the recipe table does not test on:

- all-MiniLM-L6-v2 trains on the same 1,000 review sentences as
  benchmarks/recipes.py; it is scored on the 1,100 sentences recipes.py
  leaves unused ("valid", what a choice may look at) and on recipes.py's 900
  test sentences ("test");
- EfficientNet-Lite0 on the 244 ant/bee photos, recipes.py's 3-fold CV;
- and, for ``Freeze(train_bn=...)``, EfficientNet-Lite0 at ``freeze=4`` on
  300 of scikit-learn's 8x8 digits (300 others for testing), four seeds:
  data far from ImageNet, where BatchNorm's pretrained statistics may not fit.

Run from the repository root (about 45 minutes on 2 cores):

    python benchmarks/tuning.py            # both models
    python benchmarks/tuning.py image      # one of them (image, text, digits)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split

sys.path.insert(0, str(Path(__file__).parent))
from common import ants_bees, efficientnet, minilm_spec, sentence_splits

from sktune import Backbone, FineTuneClassifier, Freeze

SETTINGS = [
    ("full fine-tune, defaults", dict()),
    ("full fine-tune, lr_schedule='linear'", dict(lr_schedule="linear")),
    ("full fine-tune, lr_schedule='cosine'", dict(lr_schedule="cosine")),
    ("LoRA, defaults (adapters at lr=1e-3)", dict(adapter="lora")),
    ("LoRA, lr_schedule='linear'", dict(adapter="lora", lr_schedule="linear")),
    ("LoRA, lr=3e-4 (head and adapters)", dict(adapter="lora", lr=3e-4)),
    ("LoRA, backbone_lr=3e-4 (adapters only)", dict(adapter="lora", backbone_lr=3e-4)),
    ("LoRA, lr=3e-3", dict(adapter="lora", lr=3e-3)),
]


def text() -> list[str]:
    X_tr, X_va, X_te, y_tr, y_va, y_te = sentence_splits()
    backbone = Backbone(minilm_spec())
    backbone.module()
    rows = []
    for name, params in SETTINGS:
        clf = FineTuneClassifier(backbone, random_state=0, verbose=0, **params)
        start = time.perf_counter()
        clf.fit(X_tr, y_tr)
        seconds = time.perf_counter() - start
        valid, test = clf.score(X_va, y_va), clf.score(X_te, y_te)
        rows.append(f"| {name} | {valid:.3f} | {test:.3f} | {seconds:.0f} |")
        print(rows[-1], flush=True)
    return [
        "**all-MiniLM-L6-v2, 1,000 review sentences; 1,100 valid, 900 test**",
        "",
        "| setting | valid accuracy | test accuracy | fit seconds |",
        "|---|---|---|---|",
        *rows,
    ]


def images() -> list[str]:
    X, y = ants_bees()
    backbone = efficientnet()
    backbone.module()
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    rows = []
    for name, params in SETTINGS:
        clf = FineTuneClassifier(backbone, random_state=0, verbose=0, **params)
        start = time.perf_counter()
        scores = cross_val_score(clf, X, y, cv=cv)
        seconds = (time.perf_counter() - start) / 3
        rows.append(
            f"| {name} | {scores.mean():.3f} +/- {scores.std():.3f} | {seconds:.1f} |"
        )
        print(rows[-1], flush=True)
    return [
        "**EfficientNet-Lite0, 244 ant/bee photos (64x64), 3-fold CV**",
        "",
        "| setting | accuracy | seconds per fold |",
        "|---|---|---|",
        *rows,
    ]


def digits() -> list[str]:
    X, y = load_digits(return_X_y=True)
    gray = np.round(X.reshape(-1, 8, 8, 1) * (255 / 16)).astype(np.uint8)
    X_tr, X_te, y_tr, y_te = train_test_split(
        np.repeat(gray, 3, axis=-1),
        y,
        train_size=300,
        test_size=300,
        stratify=y,
        random_state=0,
    )
    backbone = efficientnet()
    rows = []
    for name, freeze in [
        ("freeze=4 (pretrained statistics)", 4),
        ("Freeze(4, train_bn=True)", Freeze(4, train_bn=True)),
    ]:
        scores = []
        for seed in range(4):
            clf = FineTuneClassifier(
                backbone,
                freeze=freeze,
                image_size=32,
                lr=1e-3,
                backbone_lr=1e-3,
                max_epochs=8,
                random_state=seed,
                verbose=0,
            )
            scores.append(clf.fit(X_tr, y_tr).score(X_te, y_te))
        rows.append(f"| {name} | {' / '.join(f'{s:.3f}' for s in scores)} |")
        print(rows[-1], flush=True)
    return [
        "**EfficientNet-Lite0 on 8x8 digits at 32 px, 300 train / 300 test,"
        " lr=backbone_lr=1e-3, 8 epochs**",
        "",
        "| setting | accuracy, seeds 0 / 1 / 2 / 3 |",
        "|---|---|",
        *rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help="digits, image, text (default: all)")
    which = parser.parse_args().which or ["digits", "image", "text"]
    tables = []
    if "digits" in which:
        tables.append("\n".join(digits()))
    if "image" in which:
        tables.append("\n".join(images()))
    if "text" in which:
        tables.append("\n".join(text()))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
