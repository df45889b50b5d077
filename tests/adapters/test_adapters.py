"""Adapters through PEFT: what trains, where they go, export, errors."""

import numpy as np
import pytest
import torch
from helpers import (
    assert_same_state,
    make_classifier,
    state_snapshot,
    tiny_cnn,
    tiny_timm_vit,
    tiny_torchvision_vit,
)
from safetensors.torch import load_file
from sklearn.model_selection import GridSearchCV

from sktune import Adapter, Backbone, FineTuneClassifier

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def fit_text(backbone, reviews, **kwargs):
    texts, labels = reviews
    params = dict(lr=1e-2, max_epochs=3, random_state=0)
    return FineTuneClassifier(backbone, **{**params, **kwargs}).fit(texts, labels)


def changed(before: dict, module) -> set[str]:
    after = state_snapshot(module)
    return {k for k in before if k in after and not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_only_adapters_and_head_train_and_the_backbone_stays_bit_identical(
    tiny_bert_encoder, reviews, kind
):
    pristine = state_snapshot(tiny_bert_encoder.module())
    clf = fit_text(tiny_bert_encoder, reviews, adapter=kind)
    net = clf.module_
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    marker = "lora_" if kind == "lora" else "ia3_l"
    assert trainable and all(marker in n or n.startswith("head.") for n in trainable)
    # The base layers kept the pristine weights; only adapters moved.
    base = {
        k.replace(".base_layer", ""): v
        for k, v in state_snapshot(net.backbone).items()
        if marker not in k
    }
    assert_same_state(pristine, base)
    assert_same_state(pristine, state_snapshot(tiny_bert_encoder.module()))
    n_adapter = sum(
        p.numel() for n, p in net.backbone.named_parameters() if marker in n
    )
    modules = dict(net.backbone.named_modules())
    layers = [modules[n].base_layer for n in clf.adapted_modules_]
    if kind == "lora":  # r (in + out) per adapted layer
        expected = sum(8 * (m.in_features + m.out_features) for m in layers)
    else:  # a scale per output, per input of the feed-forward layers
        expected = sum(
            m.in_features if n.endswith(".output.dense") else m.out_features
            for n, m in zip(clf.adapted_modules_, layers, strict=True)
        )
    assert n_adapter == expected
    assert clf.score(*reviews) > 0.6


def test_default_targets_are_the_layers_projections(tiny_bert_encoder, reviews):
    lora = fit_text(tiny_bert_encoder, reviews, adapter="lora", max_epochs=1)
    assert all(".encoder.layer." in n for n in lora.adapted_modules_)
    assert {n.rsplit(".", 1)[-1] for n in lora.adapted_modules_} == {
        "query",
        "key",
        "value",
        "dense",
    }
    ia3 = fit_text(tiny_bert_encoder, reviews, adapter="ia3", max_epochs=1)
    # PEFT's choice for BERT: keys, values and the feed-forward output.
    assert {n.split(".layer.")[1].split(".", 1)[1] for n in ia3.adapted_modules_} == {
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "output.dense",
    }


def test_freeze_keeps_the_first_blocks_adapter_free_and_cached(
    tiny_bert_encoder, reviews
):
    texts, _ = reviews
    clf = fit_text(tiny_bert_encoder, reviews, adapter="lora", freeze=2)
    # Blocks: embeddings, layer 0, layer 1, layer 2; adapters in layers 1-2.
    layers = {int(n.split(".layer.")[1].split(".")[0]) for n in clf.adapted_modules_}
    assert layers == {1, 2}
    assert clf.cache_info_["enabled"]
    assert clf.cache_info_["computed"] == len(texts)  # the prefix ran once each
    rows = clf.describe().splitlines()
    assert rows[1].split()[3] == "0" and rows[3].split()[3] != "0"


def test_an_adapter_on_a_cnn_and_on_vision_transformers(images):
    X, y = images
    # Where the adapters go, not what they learn: one epoch each.
    clf = make_classifier(tiny_cnn(), adapter="lora", max_epochs=1).fit(X, y)
    assert clf.adapted_modules_ == ["stem.0", "stage1.0", "stage2.0"]
    rgb = np.repeat(X, 3, axis=1)
    rgb = torch.nn.functional.interpolate(torch.as_tensor(rgb), size=16).numpy()
    vit = tiny_timm_vit(depth=2)
    timm_vit = make_classifier(vit, adapter="lora", max_epochs=1).fit(rgb, y)
    assert any(n.endswith("attn.qkv") for n in timm_vit.adapted_modules_)
    tv_vit = make_classifier(tiny_torchvision_vit(), adapter="lora", max_epochs=1)
    tv_vit.fit(rgb, y)
    assert any(n.endswith("self_attention") for n in tv_vit.adapted_modules_)
    assert not any(n.endswith("out_proj") for n in tv_vit.adapted_modules_)


def test_merging_keeps_predictions_and_the_adapters_round_trip(
    tiny_bert_encoder, reviews, tmp_path
):
    texts, _ = reviews
    clf = fit_text(tiny_bert_encoder, reviews, adapter=Adapter("lora", r=4))
    proba = clf.predict_proba(texts)
    clf.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert saved and all("lora_" in k or k.startswith("head.") for k in saved)
    loaded = FineTuneClassifier.from_pretrained(tmp_path, backbone=tiny_bert_encoder)
    np.testing.assert_allclose(loaded.predict_proba(texts), proba, atol=1e-6)
    # Adapters of another rank do not take the saved ones; the backbone
    # stays pristine.
    pristine = state_snapshot(tiny_bert_encoder.module())
    with pytest.raises(ValueError, match=r"[1-9]\d* of another shape"):
        FineTuneClassifier.from_pretrained(
            tmp_path, backbone=tiny_bert_encoder, adapter=Adapter("lora", r=2)
        )
    assert_same_state(pristine, state_snapshot(tiny_bert_encoder.module()))
    clf.merge_adapters()
    np.testing.assert_allclose(clf.predict_proba(texts), proba, atol=1e-5)


def test_adapters_are_tuned_in_a_grid_search(tiny_bert_encoder, reviews):
    texts, labels = reviews
    clf = FineTuneClassifier(tiny_bert_encoder, lr=1e-2, max_epochs=1, random_state=0)
    grid = [{"adapter": [None]}, {"adapter": [Adapter("lora")], "adapter__r": [2, 4]}]
    search = GridSearchCV(clf, grid, cv=2).fit(texts, labels)
    assert len(search.cv_results_["params"]) == 3
    ranks = {
        p["adapter__r"]: None for p in search.cv_results_["params"] if "adapter__r" in p
    }
    assert set(ranks) == {2, 4}
    assert clf.adapter is None  # the search worked on clones


@pytest.mark.parametrize(
    ("adapter", "kwargs", "message"),
    [
        (
            Adapter(target=["nonexistent"]),
            {},
            r"adapter__target entry 'nonexistent' matches no module of the backbone; "
            r"modules lora can adapt look like: \['0', '2', '5'\]",
        ),
        (
            Adapter(target=["1"]),
            {},
            r"matches modules that lora cannot adapt: \['1 \(ReLU\)'\]",
        ),
        (
            "lora",
            {"freeze": "all"},
            r"adapter='lora' has no module to adapt: freeze='all'",
        ),
        (Adapter(r=0), {}, r"adapter__r=0 is not valid; use a positive int"),
        (
            "dora",
            {},
            r"adapter='dora' is not valid; use None, one of \['lora', 'ia3'\]",
        ),
        (Adapter("ia3", dropout=1.5), {}, r"adapter__dropout=1.5 is not valid"),
    ],
)
def test_bad_adapters_are_reported(blobs, adapter, kwargs, message):
    X, y = blobs
    with pytest.raises(ValueError, match=message):
        make_classifier(adapter=adapter, max_epochs=1, **kwargs).fit(X, y)


def test_the_frozen_prefix_of_an_adapted_encoder_runs_once_per_sample(
    tiny_bert_encoder, reviews
):
    texts, labels = reviews
    seen = []
    hook = tiny_bert_encoder.module().model.embeddings.register_forward_hook(
        lambda module, args, out: seen.append(len(out))
    )  # copied into each fit's training copy with the module
    try:
        clf = fit_text(
            tiny_bert_encoder, reviews, adapter="lora", freeze=2, max_epochs=4
        )
    finally:
        hook.remove()
    # One pass over the texts, a handful of probe samples: not four epochs.
    assert len(texts) <= sum(seen) <= len(texts) + 8
    assert clf.score(texts, labels) > 0.6


@pytest.mark.parametrize(
    ("spec", "adapted", "left_out"),
    [
        ("torchvision:resnet18", ["conv1", "layer1.0.conv1", "layer4.1.conv2"], []),
        # Depthwise convolutions are left out; the pointwise ones adapted.
        (
            "torchvision:mobilenet_v3_small",
            ["features.1.block.2.0"],
            ["features.1.block.0.0"],
        ),
    ],
)
def test_lora_adapts_the_convolutions_of_real_cnns(spec, adapted, left_out):
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    clf = FineTuneClassifier(
        Backbone(spec, pretrained=False), adapter="lora", max_epochs=1, batch_size=4
    ).fit(X, np.arange(8) % 2)
    assert set(adapted) <= set(clf.adapted_modules_)
    assert not set(left_out) & set(clf.adapted_modules_)
