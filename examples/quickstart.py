"""Quickstart: tune how much of a pretrained network to freeze, like any hyperparameter.

A small network is pretrained to recognise handwritten digits (1,000 images),
then fine-tuned for a new task, telling odd from even digits, on other
writers' digits with only 60 labelled images. GridSearchCV picks the freeze
depth by cross-validation; the held-out score shows what transfer buys over
training the same architecture from scratch.

Run: python examples/quickstart.py   (about a minute on a laptop CPU)
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktune import FineTuneClassifier


def make_backbone() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
    )


def pretrain(X: np.ndarray, y: np.ndarray) -> nn.Sequential:
    """Pretrain the backbone (with a throwaway head) on the source task."""
    torch.manual_seed(0)
    backbone = make_backbone()
    source = FineTuneClassifier(backbone, max_epochs=30, lr=1e-3, random_state=0)
    source.fit(X, y)
    # The estimator trained a private copy; keep its backbone as "pretrained".
    return source.module_.backbone


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    pretrained = pretrain(X[:1000], y[:1000])

    parity = np.where(y[1000:] % 2, "odd", "even")
    X_train, X_test, y_train, y_test = train_test_split(
        X[1000:], parity, train_size=60, stratify=parity, random_state=0
    )
    clf = FineTuneClassifier(pretrained, max_epochs=40, lr=3e-3, random_state=0)
    search = GridSearchCV(
        make_pipeline(StandardScaler(), clf),
        {"finetuneclassifier__freeze": [0, 1, 2, "all"]},
        cv=3,
    )
    search.fit(X_train, y_train)

    print("freeze  cv accuracy")
    for params, score in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        print(f"{params['finetuneclassifier__freeze']!s:>6}  {score:.3f}")
    best = search.best_params_["finetuneclassifier__freeze"]
    print(
        f"\nbest freeze={best!r}: held-out accuracy {search.score(X_test, y_test):.3f}"
    )

    scratch = FineTuneClassifier(
        make_backbone(), max_epochs=40, lr=3e-3, random_state=0
    )
    scratch.fit(X_train, y_train)
    print(
        f"same network from scratch:    held-out accuracy {scratch.score(X_test, y_test):.3f}"
    )
    print("\nBlocks of the best model:")
    print(search.best_estimator_[-1].describe())


if __name__ == "__main__":
    main()
