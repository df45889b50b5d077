"""Where the time of a cached linear probe goes: fixed setup against per-epoch work.

Times the stages of one ``FineTuneClassifier(freeze="all")`` fit of
EfficientNet-Lite0 on the 170 ant/bee training photos of ``speed.py``, in a
fresh process (the first fit, as in the benchmark), by wrapping the methods
that make up a fit. Run from the repository root:

    python benchmarks/probe_breakdown.py

Needs the ant/bee photos of ../shared/data (or SKTUNE_SHARED_DATA).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import skorch.net
from common import efficientnet
from speed import BATCH, PROBE_EPOCHS, image_data

import sktune._base as base
import sktune._builder as builder
import sktune.cache.prefix as prefix
from sktune import FineTuneClassifier
from sktune.backbones import as_backbone

STAGES = [
    ("validate the parameters", base, "validate_params"),
    ("check the data", base, "check_fit_data"),
    ("copy the backbone (to the device)", builder, "_training_copy"),
    ("probe one sample", builder, "probe"),
    ("check channels-last on it", builder, "plan_layout"),
    ("plan and verify the cut", builder, "_plan_cut"),
    ("fingerprint the weights", builder, "fingerprint"),
    (
        "initialize the network (all of the above and more)",
        base.FineTuneMixin,
        "initialize_module",
    ),
    ("digest the samples", prefix, "sample_digests"),
    ("prefix outputs (digests, store, forward)", prefix.PrefixCache, "outputs"),
    ("skorch's training loop", skorch.net.NeuralNet, "fit_loop"),
]


def main() -> None:
    seconds: dict[str, float] = {}
    for label, owner, name in STAGES:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_label] = seconds.get(_label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)
    X, _, y, _ = image_data()
    backbone = efficientnet()
    as_backbone(backbone).module()  # load outside the timed region
    clf = FineTuneClassifier(
        backbone,
        freeze="all",
        lr=1e-2,
        max_epochs=PROBE_EPOCHS,
        batch_size=BATCH,
        random_state=0,
    )
    start = time.perf_counter()
    clf.fit(X, y)
    total = time.perf_counter() - start
    print(f"| stage | seconds |\n|---|---|\n| whole fit | {total:.3f} |")
    for label, _, _ in STAGES:
        print(f"| {label} | {seconds.get(label, 0.0):.3f} |")


if __name__ == "__main__":
    main()
