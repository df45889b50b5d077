"""Rare classes: does ``class_weight="balanced"`` find more of a rare class?

all-MiniLM-L6-v2 on the SMS Spam Collection (``../shared/data/sms_spam``:
5,574 messages, 13% spam; exact duplicate texts dropped first, so that no
message is in both sets). A test set keeps the original ratio of spam; the
training set keeps all its ham and a random few of its spam (seed 0), so
that spam is about 3% of it: a rare class, as fraud or defects are. Each
model is fitted with ``class_weight=None`` and with ``"balanced"`` (the
spam then weighs about 16 times a ham message), all else equal
(``random_state=0``):

- linear probe: ``freeze="all"``, 10 epochs (the defaults);
- fine-tune: ``freeze=5`` (the embeddings and 4 of the 6 layers frozen,
  served by the frozen-prefix cache; the top 2 layers train), 3 epochs,
  ``lr=1e-4`` (the encoder at its family's 1e-5), batch 16.

Reported on the test set: balanced accuracy (the mean of the two classes'
recalls), the rare class's recall and precision, accuracy; and the fit's
seconds (each fit computes its own frozen prefix: the cache is cleared
before it) and whether it warned that it learned little.
Run from the repository root (a few minutes on 2 cores):

    python benchmarks/class_weight.py                    # writes results/class_weight.md
    python benchmarks/class_weight.py ../shared/data/sms_spam --out FILE
    python benchmarks/class_weight.py --quick            # a smoke run, seconds

``--quick`` checks that the script runs (300 messages to train, 100 to
test, 1 epoch, texts cut to 32 tokens): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_score,
    recall_score,
)
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, minilm_spec, provenance, publish

from sktune import Backbone, FineTuneClassifier, clear_cache

FOLDER = SHARED / "sms_spam"
RESULTS = Path(__file__).parent / "results" / "class_weight.md"
RARE = "spam"
#: The rare class's share of the training set.
RARE_SHARE = 0.03
SEED = 0


def messages(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The messages and their labels ("ham" / "spam"), duplicates dropped."""
    data = pd.read_csv(folder / "sms_spam.tsv", sep="\t")
    data = data.drop_duplicates(subset="text")
    return data["text"].to_numpy(dtype=object), data["label"].to_numpy()


def splits(X, y, *, n_train: int | None, n_test: int):
    """A test set at the original ratio; a training set with the rare class
    thinned to :data:`RARE_SHARE` of it."""
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=n_test, stratify=y, random_state=SEED
    )
    rng = np.random.RandomState(SEED)
    common = np.flatnonzero(y_rest != RARE)
    if n_train is not None:
        common = rng.choice(
            common, size=round(n_train * (1 - RARE_SHARE)), replace=False
        )
    n_rare = round(len(common) * RARE_SHARE / (1 - RARE_SHARE))
    rare = rng.choice(np.flatnonzero(y_rest == RARE), size=n_rare, replace=False)
    keep = rng.permutation(np.r_[common, rare])
    return list(X_rest[keep]), list(X_test), y_rest[keep], y_test


def models(epochs: int | None) -> list[tuple[str, dict]]:
    probe = dict(freeze="all")
    tune = dict(freeze=5, max_epochs=3, lr=1e-4, batch_size=16)
    if epochs is not None:
        probe["max_epochs"] = tune["max_epochs"] = epochs
    return [("linear probe (freeze='all')", probe), ("fine-tune (freeze=5)", tune)]


def measure(backbone, data, epochs, max_length) -> list[str]:
    X_train, X_test, y_train, y_test = data
    rows = []
    for name, params in models(epochs):
        for class_weight in (None, "balanced"):
            clf = FineTuneClassifier(
                backbone,
                class_weight=class_weight,
                max_length=max_length,
                random_state=0,
                verbose=0,
                **params,
            )
            clear_cache()
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                clf.fit(X_train, y_train)
            seconds = time.perf_counter() - start
            warned = any(w.category is ConvergenceWarning for w in caught)
            predicted = clf.predict(X_test)
            scores = [
                balanced_accuracy_score(y_test, predicted),
                recall_score(y_test, predicted, pos_label=RARE),
                precision_score(y_test, predicted, pos_label=RARE, zero_division=0),
                accuracy_score(y_test, predicted),
            ]
            rows.append(
                f"| {name} | {class_weight!r} | "
                + " | ".join(f"{s:.3f}" for s in scores)
                + f" | {seconds:.0f} | {'yes' if warned else 'no'} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", nargs="?", default=FOLDER, type=Path, help=f"default: {FOLDER}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="300/100 messages, 1 epoch, 32 tokens"
    )
    parser.add_argument(
        "--out", type=Path, help=f"write the table here (default: {RESULTS})"
    )
    args = parser.parse_args()
    X, y = messages(args.folder)
    if args.quick:
        data = splits(X, y, n_train=300, n_test=100)
        epochs, max_length = 1, 32
    else:
        data = splits(X, y, n_train=None, n_test=1500)
        epochs, max_length = None, 128
    y_train, y_test = data[2], data[3]
    described = (
        f"{len(y_train)} messages to train ({np.sum(y_train == RARE)} spam, "
        f"{np.mean(y_train == RARE):.1%}), {len(y_test)} to test "
        f"({np.sum(y_test == RARE)} spam, {np.mean(y_test == RARE):.1%}); texts "
        f"cut to {max_length} tokens"
    )
    print(described, flush=True)
    backbone = Backbone(minilm_spec())
    backbone.module()  # loaded once, outside the timed fits
    header = [
        "| model | class_weight | balanced accuracy | spam recall | spam precision "
        "| accuracy | fit seconds | ConvergenceWarning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = measure(backbone, data, epochs, max_length)
    publish(
        [
            "# benchmarks/class_weight.py",
            "",
            provenance(),
            "",
            f"**all-MiniLM-L6-v2, SMS Spam Collection: {described}**",
            "",
            *header,
            *rows,
        ],
        args.out or (None if args.quick else RESULTS),
    )


if __name__ == "__main__":
    main()
