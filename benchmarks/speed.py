"""sktune against plain skorch and against the physical limit of a fine-tuning run.

The physical limit of a fit with a frozen prefix is one forward pass of the
prefix per distinct sample plus, per epoch, forward and backward of the
trainable suffix and head. It is measured here with plain torch loops over
the same pretrained modules, data, batch size and epochs (images in the
channels-last layout that sktune uses, so the ratio measures overhead only).

Every variant runs in its own process so that its peak RSS is its own; wall
times are measured inside, around ``fit`` (model loading excluded, the same
for all). Run from the repository root:

    python benchmarks/speed.py            # all sections, ~15 minutes on 2 cores
    python benchmarks/speed.py --section probe

Needs the ant/bee photos of ../shared/data (or SKTUNE_SHARED_DATA).
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
from common import (
    Timer,
    ants_bees,
    efficientnet,
    minilm_spec,
    peak_rss_mb,
    run_isolated,
    sentences,
    skorch_baseline,
)

SCRIPT = Path(__file__).resolve()
PROBE_EPOCHS, PARTIAL_EPOCHS, BATCH = 20, 3, 32


def split(X, y, n_train):
    rng = np.random.RandomState(0)
    idx = rng.permutation(len(y))
    tr, te = idx[:n_train], idx[n_train:]
    take = (
        (lambda a, i: [a[j] for j in i]) if isinstance(X, list) else (lambda a, i: a[i])
    )
    return take(X, tr), take(X, te), y[tr], y[te]


def image_data():
    X, y = ants_bees()
    return split(X, y, 170)


def text_data():
    X, y = sentences(n=1500)
    return split(X, y, 1000)


def as_float_images(X):
    """What a skorch user feeds: normalized float N x 3 x H x W (mean = std = 0.5)."""
    return ((X.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()


def tokenize_all(texts, tokenizer):
    """Pre-tokenized input for skorch: padded to the longest text of the data."""
    enc = tokenizer(
        texts, padding="longest", truncation=True, max_length=512, return_tensors="pt"
    )
    return {k: v for k, v in enc.items()}


# -- variants (each in its own process) ---------------------------------------------


def v_sktune(model, freeze, epochs, lr, options=None, **_):
    from sktune import FineTuneClassifier

    X_tr, X_te, y_tr, y_te = image_data() if model == "image" else text_data()
    backbone = efficientnet() if model == "image" else minilm_spec()
    from sktune.backbones import as_backbone

    as_backbone(backbone).module()  # load outside the timed region
    clf = FineTuneClassifier(
        backbone,
        freeze=freeze,
        lr=lr,
        backbone_lr=lr,  # one rate for all, as the skorch baseline trains
        max_epochs=epochs,
        batch_size=BATCH,
        random_state=0,
        **(options or {}),
    )
    with Timer() as t:
        clf.fit(X_tr, y_tr)
    return {
        "seconds": t.seconds,
        "accuracy": clf.score(X_te, y_te),
        "rss_mb": peak_rss_mb(),
        "cache": clf.cache_info_["enabled"],
    }


def v_skorch(model, freeze, epochs, lr, **_):
    from sktune.backbones import as_backbone

    X_tr, X_te, y_tr, y_te = image_data() if model == "image" else text_data()
    source = efficientnet() if model == "image" else minilm_spec()
    bb = as_backbone(source)
    bb.module()
    if model == "image":
        X_tr, X_te = as_float_images(X_tr), as_float_images(X_te)
        example = torch.as_tensor(X_tr[:1])
    else:
        tokenizer = bb.tokenizer()
        X_tr, X_te = tokenize_all(X_tr, tokenizer), tokenize_all(X_te, tokenizer)
        example = {k: v[:1] for k, v in X_tr.items()}
    torch.manual_seed(0)
    net = skorch_baseline(
        source, freeze, 2, example, lr=lr, max_epochs=epochs, batch_size=BATCH
    )
    with Timer() as t:
        net.fit(X_tr, y_tr)
    accuracy = float(np.mean(net.predict(X_te) == y_te))
    return {"seconds": t.seconds, "accuracy": accuracy, "rss_mb": peak_rss_mb()}


def v_limit(model, freeze, epochs, lr, **_):
    """One no-grad pass of the frozen prefix, then epochs over the suffix only."""
    from sktune.backbones import as_backbone
    from sktune.data import ImagePreprocess, TextCollator
    from sktune.families.hf import TokenSplit

    X_tr, _, y_tr, _ = image_data() if model == "image" else text_data()
    bb = as_backbone(efficientnet() if model == "image" else minilm_spec())
    net = copy.deepcopy(bb.module()).eval()
    torch.manual_seed(0)
    y = torch.as_tensor(y_tr)
    with Timer() as t:
        with torch.no_grad():
            if model == "image":
                # The same kernels as sktune: channels-last layout.
                net = net.to(memory_format=torch.channels_last)
                pre = ImagePreprocess((0.5,) * 3, (0.5,) * 3)
                batches = [
                    torch.as_tensor(X_tr[i : i + BATCH])
                    for i in range(0, len(X_tr), BATCH)
                ]
                prefix = torch.cat(
                    [
                        net(pre(b).contiguous(memory_format=torch.channels_last))
                        for b in batches
                    ]
                )
            else:
                collate = TextCollator(bb.tokenizer(), 512)
                rows = []
                n_layers = 0 if freeze == "all" else freeze - 1
                for i in range(0, len(X_tr), BATCH):
                    batch, _ = collate([(x, 0) for x in X_tr[i : i + BATCH]])
                    if freeze == "all":
                        rows.extend(net(**batch))
                    else:
                        states = net.prefix_states(n_layers, **batch)
                        rows.extend(
                            states[j, :n]
                            for j, n in enumerate(
                                batch["attention_mask"].sum(1).tolist()
                            )
                        )
                prefix = torch.stack(rows) if freeze == "all" else rows
        head = nn.Linear(384 if model == "text" else 1280, 2)
        if freeze == "all":
            params = list(head.parameters())
        else:
            for name, p in net.named_parameters():
                p.requires_grad_(
                    not name.startswith(
                        (
                            "model.embeddings",
                            *[f"model.encoder.layer.{i}." for i in range(freeze - 1)],
                        )
                    )
                )
            params = [p for p in net.parameters() if p.requires_grad] + list(
                head.parameters()
            )
            for i in range(freeze - 1, 6):
                net.model.encoder.layer[i].train()
        optimizer = torch.optim.AdamW(params, lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(epochs):
            order = torch.randperm(len(y))
            for i in range(0, len(y), BATCH):
                idx = order[i : i + BATCH]
                if freeze == "all":
                    feats = prefix[idx]
                else:
                    states, mask = TokenSplit(n_layers).gather(
                        prefix, idx.tolist(), torch.float32
                    )
                    feats = net.suffix_features(n_layers, states, mask)
                loss = loss_fn(head(feats), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return {"seconds": t.seconds, "rss_mb": peak_rss_mb()}


def v_grid(impl, **_):
    from sklearn.model_selection import GridSearchCV

    from sktune import FineTuneClassifier
    from sktune.backbones import as_backbone

    X, _, y, _ = image_data()
    source = efficientnet()
    as_backbone(source).module()
    depths = ["all", 6, 4, 2]
    if impl.startswith("sktune"):
        est = FineTuneClassifier(
            source,
            lr=1e-3,
            backbone_lr=1e-3,  # one rate for all, as the skorch baseline trains
            max_epochs=5,
            batch_size=BATCH,
            random_state=0,
            **({"channels_last": False} if impl == "sktune_nchw" else {}),
        )
        grid = {"freeze": depths}
    else:
        X = as_float_images(X)
        est = skorch_baseline(
            source,
            0,
            2,
            torch.as_tensor(X[:1]),
            lr=1e-3,
            max_epochs=5,
            batch_size=BATCH,
        )
        grid = {"module__freeze": depths}
    torch.manual_seed(0)
    search = GridSearchCV(est, grid, cv=3, refit=False)
    with Timer() as t:
        search.fit(X, y)
    best = next(iter(search.best_params_.values()))
    return {
        "seconds": t.seconds,
        "best": best,
        "scores": [round(s, 3) for s in search.cv_results_["mean_test_score"]],
        "fit_seconds": [round(s, 2) for s in search.cv_results_["mean_fit_time"]],
        "rss_mb": peak_rss_mb(),
    }


VARIANTS = {"sktune": v_sktune, "skorch": v_skorch, "limit": v_limit, "grid": v_grid}


# -- report -------------------------------------------------------------------------


def median_run(variant, repeat, **kw) -> dict:
    """The run with the median wall time of ``repeat`` fresh processes."""
    runs = sorted(
        (run_isolated(SCRIPT, variant, **kw) for _ in range(repeat)),
        key=lambda r: r["seconds"],
    )
    return runs[len(runs) // 2]


def section_probe(rows):
    # The image probe takes about half a second: the median of 5 processes
    # per variant. The text probe's skorch run takes minutes: one each.
    for model, lr, repeat in (("image", 1e-2, 5), ("text", 1e-2, 1)):
        kw = dict(model=model, freeze="all", epochs=PROBE_EPOCHS, lr=lr)
        res = {v: median_run(v, repeat, **kw) for v in ("sktune", "skorch", "limit")}
        rows.append(("linear probe, 20 epochs", model, res))


def section_partial(rows):
    kw = dict(model="text", freeze=5, epochs=PARTIAL_EPOCHS, lr=1e-4)
    res = {v: run_isolated(SCRIPT, v, **kw) for v in ("sktune", "skorch", "limit")}
    rows.append(("MiniLM, embeddings + 4 layers frozen, 3 epochs", "text", res))
    grouped = run_isolated(SCRIPT, "sktune", options={"group_by_length": True}, **kw)
    rows.append(
        (
            "the same, group_by_length=True (limit: unsorted batches)",
            "text",
            {**res, "sktune": grouped},
        )
    )


def section_grid(rows):
    res = {
        impl: run_isolated(SCRIPT, "grid", impl=impl)
        for impl in ("sktune", "sktune_nchw", "skorch")
    }
    rows.append(("GridSearchCV, 4 freeze depths x 3 folds", "image", res))
    rows.append(
        (
            "the same, channels_last=False",
            "image",
            {"sktune": res["sktune_nchw"], "skorch": res["skorch"]},
        )
    )


def report(rows) -> str:
    names = {
        "image": "EfficientNet-Lite0, 170 ant/bee photos",
        "text": "MiniLM-L6, 1,000 sentences",
    }
    lines = [
        "| run | model, data | sktune s | skorch s | limit s | skorch / sktune | sktune / limit | accuracy sktune / skorch | peak RSS MB sktune / skorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for title, model, res in rows:
        s, k, lim = res["sktune"], res["skorch"], res.get("limit")
        if "accuracy" in s:
            quality = f"{s['accuracy']:.3f} / {k['accuracy']:.3f}"
        else:
            quality = f"best freeze {s['best']!r} / {k['best']!r}"
        limit = f"{lim['seconds']:.1f}" if lim else "-"
        to_limit = f"{s['seconds'] / lim['seconds']:.2f}x" if lim else "-"
        lines.append(
            f"| {title} | {names[model]} | {s['seconds']:.1f} | {k['seconds']:.1f} | {limit} | "
            f"{k['seconds'] / s['seconds']:.1f}x | {to_limit} | {quality} | "
            f"{s['rss_mb']:.0f} / {k['rss_mb']:.0f} |"
        )
    grids = [res for _, _, res in rows if "fit_seconds" in res["sktune"]]
    if grids:
        res = grids[0]
        lines += [
            "",
            "GridSearchCV, mean fit seconds per candidate (one fold):",
            "",
            "| freeze | sktune | sktune, channels_last=False | skorch | skorch / sktune |",
            "|---|---|---|---|---|",
        ]
        for i, depth in enumerate(["all", 6, 4, 2]):
            a, b, c = (
                res[k]["fit_seconds"][i] for k in ("sktune", "sktune_nchw", "skorch")
            )
            lines.append(f"| {depth!r} | {a:.2f} | {b:.2f} | {c:.2f} | {c / a:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant")
    parser.add_argument("--json")
    parser.add_argument(
        "--section", choices=["probe", "partial", "grid"], action="append"
    )
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(VARIANTS[args.variant](**json.loads(args.json))))
        return
    rows: list = []
    for name in args.section or ["probe", "partial", "grid"]:
        globals()[f"section_{name}"](rows)
        print(f"{name}: {json.dumps(rows[-1][2])}", flush=True)
    print()
    print(report(rows))


if __name__ == "__main__":
    main()
