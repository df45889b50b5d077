"""The frozen-prefix feature cache: exactness, reuse, and when it is off."""

import numpy as np
import pytest
import torch
from conftest import mlp_backbone, save_tiny_hf_encoder, text_backbone, tiny_cnn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktune import Backbone, FineTuneClassifier, Freeze
from sktune.cache import STORE, fingerprint


@pytest.fixture(autouse=True)
def empty_store():
    STORE.clear()
    yield
    STORE.clear()


class CountingLinear(nn.Linear):
    """Counts the samples it has processed (class-wide, across copies)."""

    seen = 0

    def forward(self, x):
        CountingLinear.seen += len(x)
        return super().forward(x)


def counting_backbone():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            CountingLinear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()
        )


def make(backbone=None, **kwargs):
    params = dict(max_epochs=5, lr=1e-2, random_state=0)
    params.update(kwargs)
    return FineTuneClassifier(
        backbone if backbone is not None else mlp_backbone(), **params
    )


@pytest.mark.parametrize("freeze", ["all", 1, 2, Freeze(depth=-1)])
def test_cache_on_and_off_give_the_same_model(blobs, freeze):
    X, y = blobs
    on = make(freeze=freeze).fit(X, y)
    off = make(freeze=freeze, cache=False).fit(X, y)
    assert on.cache_info_["enabled"] and not off.cache_info_["enabled"]
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-5)
    for (name, a), b in zip(
        on.module_.named_parameters(), off.module_.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_cached_batches_through_a_validation_split_and_drop_last(blobs):
    # Cached rows are indexed a batch at a time (RowsDataset), also through
    # skorch's validation Subset; the loader's sampler, and so the batch
    # order, is the same as without the cache.
    from skorch.dataset import ValidSplit

    X, y = blobs
    kwargs = dict(
        freeze=1,
        train_split=ValidSplit(0.2, stratified=True, random_state=0),
        iterator_train__drop_last=True,
        batch_size=16,
    )
    on = make(**kwargs).fit(X, y)
    off = make(cache=False, **kwargs).fit(X, y)
    assert on.cache_info_["enabled"]
    # 120 training samples: 7 full batches (drop_last); 30 validation: 2.
    assert len(on.history_[-1]["batches"]) == len(off.history_[-1]["batches"]) == 9
    for key in ("train_loss", "valid_loss", "valid_acc"):
        np.testing.assert_allclose(
            on.history_[:, key], off.history_[:, key], atol=1e-5, err_msg=key
        )
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-5)


def test_a_custom_dataset_turns_the_cache_off_for_prediction_too(blobs):
    # Its transforms would be skipped (or fed cached outputs) otherwise.
    from skorch.dataset import Dataset as SkorchDataset

    class Shifted(SkorchDataset):
        def transform(self, X, y):
            X, y = super().transform(X, y)
            return X + 1.0, y

    X, y = blobs
    clf = make(freeze="all", dataset=Shifted, cache_dtype="float16").fit(X, y)
    assert not clf.cache_info_["enabled"]
    assert STORE.nbytes() == 0
    plain = make(freeze="all", cache=False).fit(X + 1.0, y)
    np.testing.assert_allclose(
        clf.predict_proba(X), plain.predict_proba(X + 1.0), atol=1e-5
    )
    assert STORE.nbytes() == 0


def test_frozen_prefix_runs_once_per_sample_not_once_per_epoch(blobs):
    X, y = blobs
    CountingLinear.seen = 0
    make(counting_backbone(), freeze=1, max_epochs=5, cache=False).fit(X, y)
    uncached = CountingLinear.seen
    CountingLinear.seen = 0
    clf = make(counting_backbone(), freeze=1, max_epochs=5).fit(X, y)
    assert clf.module_.split.cut == 2  # Linear and the ReLU after it
    assert uncached >= 5 * len(X)
    # One pass (its last batch padded to the batch size), plus a few probe samples.
    assert CountingLinear.seen <= len(X) + clf.batch_size + 4


def test_chain_split_of_a_cnn_and_prediction_from_the_cache(images):
    X, y = images
    clf = make(tiny_cnn(), freeze=2, lr=3e-3).fit(X, y)
    assert clf.module_.split.units == (
        "stem.0",
        "stem.1",
        "stem.2",
        "stage1.0",
        "stage1.1",
        "stage1.2",
        "stage2.0",
        "stage2.1",
        "stage2.2",
        "pool",
    )
    assert clf.module_.split.cut == 6
    reused = clf.cache_info_["reused"]
    proba = clf.predict_proba(X)
    assert clf.cache_info_["reused"] == reused + len(X)  # predict read the store
    off = make(tiny_cnn(), freeze=2, lr=3e-3, cache=False).fit(X, y)
    np.testing.assert_allclose(proba, off.predict_proba(X), atol=1e-5)


