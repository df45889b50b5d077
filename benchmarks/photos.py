"""Photos from files: sktune's decoding and fits against a plain Pillow loop.

EfficientNet-Lite0 at its own resolution (224 px, crop_pct 0.875, bicubic)
on a folder of photos as distributed (default: the 245 ant and bee photos
in ``../shared/data/hymenoptera/train``, 193x130 to 2592x1944 px). In one
run:

1. Decoding the folder at the working size: sktune (reduced JPEG decoding,
   worker processes) against a plain Pillow loop (open, ``convert("RGB")``,
   resize the shorter side to 256, centre crop 224), the files read once
   before either so both find them in the page cache.
2. Fits from paths against the same fits on the array the plain loop made,
   the loop's time added: a linear probe (10 epochs) and a full fine-tune
   (``--epochs``, default 5), on a stratified 70/30 split, with held-out
   accuracy.
3. Peak memory of a probe fit from paths, on the photos as distributed and
   on copies shrunk to at most 320 px: it must not grow with the photos'
   original resolution. Each runs in its own process.

Run from the repository root (about 10 minutes on 2 cores):

    python benchmarks/photos.py [--folder PATH] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, PeakRSS, efficientnet, run_isolated

SCRIPT = Path(__file__).resolve()
RESULTS = Path(__file__).parent / "results" / "photos.md"
FOLDER = SHARED / "hymenoptera" / "train"


def list_photos(folder: Path):
    """The scikit-learn way: ``load_files`` lists a folder of class folders."""
    from sklearn.datasets import load_files

    files = load_files(folder, load_content=False, shuffle=False)
    return list(files.filenames), files.target


def pillow_loop(paths) -> np.ndarray:
    """What a user writes without sktune: every photo decoded at full size."""
    out = np.empty((len(paths), 224, 224, 3), np.uint8)
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        scale = 256 / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.BICUBIC)
        left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
        out[i] = np.asarray(image.crop((left, top, left + 224, top + 224)))
    return out


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def decoding(paths, source) -> list[dict]:
    from sktune.data.photos import Photos, PhotoSpec

    spec = PhotoSpec.of(None, source.data_config())
    for path in paths:  # into the page cache, for both
        Path(path).read_bytes()
    Photos(paths[:8]).load(spec, budget_mb=1024, workers=0)  # imports, plugins
    _, loop = timed(pillow_loop, paths)
    rows = [{"what": "plain Pillow loop", "seconds": loop}]
    for workers in (0, None):
        _, seconds = timed(Photos(paths).load, spec, budget_mb=1024, workers=workers)
        label = "one process" if workers == 0 else "worker processes (default)"
        rows.append({"what": f"sktune, {label}", "seconds": seconds})
    return rows


def fits(paths, y, epochs: int, source) -> list[dict]:
    from sktune import FineTuneClassifier, clear_cache

    train, test = train_test_split(
        np.arange(len(paths)), test_size=0.3, stratify=y, random_state=0
    )
    paths = np.asarray(paths, dtype=object)
    rows = []
    for name, freeze, n_epochs in (
        ("linear probe", "all", 10),
        ("full fine-tune", None, epochs),
    ):
        params = dict(freeze=freeze, max_epochs=n_epochs, random_state=0, verbose=0)
        clear_cache()
        clf, seconds = timed(
            FineTuneClassifier(source, **params).fit, paths[train], y[train]
        )
        accuracy = clf.score(list(paths[test]), y[test])
        clear_cache()
        X, loop = timed(pillow_loop, list(paths))
        clf, fit_seconds = timed(
            FineTuneClassifier(source, **params).fit, X[train], y[train]
        )
        rows.append(
            {
                "fit": f"{name}, {n_epochs} epochs",
                "paths_s": seconds,
                "loop_s": loop,
                "array_fit_s": fit_seconds,
                "ratio": seconds / (loop + fit_seconds),
                "paths_acc": accuracy,
                "array_acc": clf.score(X[test], y[test]),
            }
        )
    return rows


def shrunk_copies(paths, folder: Path, longest: int = 320) -> list[str]:
    out = []
    for i, path in enumerate(paths):
        image = Image.open(path)
        image.thumbnail((longest, longest))
        target = folder / f"{i:04d}{Path(path).suffix}"
        image.convert("RGB").save(target, format="JPEG", quality=90)
        out.append(str(target))
    return out


def memory_variant(paths, y) -> dict:
    from sktune import FineTuneClassifier

    clf = FineTuneClassifier(efficientnet(), freeze="all", max_epochs=2, verbose=0)
    with PeakRSS() as peak:
        clf.fit(paths, np.asarray(y))
    return {"mb": peak.mb}


def memory(paths, y) -> list[dict]:
    sizes = [Image.open(p).size for p in paths]
    pixels = np.mean([w * h for w, h in sizes]) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        small = shrunk_copies(paths, Path(tmp))
        small_pixels = np.mean([w * h for w, h in map(_size, small)]) / 1e6
        rows = []
        for label, files, mp in (
            ("as distributed", paths, pixels),
            ("shrunk to at most 320 px", small, small_pixels),
        ):
            result = run_isolated(
                SCRIPT, "memory", paths=list(files), y=[int(v) for v in y]
            )
            rows.append({"photos": label, "megapixels": mp, "mb": result["mb"]})
    return rows


def _size(path):
    return Image.open(path).size


def report(decode_rows, fit_rows, memory_rows, n: int) -> str:
    loop = decode_rows[0]["seconds"]
    lines = [
        f"Photos from files: EfficientNet-Lite0 at 224 px, {n} photos "
        "(`python benchmarks/photos.py`).",
        "",
        "| decoding at working size | seconds | speed-up |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['what']} | {r['seconds']:.2f} | {loop / r['seconds']:.1f}x |"
        for r in decode_rows
    ]
    lines += [
        "",
        "| fit | from paths s | plain loop s + fit on its array s | ratio | "
        "held-out accuracy paths / array |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['fit']} | {r['paths_s']:.1f} | {r['loop_s']:.1f} + "
        f"{r['array_fit_s']:.1f} | {r['ratio']:.2f}x | "
        f"{r['paths_acc']:.3f} / {r['array_acc']:.3f} |"
        for r in fit_rows
    ]
    lines += [
        "",
        "| probe fit from paths (2 epochs), photos | mean megapixels | "
        "peak memory above start MB |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['photos']} | {r['megapixels']:.2f} | {r['mb']:.0f} |"
        for r in memory_rows
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="40 photos, 1 epoch")
    parser.add_argument("--variant")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.variant:
        kwargs = json.loads(args.json)
        print(json.dumps(memory_variant(kwargs["paths"], kwargs["y"])))
        return
    paths, y = list_photos(args.folder)
    if args.quick:
        keep = np.r_[0:20, len(paths) - 20 : len(paths)]
        paths, y, args.epochs = [paths[i] for i in keep], y[keep], 1
    source = efficientnet()
    source.module()  # loaded once, before any timing
    decode_rows = decoding(paths, source)
    fit_rows = fits(paths, y, args.epochs, source)
    memory_rows = memory(paths, y)
    text = report(decode_rows, fit_rows, memory_rows, len(paths))
    print(text)
    if not args.quick:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
