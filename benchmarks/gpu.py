"""sktune against plain skorch and a hand-written loop on a CUDA GPU.

Random-init backbones (weights do not change the cost) and synthetic data;
the same epochs, batch size and optimizer side by side. "skorch" is plain
skorch over a backbone with its frozen layers set to requires_grad=False and
kept in eval mode (benchmarks/common.py); "hand" is a plain torch loop:
uint8 batches sent to the GPU and normalized there, channels-last, AdamW.
Warm-up runs are excluded from the timings; peak GPU memory is per run.

    python benchmarks/gpu.py            # on a machine with a CUDA GPU
    python benchmarks/gpu.py --smoke    # tiny models on the CPU: the code runs

Without a CUDA device (and without --smoke) it says so and exits cleanly.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import skorch_baseline

from sktune import Backbone, FineTuneClassifier


class Sizes:
    """The workload: the issue's on a GPU, tiny for --smoke on a CPU."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.images = 64 if smoke else 2048
        self.pixels = 32 if smoke else 224
        self.texts = 64 if smoke else 4096
        self.tokens = (4, 16) if smoke else (16, 128)
        self.image_batch = 16 if smoke else 64
        self.text_batch = 8 if smoke else 32


def resnet(smoke: bool) -> nn.Module:
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.resnet18() if smoke else tvm.resnet50()
    model.fc = nn.Identity()
    return model


def bert(smoke: bool) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    if smoke:
        config = transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
        )
    else:
        config = transformers.BertConfig()  # BERT-base: 12 layers, 768 wide
    return transformers.BertModel(config)


def images(sizes: Sizes):
    rng = np.random.RandomState(0)
    X = rng.randint(
        0, 256, size=(sizes.images, sizes.pixels, sizes.pixels, 3), dtype=np.uint8
    )
    return X, np.arange(sizes.images) % 2


def texts(sizes: Sizes):
    rng = np.random.RandomState(0)
    low, high = sizes.tokens
    lengths = rng.randint(low, high + 1, size=sizes.texts)
    ids = np.zeros((sizes.texts, high), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.randint(1000, 20000 if not sizes.smoke else 29000, size=n)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}, np.arange(sizes.texts) % 2


