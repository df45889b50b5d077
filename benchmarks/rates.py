"""The rates people type: does a fit at a transformer user's lr learn?

A transformer user types ``lr=2e-5``, ``5e-5`` or ``1e-4``, the rates
transformers are fine-tuned at. Each fit below sets only that (and the
freeze depth, epochs and batch size), with ``backbone_lr`` left at "auto",
against the linear probe at its defaults. Run from the repository root:

    python benchmarks/rates.py             # classifier and pair regressor
    python benchmarks/rates.py classifier  # one of them

- classifier: all-MiniLM-L6-v2, ``freeze=3``, 3 epochs, batch 16, on 1,000
  of the review sentences, tested on 900 others (the recipe table's split);
- pair regressor: the same encoder on sentence pairs, ``freeze=0``,
  ``lr=5e-5``, 3 epochs, batch 16; the target is how many of the pair's two
  sentences are positive (0, 1 or 2), so the model must read both; Spearman
  correlation on pairs of the 900 test sentences.

Each row also says whether the fit warned that it learned nothing
(``ConvergenceWarning``). ``--old-rule`` adds the rows at the rule before
(``backbone_lr = 0.01 * lr`` for Hugging Face encoders) for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).parent))
from common import minilm_spec, sentence_splits

from sktune import Backbone, FineTuneClassifier, FineTuneRegressor


def fit(estimator, X, y):
    """Fit; return the seconds and whether a ConvergenceWarning came."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(X, y)
    warned = any(w.category is ConvergenceWarning for w in caught)
    return time.perf_counter() - start, warned


def row(name, estimator, score, seconds, warned) -> str:
    return (
        f"| {name} | {estimator.lr:g} | {estimator.backbone_lr_:g} | {score:.3f} "
        f"| {seconds:.0f} | {'yes' if warned else 'no'} |"
    )


HEADER = (
    "| fit | lr | backbone_lr_ | {metric} | fit seconds | ConvergenceWarning |\n"
    "|---|---|---|---|---|---|"
)


def classifier(backbone, old_rule: bool) -> None:
    X_train, _, X_test, y_train, _, y_test = sentence_splits()
    print(HEADER.format(metric="accuracy"), flush=True)
    probe = FineTuneClassifier(backbone, freeze="all", random_state=0, verbose=0)
    seconds, warned = fit(probe, X_train, y_train)
    print(
        row(
            "linear probe, defaults",
            probe,
            probe.score(X_test, y_test),
            seconds,
            warned,
        ),
        flush=True,
    )
    for lr in (2e-5, 5e-5, 1e-4):
        rules = [("auto", "auto")] + ([("old rule", 0.01 * lr)] if old_rule else [])
        for label, backbone_lr in rules:
            clf = FineTuneClassifier(
                backbone,
                freeze=3,
                max_epochs=3,
                batch_size=16,
                lr=lr,
                backbone_lr=backbone_lr,
                random_state=0,
                verbose=0,
            )
            seconds, warned = fit(clf, X_train, y_train)
            name = f"freeze=3, lr={lr:g}, backbone_lr={label}"
            print(
                row(name, clf, clf.score(X_test, y_test), seconds, warned), flush=True
            )
            if label == "auto" and lr == 5e-5:
                print("\n" + clf._summary() + "\n", flush=True)


def pairs(texts, labels, seed: int):
    """Pairs of distinct sentences, each used once; target: positives in it."""
    order = np.random.RandomState(seed).permutation(len(texts))
    order = order[: len(order) // 2 * 2].reshape(-1, 2)
    X = [(texts[a], texts[b]) for a, b in order]
    y = np.array([labels[a] + labels[b] for a, b in order], dtype=np.float32)
    return X, y


def pair_regressor(backbone, old_rule: bool) -> None:
    X_train, _, X_test, y_train, _, y_test = sentence_splits()
    P_train, t_train = pairs(X_train, y_train, seed=0)
    P_test, t_test = pairs(X_test, y_test, seed=1)
    print(f"{len(P_train)} training pairs, {len(P_test)} test pairs")
    print(HEADER.format(metric="Spearman"), flush=True)
    rules = [("auto", "auto")] + ([("old rule", 5e-7)] if old_rule else [])
    for label, backbone_lr in rules:
        reg = FineTuneRegressor(
            backbone,
            freeze=0,
            max_epochs=3,
            batch_size=16,
            lr=5e-5,
            backbone_lr=backbone_lr,
            random_state=0,
            verbose=0,
        )
        seconds, warned = fit(reg, P_train, t_train)
        rho = spearmanr(reg.predict(P_test), t_test).statistic
        name = f"pairs, freeze=0, lr=5e-05, backbone_lr={label}"
        print(row(name, reg, rho, seconds, warned), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help="classifier, pairs or both (default)")
    parser.add_argument("--old-rule", action="store_true")
    args = parser.parse_args()
    which = args.which or ["classifier", "pairs"]
    backbone = Backbone(minilm_spec())
    if "classifier" in which:
        classifier(backbone, args.old_rule)
    if "pairs" in which:
        pair_regressor(backbone, args.old_rule)


if __name__ == "__main__":
    main()
