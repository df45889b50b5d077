"""Memory of a fit: sktune against plain skorch and a plain torch loop.

EfficientNet-Lite0 on random uint8 images (224 x 224, N x H x W x C). The
figure is the peak resident memory during ``fit`` minus the memory just
before it (X and the model already loaded), sampled every 0.05 s; each
variant runs in its own process. The three columns do the same work:

- sktune: ``FineTuneClassifier`` with the frozen-prefix cache where it
  applies;
- plain skorch: ``NeuralNetClassifier`` over the backbone with the same
  blocks frozen (``requires_grad=False``, eval mode) and the uint8-to-float
  preprocessing inside the module; skorch has no cache, so the frozen
  prefix runs every epoch;
- a plain torch loop: where the cache applies, the prefix is computed once
  into one preallocated tensor and then the trainable part trains per
  batch; otherwise the whole network runs per batch.

Run from the repository root (about 15 minutes on 2 cores at the default
size; ``--n 1000`` for a quick look):

    python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import PeakRSS, efficientnet, run_isolated

SCRIPT = Path(__file__).resolve()
SIZE, BATCH = 224, 32
# (name, freeze, epochs, share of --n, cache_size MB or None for the default)
ROWS = [
    ("probe", "all", 1, 1.0, None),
    ("cached", 4, 2, 1.0, None),
    ("uncached", 4, 1, 4 / 3, 50),
]
COLUMNS = ("sktune", "skorch", "torch")


def images(n: int):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return X, np.arange(n) % 2


class Preprocess(nn.Module):
    """uint8 N x H x W x C to normalized float N x C x H x W (mean = std = 0.5)."""

    def forward(self, x):
        return (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def split_backbone(freeze):
    """The pretrained EfficientNet-Lite0 cut after ``freeze`` blocks, as
    (prefix, suffix) modules, with the blocks sktune's block map gives."""
    from sktune.backbones import as_backbone
    from sktune.blocks import block_map, record_child_order
    from sktune.families import family_of

    backbone = copy.deepcopy(as_backbone(efficientnet()).module()).eval()
    order, remove = record_child_order(backbone)
    with torch.no_grad():
        backbone(torch.zeros(1, 3, SIZE, SIZE))
    remove()
    blocks = block_map(backbone, order, family_of(backbone).block_of(backbone))
    frozen = len(blocks) if freeze == "all" else freeze
    names = {m for block in blocks[:frozen] for m in block.modules}
    stages = [f"blocks.{i}" for i in range(len(backbone.blocks))]
    parts = ["conv_stem", "bn1", *stages, "conv_head", "bn2", "global_pool"]
    cut = next((i for i, name in enumerate(parts) if name not in names), len(parts))
    prefix = nn.Sequential(*(backbone.get_submodule(p) for p in parts[:cut]))
    suffix = nn.Sequential(
        *(backbone.get_submodule(p) for p in parts[cut:]), nn.Flatten()
    )
    for p in prefix.parameters():
        p.requires_grad_(False)
    return prefix.eval(), suffix, backbone.num_features


def run_sktune(X, y, freeze, epochs, cache_size):
    from sktune import FineTuneClassifier

    clf = FineTuneClassifier(
        efficientnet(),
        freeze=freeze,
        max_epochs=epochs,
        batch_size=BATCH,
        random_state=0,
        verbose=0,
        **({} if cache_size is None else {"cache_size": cache_size}),
    )
    with PeakRSS() as peak:
        clf.fit(X, y)
    return {"mb": peak.mb, "cache": clf.cache_info_.get("enabled", False)}


def run_skorch(X, y, freeze, epochs, cache_size):
    from skorch import NeuralNetClassifier

    prefix, suffix, width = split_backbone(freeze)

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.prefix, self.suffix = Preprocess(), prefix, suffix
            self.head = nn.Linear(width, 2)

        def train(self, mode=True):
            super().train(mode)
            self.prefix.eval()  # frozen blocks stay in eval mode
            return self

        def forward(self, x):
            return self.head(self.suffix(self.prefix(self.pre(x))))

    net = NeuralNetClassifier(
        Module,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        max_epochs=epochs,
        batch_size=BATCH,
        train_split=None,
        iterator_train__shuffle=True,
        verbose=0,
    )
    with PeakRSS() as peak:
        net.fit(X, y)
    return {"mb": peak.mb}


def run_torch(X, y, freeze, epochs, cache_size):
    prefix, suffix, width = split_backbone(freeze)
    pre, head = Preprocess(), nn.Linear(width, 2)
    params = [p for p in (*suffix.parameters(), *head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    y = torch.as_tensor(y)
    cached = cache_size is None
    with PeakRSS() as peak:
        if cached:  # the prefix once, into one preallocated tensor
            with torch.no_grad():
                held = None
                for start in range(0, len(X), BATCH):
                    out = prefix(pre(torch.from_numpy(X[start : start + BATCH])))
                    if held is None:
                        held = out.new_empty((len(X), *out.shape[1:]))
                    held[start : start + len(out)] = out
        suffix.train()
        for _ in range(epochs):
            for index in torch.randperm(len(X)).split(BATCH):
                if cached:
                    inputs = held[index]
                else:
                    with torch.no_grad():
                        inputs = prefix(pre(torch.from_numpy(X[index.numpy()])))
                loss = nn.functional.cross_entropy(head(suffix(inputs)), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return {"mb": peak.mb}


def variant(name: str, n: int) -> dict:
    row, column = name.split(":")
    _, freeze, epochs, share, cache_size = next(r for r in ROWS if r[0] == row)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    from sktune.backbones import as_backbone

    as_backbone(efficientnet()).module()  # loaded before the measured fit
    X, y = images(int(n * share))
    run = {"sktune": run_sktune, "skorch": run_skorch, "torch": run_torch}[column]
    return {"X_mb": X.nbytes / 2**20, **run(X, y, freeze, epochs, cache_size)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant")
    parser.add_argument("--json")
    parser.add_argument("--n", type=int, default=3000, help="images of the probe row")
    parser.add_argument("--rows", nargs="*", default=[r[0] for r in ROWS])
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, **json.loads(args.json))))
        return
    print(f"EfficientNet-Lite0, random uint8 images {SIZE} x {SIZE}, batch {BATCH}")
    print("peak RSS during fit minus RSS before it, MB; one run each\n")
    print("| fit | X MB | sktune | plain skorch | plain torch loop | sktune / torch |")
    print("|---|---|---|---|---|---|")
    for row, freeze, epochs, share, cache_size in ROWS:
        if row not in args.rows:
            continue
        got = {c: run_isolated(SCRIPT, f"{row}:{c}", n=args.n) for c in COLUMNS}
        n = int(args.n * share)
        cache = "on" if got["sktune"]["cache"] else f"off (cache_size={cache_size})"
        what = f"freeze={freeze!r}, {epochs} epoch(s), {n:,} images, cache {cache}"
        sk, skorch, loop = (got[c]["mb"] for c in COLUMNS)
        print(
            f"| {what} | {got['sktune']['X_mb']:.0f} | {sk:.0f} | {skorch:.0f} | "
            f"{loop:.0f} | {sk / loop:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
