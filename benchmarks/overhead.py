"""Host overhead per training step: sktune, plain skorch and a torch loop.

A tiny MLP backbone on the CPU, where the compute is nearly free, so what is
left is each library's per-step bookkeeping (on a GPU every such
millisecond is paid every step). Full fine-tuning, batch 32, AdamW, the same
data; the median of 5 fits each, interleaved. Run from the repository root:

    python benchmarks/overhead.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from skorch import NeuralNetClassifier
from torch import nn

from sktune import FineTuneClassifier

N, FEATURES, BATCH, EPOCHS = 4096, 32, 32, 3


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()
    )


class WithHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = backbone()
        self.head = nn.Linear(64, 2)

    def forward(self, X):
        return self.head(self.backbone(X))


def data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(N, FEATURES)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def fit_sktune(X, y):
    clf = FineTuneClassifier(
        backbone(), max_epochs=EPOCHS, batch_size=BATCH, random_state=0, cache=False
    )
    start = time.perf_counter()
    clf.fit(X, y)
    return time.perf_counter() - start


def fit_skorch(X, y):
    net = NeuralNetClassifier(
        WithHead,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=EPOCHS,
        batch_size=BATCH,
        train_split=None,
        iterator_train__shuffle=True,
        verbose=0,
    )
    start = time.perf_counter()
    net.fit(X, y)
    return time.perf_counter() - start


def fit_torch(X, y):
    model = WithHead()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    X_t, y_t = torch.as_tensor(X), torch.as_tensor(y)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        order = torch.randperm(N)
        for i in range(0, N, BATCH):
            idx = order[i : i + BATCH]
            loss = loss_fn(model(X_t[idx]), y_t[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)  # the overhead, not the parallel kernels
    X, y = data()
    fits = {"sktune": fit_sktune, "skorch": fit_skorch, "torch loop": fit_torch}
    seconds = {name: [] for name in fits}
    for _ in range(5):
        for name, fit in fits.items():
            seconds[name].append(fit(X, y))
    steps = EPOCHS * -(-N // BATCH)
    per_step = {name: 1e3 * statistics.median(s) / steps for name, s in seconds.items()}
    print(f"{steps} steps, median of 5 fits each\n")
    print("| loop | ms per step | / skorch |")
    print("|---|---|---|")
    for name, ms in per_step.items():
        print(f"| {name} | {ms:.2f} | {ms / per_step['skorch']:.2f}x |")


if __name__ == "__main__":
    main()
