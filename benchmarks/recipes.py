"""Fine-tuning recipes side by side: accuracy, wall time, trainable parameters.

Every recipe is one constructor parameter of FineTuneClassifier; all else
stays at its default (10 epochs, lr=1e-3 for the head, backbone_lr="auto").
The first two rows are the defaults with and without a frozen backbone: the
defaults must beat the linear probe. Run from the repository root:

    python benchmarks/recipes.py            # both models (about an hour on 2 cores)
    python benchmarks/recipes.py image      # one of them
    python benchmarks/recipes.py image --only LP-FT --only LoRA   # some rows

- EfficientNet-Lite0 (ImageNet weights) on the 244 ant/bee photos of
  ../shared/data at 64x64, 3-fold stratified cross-validation (mean, std);
- all-MiniLM-L6-v2 on 1,000 of the 3,000 review sentences for training and
  900 others for testing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).parent))
from common import ants_bees, efficientnet, minilm_spec, sentence_splits

from sktune import Backbone, FineTuneClassifier, Freeze, clear_cache

ONLY: list[str] = []  # --only: rows whose name contains one of these


def recipes(mid: int, n_blocks: int) -> list[tuple[str, dict]]:
    rows = [
        ("linear probe (freeze='all'), defaults", dict(freeze="all")),
        ("full fine-tune, defaults", dict()),
        (f"freeze={mid}", dict(freeze=mid)),
        ("LoRA (adapter='lora', r=8)", dict(adapter="lora")),
        ("(IA)^3 (adapter='ia3')", dict(adapter="ia3")),
        (f"freeze={mid} + LoRA", dict(freeze=mid, adapter="lora")),
        ("LP-FT (Freeze(0, probe_epochs=3))", dict(freeze=Freeze(0, probe_epochs=3))),
        (
            "gradual unfreezing (Freeze(0, probe_epochs=1, unfreeze_every=1))",
            dict(freeze=Freeze(0, probe_epochs=1, unfreeze_every=1)),
        ),
        ("layer_decay=0.7", dict(layer_decay=0.7)),
        (
            "restarts (n_restarts=3, restart_epochs=2)",
            dict(n_restarts=3, restart_epochs=2),
        ),
        (
            "full fine-tune, backbone_lr=lr (no discriminative rates)",
            dict(backbone_lr=1e-3),
        ),
    ]
    return [row for row in rows if not ONLY or any(o in row[0] for o in ONLY)]


def trainable(clf) -> tuple[int, int, float]:
    """Parameters that trained, all of the network's, and the MB of the
    weights file ``save_pretrained`` writes (the trained part only)."""
    named = dict(clf.module_.named_parameters())
    total = sum(p.numel() for p in named.values())
    with tempfile.TemporaryDirectory() as directory:
        clf.save_pretrained(directory)
        size = os.path.getsize(os.path.join(directory, "model.safetensors")) / 1e6
    return sum(named[n].numel() for n in clf._trainable), total, size


def images() -> list[tuple]:
    X, y = ants_bees()
    backbone = efficientnet()
    backbone.module()
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    rows = []
    for name, params in recipes(4, 8):
        clf = FineTuneClassifier(backbone, random_state=0, **params)
        start = time.perf_counter()
        result = cross_validate(clf, X, y, cv=cv, return_estimator=True)
        seconds = (time.perf_counter() - start) / 3
        scores = result["test_score"]
        rows.append(
            (
                name,
                scores.mean(),
                scores.std(),
                seconds,
                *trainable(result["estimator"][0]),
            )
        )
        print(rows[-1], flush=True)
    clear_cache()
    start = time.perf_counter()
    probe = FineTuneClassifier(backbone, freeze="all", max_epochs=0).fit(X, y)
    features = probe.embed(X)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    scores = cross_validate(lr, features, y, cv=cv)["test_score"]
    rows.append(
        (
            "frozen features + LogisticRegression",
            scores.mean(),
            scores.std(),
            (time.perf_counter() - start) / 3,
            None,
            None,
            None,
        )
    )
    return rows


def text() -> list[tuple]:
    X_tr, _, X_te, y_tr, _, y_te = sentence_splits()
    backbone = Backbone(minilm_spec())
    backbone.module()
    rows = []
    for name, params in recipes(4, 7):
        clf = FineTuneClassifier(backbone, random_state=0, **params)
        start = time.perf_counter()
        clf.fit(X_tr, y_tr)
        seconds = time.perf_counter() - start
        rows.append((name, clf.score(X_te, y_te), None, seconds, *trainable(clf)))
        print(rows[-1], flush=True)
    clear_cache()
    start = time.perf_counter()
    probe = FineTuneClassifier(backbone, freeze="all", max_epochs=0).fit(X_tr, y_tr)
    lr = LogisticRegression(max_iter=5000).fit(probe.embed(X_tr), y_tr)
    accuracy = lr.score(probe.embed(X_te), y_te)
    rows.append(
        (
            "frozen features + LogisticRegression",
            accuracy,
            None,
            time.perf_counter() - start,
            None,
            None,
            None,
        )
    )
    return rows


def table(title: str, rows) -> str:
    lines = [
        f"**{title}**",
        "",
        "| recipe | accuracy | fit seconds | trainable parameters | saved MB |",
        "|---|---|---|---|---|",
    ]
    for name, mean, std, seconds, n_trained, n_total, saved in rows:
        accuracy = f"{mean:.3f}" + (f" +/- {std:.3f}" if std is not None else "")
        params = (
            "-"
            if n_trained is None
            else f"{n_trained:,} ({100 * n_trained / n_total:.2f}%)"
        )
        size = "-" if saved is None else f"{saved:.2f}"
        lines.append(f"| {name} | {accuracy} | {seconds:.1f} | {params} | {size} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help="image, text or both (default)")
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    ONLY.extend(args.only)
    which = args.which or ["image", "text"]
    if "image" in which:
        print(
            table(
                "EfficientNet-Lite0, 244 ant/bee photos (64x64), 3-fold CV; seconds per fold",
                images(),
            )
        )
        print()
    if "text" in which:
        print(table("all-MiniLM-L6-v2, 1,000 review sentences, 900 test", text()))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
