"""Accuracy and wall time of freeze depths against the cheap strong baseline.

For two real pretrained models, fine-tune with freeze="all" (linear probe),
a middle depth and 0 (everything trains), and compare with a logistic
regression on the frozen pretrained features (the strongest cheap
alternative a user has today). Each fine-tuning row trains the head and the
backbone at one hand-picked rate (and, for the CNN, every BatchNorm of the
trainable blocks, statistics included); what the defaults give is in
benchmarks/recipes.py. Run from the repository root:

    python benchmarks/accuracy.py      # ~6 minutes on 2 cores

- EfficientNet-Lite0 (ImageNet weights) on the 244 ant/bee photos of
  ../shared/data at 64x64, 3-fold stratified cross-validation;
- all-MiniLM-L6-v2 on the 3,000 review sentences, a 70/30 split.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).parent))
from common import ants_bees, efficientnet, minilm_spec, sentences

from sktune import Backbone, FineTuneClassifier, Freeze, clear_cache


def one_rate(lr: float) -> dict:
    """One learning rate for the head and the backbone, as each row was tuned
    for (the defaults' discriminative rates are in benchmarks/recipes.py)."""
    return dict(lr=lr, backbone_lr=lr)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def images() -> list[tuple]:
    X, y = ants_bees()
    backbone = efficientnet()
    backbone.module()
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    settings = [
        ("freeze='all' (linear probe)", dict(freeze="all", lr=1e-2, max_epochs=20)),
        (
            "freeze=4 (last 4 of 8 blocks train)",
            dict(freeze=Freeze(4, train_bn=True), **one_rate(1e-3), max_epochs=10),
        ),
        (
            "freeze=0 (all blocks train)",
            dict(freeze=Freeze(0, train_bn=True), **one_rate(3e-4), max_epochs=10),
        ),
    ]
    rows = []
    for name, params in settings:
        clf = FineTuneClassifier(backbone, random_state=0, **params)
        scores, seconds = timed(lambda clf=clf: cross_val_score(clf, X, y, cv=cv))
        rows.append((name, scores.mean(), scores.std(), seconds / 3))

    def baseline():
        clear_cache()  # time the feature extraction too, not a cache hit
        probe = FineTuneClassifier(
            backbone, freeze="all", max_epochs=0, random_state=0
        ).fit(X, y)
        features = probe.embed(X)
        lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        return cross_val_score(lr, features, y, cv=cv)

    scores, seconds = timed(baseline)
    rows.append(
        (
            "frozen features + LogisticRegression",
            scores.mean(),
            scores.std(),
            seconds / 3,
        )
    )
    return rows


def text() -> list[tuple]:
    X, y = sentences()
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=0
    )
    backbone = Backbone(minilm_spec())
    backbone.module()
    settings = [
        ("freeze='all' (linear probe)", dict(freeze="all", lr=1e-2, max_epochs=20)),
        (
            "freeze=4 (last 3 of 6 layers train)",
            dict(freeze=4, **one_rate(5e-5), max_epochs=2),
        ),
        ("freeze=0 (all layers train)", dict(freeze=0, **one_rate(3e-5), max_epochs=2)),
    ]
    rows = []
    for name, params in settings:
        clf = FineTuneClassifier(backbone, random_state=0, **params)
        _, seconds = timed(lambda clf=clf: clf.fit(X_tr, y_tr))
        rows.append((name, clf.score(X_te, y_te), None, seconds))

    def baseline():
        clear_cache()  # time the feature extraction too, not a cache hit
        probe = FineTuneClassifier(
            backbone, freeze="all", max_epochs=0, random_state=0
        ).fit(X_tr, y_tr)
        lr = LogisticRegression(max_iter=5000).fit(probe.embed(X_tr), y_tr)
        return lr.score(probe.embed(X_te), y_te)

    accuracy, seconds = timed(baseline)
    rows.append(("frozen features + LogisticRegression", accuracy, None, seconds))
    return rows


def table(title: str, rows) -> str:
    lines = [f"**{title}**", "", "| model | accuracy | fit seconds |", "|---|---|---|"]
    for name, mean, std, seconds in rows:
        accuracy = f"{mean:.3f}" + (f" +/- {std:.3f}" if std is not None else "")
        lines.append(f"| {name} | {accuracy} | {seconds:.1f} |")
    return "\n".join(lines)


def main() -> None:
    print(
        table(
            "EfficientNet-Lite0, 244 ant/bee photos (64x64), 3-fold CV; seconds per fold",
            images(),
        )
    )
    print()
    print(
        table(
            "all-MiniLM-L6-v2, 3,000 review sentences, 2,100 train / 900 test", text()
        )
    )


if __name__ == "__main__":
    main()