def test_grid_search_candidates_and_folds_share_prefix_outputs(blobs):
    X, y = blobs
    search = GridSearchCV(
        make(freeze="all", max_epochs=2), {"lr": [1e-3, 1e-2, 1e-1]}, cv=3, refit=False
    )
    search.fit(X, y)
    # 3 candidates x 3 folds x (fit + score) touch 18 subsets; each sample's
    # features were computed once.
    assert STORE.nbytes() == len(X) * 16 * 4
    clf = clone(search.estimator).fit(X, y)
    assert clf.cache_info_ == {
        "enabled": True,
        "reason": None,
        "computed": 0,
        "reused": len(X),
    }


def test_different_data_or_weights_are_not_confused(blobs):
    X, y = blobs
    backbone = mlp_backbone()
    first = make(backbone, freeze="all").fit(X, y)
    shifted = make(backbone, freeze="all").fit(X + 1.0, y)
    assert shifted.cache_info_["computed"] == len(X)
    with torch.no_grad():
        backbone[0].weight.mul_(2.0)  # a user changing the module in place
    changed = make(backbone, freeze="all").fit(X, y)
    assert changed.cache_info_["computed"] == len(X)
    assert not np.allclose(first.predict_proba(X), changed.predict_proba(X))


def test_fingerprint_follows_in_place_updates():
    module = mlp_backbone()
    before = fingerprint(module)
    assert fingerprint(module) == before
    with torch.no_grad():
        module[2].bias.add_(1.0)
    assert fingerprint(module) != before


def test_text_linear_probe_is_cached(reviews):
    texts, labels = reviews
    on = FineTuneClassifier(
        text_backbone(), freeze="all", lr=1e-2, max_epochs=10, random_state=0
    ).fit(texts, labels)
    off = FineTuneClassifier(
        text_backbone(),
        freeze="all",
        lr=1e-2,
        max_epochs=10,
        random_state=0,
        cache=False,
    ).fit(texts, labels)
    assert on.cache_info_["enabled"]
    np.testing.assert_allclose(
        on.predict_proba(texts), off.predict_proba(texts), atol=1e-5
    )
    partial = FineTuneClassifier(text_backbone(), freeze=1, max_epochs=1).fit(
        texts, labels
    )
    assert partial.cache_info_ == {
        "enabled": False,
        "reason": "the backbone takes keyword inputs and is no known text encoder, "
        "so only freeze='all' is cached",
        "computed": 0,
        "reused": 0,
    }