class Clock:
    """Wall time of a block, the device synchronized at both ends."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        self._sync()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self.start
        self.peak_mb = (
            torch.cuda.max_memory_allocated() / 2**20
            if self.device == "cuda"
            else float("nan")
        )

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


def run_sktune(backbone, X, y, device, **params):
    clf = FineTuneClassifier(
        Backbone(backbone), device=device, random_state=0, **params
    )
    warm = (
        {k: v[: params.get("batch_size", 32) * 2] for k, v in X.items()}
        if isinstance(X, dict)
        else X[:64]
    )
    clone = copy.deepcopy(clf).set_params(max_epochs=1)
    clone.fit(
        warm,
        y[: len(next(iter(warm.values()))) if isinstance(warm, dict) else len(warm)],
    )
    with Clock(device) as clock:
        clf.fit(X, y)
    return clock


def run_skorch(backbone, X, y, device, freeze, **params):
    if not isinstance(X, dict):
        X = (X.astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy()
        example = torch.as_tensor(X[:1])
    else:
        example = {k: torch.as_tensor(v[:1]) for k, v in X.items()}
    net = skorch_baseline(
        Backbone(backbone), freeze, 2, example, device=device, **params
    )
    with Clock(device) as clock:
        net.fit(X, y)
    return clock


def run_hand(backbone, X, y, device, epochs, batch_size, dtype=None):
    """A full fine-tune in plain torch: the loop sktune's overhead is measured against."""
    net = copy.deepcopy(backbone).to(device)
    head = nn.Linear(_width(net, X, device), 2).to(device)
    images_ = not isinstance(X, dict)
    if images_:
        net = net.to(memory_format=torch.channels_last)
    params = [*net.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    y_t = torch.as_tensor(y, device=device)
    n = len(y)
    net.train()
    with Clock(device) as clock:
        for _ in range(epochs):
            for start in range(0, n, batch_size):
                idx = slice(start, start + batch_size)
                if images_:
                    xb = torch.as_tensor(X[idx]).to(device, non_blocking=True)
                    xb = xb.permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.5)
                    xb = xb.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                        out = net(xb)
                else:
                    batch = {
                        k: torch.as_tensor(v[idx]).to(device) for k, v in X.items()
                    }
                    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                        out = net(**batch).last_hidden_state.mean(1)
                loss = loss_fn(head(out.float()), y_t[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return clock


def _width(net, X, device) -> int:
    with torch.no_grad():
        if isinstance(X, dict):
            out = net.eval()(
                **{k: torch.as_tensor(v[:1]).to(device) for k, v in X.items()}
            )
            return out.last_hidden_state.shape[-1]
        x = torch.as_tensor(X[:1]).to(device).permute(0, 3, 1, 2).float()
        return net.eval()(x).shape[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "No CUDA device: nothing to measure (use --smoke to run tiny models on the CPU)."
        )
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = Sizes(args.smoke)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke test)"
    rows = []
    X_img, y_img = images(sizes)
    X_txt, y_txt = texts(sizes)
    cnn, encoder = resnet(args.smoke), bert(args.smoke)
    n_layers = encoder.config.num_hidden_layers

    probe = dict(freeze="all", max_epochs=5, batch_size=sizes.image_batch, lr=1e-3)
    a = run_sktune(cnn, X_img, y_img, device, **probe)
    b = run_skorch(
        cnn,
        X_img,
        y_img,
        device,
        "all",
        max_epochs=5,
        batch_size=sizes.image_batch,
        lr=1e-3,
    )
    rows.append(
        (
            "CNN linear probe, 5 epochs (s)",
            a.seconds,
            b.seconds,
            None,
            a.peak_mb,
            b.peak_mb,
        )
    )

    full = dict(max_epochs=1, batch_size=sizes.image_batch, backbone_lr=1e-4)
    a = run_sktune(cnn, X_img, y_img, device, **full)
    b = run_skorch(
        cnn,
        X_img,
        y_img,
        device,
        0,
        max_epochs=1,
        batch_size=sizes.image_batch,
        lr=1e-4,
    )
    h = run_hand(cnn, X_img, y_img, device, 1, sizes.image_batch)
    n = len(y_img)
    rows.append(
        (
            "CNN full fine-tune, 1 epoch (img/s)",
            n / a.seconds,
            n / b.seconds,
            n / h.seconds,
            a.peak_mb,
            b.peak_mb,
        )
    )

    frozen = n_layers - 3  # embeddings + all but the last 3 layers
    partial = dict(freeze=frozen, max_epochs=3, batch_size=sizes.text_batch)
    a = run_sktune(encoder, X_txt, y_txt, device, **partial)
    b = run_skorch(
        encoder,
        X_txt,
        y_txt,
        device,
        frozen,
        max_epochs=3,
        batch_size=sizes.text_batch,
        lr=3e-5,
    )
    rows.append(
        (
            f"BERT, {frozen} of {n_layers + 1} blocks frozen, 3 epochs (s)",
            a.seconds,
            b.seconds,
            None,
            a.peak_mb,
            b.peak_mb,
        )
    )

    for precision, dtype in (("32", None), ("bf16", torch.bfloat16)):
        if (
            precision == "bf16"
            and device == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            continue
        tuned = dict(max_epochs=1, batch_size=sizes.text_batch, precision=precision)
        a = run_sktune(encoder, X_txt, y_txt, device, **tuned)
        h = run_hand(encoder, X_txt, y_txt, device, 1, sizes.text_batch, dtype)
        b = (
            run_skorch(
                encoder,
                X_txt,
                y_txt,
                device,
                0,
                max_epochs=1,
                batch_size=sizes.text_batch,
                lr=3e-5,
            )
            if precision == "32"
            else None
        )
        n = len(y_txt)
        rows.append(
            (
                f"BERT full fine-tune {precision}, 1 epoch (texts/s)",
                n / a.seconds,
                None if b is None else n / b.seconds,
                n / h.seconds,
                a.peak_mb,
                None if b is None else b.peak_mb,
            )
        )

    print(f"Device: {name}; torch {torch.__version__}\n")
    print("| run | sktune | skorch | hand | peak MB sktune | peak MB skorch |")
    print("|---|---|---|---|---|---|")
    for label, *values in rows:
        # No GPU memory to report on a CPU (nan): "-" as for a missing run.
        cells = ["-" if v is None or v != v else f"{v:,.1f}" for v in values]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