class TokenModel(nn.Module):
    """Adds a learned token between children: not a chain of its children."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.token = nn.Parameter(torch.ones(8))
        self.block = nn.Linear(8, 8)

    def forward(self, x):
        return self.block(self.embed(x) + self.token)


@pytest.mark.parametrize(
    ("backbone", "kwargs", "reason"),
    [
        (
            TokenModel,
            {"freeze": ["embed.*"]},
            "running the backbone's children in order does not reproduce its forward pass",
        ),
        (mlp_backbone, {"freeze": 0}, "no frozen block at the input side"),
        (
            mlp_backbone,
            {"freeze": 1, "cache_size": 1e-3},
            "need 0 MB, more than cache_size=0.001 MB",
        ),
        (
            mlp_backbone,
            {
                "freeze": 1,
                "iterator_train__collate_fn": torch.utils.data.default_collate,
            },
            "a custom dataset or collate_fn may augment the data",
        ),
        (mlp_backbone, {"freeze": 1, "cache": False}, "cache=False"),
    ],
)
def test_cache_off_with_the_reason(blobs, images, backbone, kwargs, reason):
    X, y = images if backbone is tiny_cnn else blobs
    clf = make(backbone(), max_epochs=1, **kwargs).fit(X, y)
    assert not clf.cache_info_["enabled"]
    assert reason in clf.cache_info_["reason"]


def test_train_bn_cuts_before_the_first_trained_batchnorm(images):
    X, y = images
    clf = make(tiny_cnn(), freeze=Freeze(depth=2, train_bn=True), max_epochs=1).fit(
        X, y
    )
    assert clf.cache_info_["enabled"]
    assert clf.module_.split.units[: clf.module_.split.cut] == ("stem.0",)


def test_cache_true_raises_when_impossible(blobs):
    X, y = blobs
    with pytest.raises(
        ValueError,
        match=r"cache=True, but the frozen prefix cannot be cached: no frozen block",
    ):
        make(freeze=0, cache=True).fit(X, y)


def test_verbose_says_why_the_cache_is_off(blobs, capsys):
    X, y = blobs
    make(freeze=0, verbose=1, max_epochs=1).fit(X, y)
    assert (
        "Frozen-prefix cache off: no frozen block at the input side."
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("cache", "size", "message"),
    [
        ("yes", 10, r"cache='yes' is not valid; use 'auto', True or False"),
        ("auto", -1, r"cache_size=-1 is not valid"),
    ],
)
def test_bad_cache_parameters(blobs, cache, size, message):
    X, y = blobs
    with pytest.raises(ValueError, match=message):
        make(cache=cache, cache_size=size).fit(X, y)


def test_backbone_wrapper_shares_the_fingerprint_between_clones(blobs):
    X, y = blobs
    clf = make(Backbone(mlp_backbone()), freeze="all")
    clf.fit(X, y)
    again = clone(clf).fit(X, y)
    assert again.cache_info_["reused"] == len(X)


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def tiny_encoder(request, tmp_path_factory, reviews):
    path = tmp_path_factory.mktemp(request.param)
    return Backbone(str(save_tiny_hf_encoder(path, reviews[0], request.param)))


@pytest.mark.parametrize("freeze", [1, 2, 3])
def test_text_encoder_is_cut_after_its_frozen_layers(tiny_encoder, reviews, freeze):
    texts, labels = reviews
    params = dict(freeze=freeze, lr=1e-3, max_epochs=3, random_state=0)
    on = FineTuneClassifier(tiny_encoder, **params).fit(texts, labels)
    off = FineTuneClassifier(tiny_encoder, cache=False, **params).fit(texts, labels)
    assert on.module_.split.tokens and on.module_.split.cut == freeze - 1
    assert on.cache_info_["computed"] == len(texts)
    np.testing.assert_allclose(
        on.predict_proba(texts), off.predict_proba(texts), atol=1e-4
    )


def test_text_encoder_cut_with_sentence_pairs(tiny_encoder, reviews):
    texts, _ = reviews
    pairs = list(zip(texts, np.random.RandomState(0).permutation(texts), strict=True))
    same = np.array([("great" in a) == ("great" in b) for a, b in pairs])
    params = dict(freeze=2, lr=1e-3, max_epochs=2, random_state=0)
    on = FineTuneClassifier(tiny_encoder, **params).fit(pairs, same)
    off = FineTuneClassifier(tiny_encoder, cache=False, **params).fit(pairs, same)
    assert on.cache_info_["enabled"]
    np.testing.assert_allclose(
        on.predict_proba(pairs), off.predict_proba(pairs), atol=1e-4
    )


@pytest.mark.parametrize("storage", ["float16", torch.bfloat16])
def test_half_precision_storage_halves_the_cache(blobs, storage):
    X, y = blobs
    full = make(freeze="all").fit(X, y)
    assert STORE.nbytes() == len(X) * 16 * 4
    STORE.clear()
    half = make(freeze="all", cache_dtype=storage).fit(X, y)
    assert STORE.nbytes() == len(X) * 16 * 2
    assert half.embed(X).dtype == np.float32
    np.testing.assert_allclose(half.embed(X), full.embed(X), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(half.predict_proba(X), full.predict_proba(X), atol=0.05)


def test_half_precision_storage_of_a_cnn_cut(images):
    X, y = images
    full = make(tiny_cnn(), freeze=2, lr=3e-3).fit(X, y)
    half = make(tiny_cnn(), freeze=2, lr=3e-3, cache_dtype="float16").fit(X, y)
    assert half.module_.split.cut == 6 and half.cache_info_["enabled"]
    stored = STORE._contexts[half._cache_context()].values()
    assert stored and all(row.dtype == torch.float16 for row in stored)
    assert np.mean(half.predict(X) == full.predict(X)) > 0.95


def test_half_precision_storage_of_text_token_states(tiny_encoder, reviews):
    texts, labels = reviews
    enc = make(tiny_encoder, freeze=2, cache_dtype="float16").fit(texts, labels)
    assert enc.module_.split.tokens and enc.cache_info_["enabled"]
    stored = [row for rows in STORE._contexts.values() for row in rows.values()]
    assert stored and all(row.dtype == torch.float16 for row in stored)
    assert enc.score(texts, labels) > 0.6


def test_cache_size_counts_the_storage_precision(blobs):
    X, y = blobs
    budget = len(X) * 16 * 3 / 2**20  # between the float16 and float32 sizes
    assert not make(freeze="all", cache_size=budget).fit(X, y).cache_info_["enabled"]
    half = make(freeze="all", cache_size=budget, cache_dtype="float16").fit(X, y)
    assert half.cache_info_["enabled"]


# -- vision transformers: cut after the embedding and the frozen layers ----------


def tiny_timm_vit(name="vit_tiny_patch16_224", depth=3):
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return timm.create_model(
            name,
            pretrained=False,
            img_size=16,
            patch_size=4,
            embed_dim=16,
            depth=depth,
            num_heads=2,
            num_classes=0,
        )


def tiny_torchvision_vit():
    tvm = pytest.importorskip("torchvision.models")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vit = tvm.VisionTransformer(
            image_size=16,
            patch_size=4,
            num_layers=3,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
        )
    vit.heads = nn.Sequential(nn.Identity())
    return vit


@pytest.fixture(scope="module")
def small_images():
    """16x16 RGB float images whose class is the brightest channel."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(90, 3, 16, 16)).astype(np.float32)
    y = np.arange(90) % 3
    X[np.arange(90), y] += 1.0
    return X, y


@pytest.mark.parametrize("make_vit", [tiny_timm_vit, tiny_torchvision_vit])
@pytest.mark.parametrize("freeze", [1, 3])
def test_vision_transformer_is_cut_after_its_frozen_layers(
    small_images, make_vit, freeze
):
    X, y = small_images
    on = make(make_vit(), freeze=freeze, lr=3e-3).fit(X, y)
    split = on.module_.split
    assert on.cache_info_["enabled"], on.cache_info_["reason"]
    assert split.vit in ("timm", "torchvision")
    assert split.cut == freeze - 1  # block 0 is the patch and position embedding
    off = make(make_vit(), freeze=freeze, lr=3e-3, cache=False).fit(X, y)
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-5)
    for (name, a), b in zip(
        on.module_.named_parameters(), off.module_.parameters(), strict=True
    ):
        if name.endswith("attn.qkv.bias"):
            # The key bias shifts every attention logit of a query equally, so
            # its exact gradient is zero; Adam scales the rounding noise that
            # stands in for it up to steps of size lr. Query and value biases
            # are compared.
            width = len(a) // 3
            a, b = (
                torch.cat([a[:width], a[2 * width :]]),
                torch.cat([b[:width], b[2 * width :]]),
            )
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("spec", "first_unit", "vit"),
    [
        ("torchvision:resnet18", "conv1", None),
        # A flatten between its pooling and its MLP classifier:
        ("torchvision:mobilenet_v3_small", "features.0.0", None),
        ("timm:efficientnet_b0", "conv_stem", None),
        ("timm:deit_tiny_patch16_224", None, "timm"),
    ],
)
def test_real_architectures_are_cut_exactly(spec, first_unit, vit):
    # Random weights (nothing is downloaded): the cut and its exactness only
    # depend on the architecture.
    rng = np.random.RandomState(0)
    size = 224 if "deit" in spec else 32
    X = rng.randint(0, 256, size=(12, size, size, 3), dtype=np.uint8)
    y = np.arange(12) % 2
    kwargs = dict(freeze=2, max_epochs=2, batch_size=4, lr=1e-3, random_state=0)
    on = FineTuneClassifier(Backbone(spec, pretrained=False), **kwargs).fit(X, y)
    assert on.cache_info_["enabled"], on.cache_info_["reason"]
    split = on.module_.split
    assert split.vit == vit
    assert (split.units[0] if split.units else None) == first_unit
    off = FineTuneClassifier(
        Backbone(spec, pretrained=False), cache=False, **kwargs
    ).fit(X, y)
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-5)


def test_vision_transformer_cut_needs_every_embedding_parameter_frozen():
    # A distilled DeiT adds a distillation token in its embedding. With every
    # module in eval mode and every parameter before the layers frozen except
    # that token, nothing before the layers is static: no cut.
    from sktune.cache import plan_split
    from sktune.freeze import FreezePlan

    deit = tiny_timm_vit("deit_tiny_distilled_patch16_224", depth=2)
    prefix = ("cls_token", "pos_embed", "dist_token", "patch_embed.", "blocks.0.")
    frozen = [n for n, _ in deit.named_parameters() if n.startswith(prefix)]
    plan = FreezePlan(frozen, tuple(n for n, _ in deit.named_modules()), None)
    x = torch.randn(1, 3, 16, 16)

    def split_with(trainable: str):
        for name, param in deit.named_parameters():
            param.requires_grad_(name not in frozen or name == trainable)
        return plan_split(deit, plan, [], [], x)

    assert split_with(trainable="dist_token") == "no frozen block at the input side"
    assert split_with(trainable="blocks.0.mlp.fc2.bias").cut == 0
    assert split_with(trainable="none").cut == 1
