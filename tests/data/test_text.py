"""Raw texts, sentence pairs, tokenized mappings; length-grouped batches."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    BagOfWordsEncoder,
    TextBackbone,
    WordTokenizer,
    text_backbone,
)

from sktune import FineTuneClassifier
from sktune.data import TextCollator, TextDataset
from sktune.data.text import as_texts
from sktune.families.hf import TokenSplit


def make_text_clf(**kwargs):
    params = dict(lr=1e-2, max_epochs=15, random_state=0)
    params.update(kwargs)
    return FineTuneClassifier(text_backbone(), **params)


def test_text_classification_learns(reviews):
    texts, labels = reviews
    clf = make_text_clf().fit(texts[:80], labels[:80])
    assert clf.score(texts[80:], labels[80:]) > 0.9
    assert clf.predict(["the food was great"])[0] == "pos"
    assert clf.n_blocks_ == 3  # embeddings, layer1, layer2 in forward order
    assert not hasattr(clf, "n_features_in_")


def test_text_from_pandas_and_numpy_agree(reviews):
    texts, labels = reviews
    clf = make_text_clf(max_epochs=2).fit(pd.Series(texts), labels)
    np.testing.assert_array_equal(
        clf.predict_proba(np.array(texts)), clf.predict_proba(texts)
    )


def test_sentence_pairs(reviews):
    texts, _ = reviews
    rng = np.random.RandomState(0)
    other = list(rng.permutation(texts))
    # Label: do both sentences carry the same sentiment word?
    same = np.array(
        [("great" in a) == ("great" in b) for a, b in zip(texts, other, strict=True)]
    )
    pairs = pd.DataFrame({"first": texts, "second": other})
    clf = make_text_clf(max_epochs=30, head="mlp").fit(pairs, same)
    assert clf.input_spec_.kind == "pairs"
    assert clf.score(pairs, same) > 0.8
    assert clf.predict([(texts[0], texts[0])])[0]


def test_batches_are_padded_to_their_longest_member_only():
    tokenizer = WordTokenizer()
    batch, y = TextCollator(tokenizer, max_length=8)([("a b c", 1), ("a", 0)])
    assert batch["input_ids"].shape == (2, 3)
    assert tokenizer.calls[-1] == {"padding": True, "max_length": 8, "n": 2}
    assert y.tolist() == [1, 0]


def test_max_length_truncates(reviews):
    texts, labels = reviews
    clf = make_text_clf(max_epochs=1, max_length=3).fit(texts, labels)
    batch = next(iter(clf.get_iterator(clf.get_dataset(texts), training=False)))[0]
    assert batch["input_ids"].shape[1] == 3
    default = make_text_clf(max_epochs=1).fit(texts, labels)
    assert default._collator.max_length == WordTokenizer.model_max_length


def test_pretokenized_mapping_input(reviews):
    texts, labels = reviews
    encoded = WordTokenizer()(
        texts, padding=True, truncation=True, max_length=16, return_tensors="pt"
    )
    clf = FineTuneClassifier(
        BagOfWordsEncoder(), lr=1e-2, max_epochs=15, random_state=0
    )
    clf.fit({k: v.numpy() for k, v in encoded.items()}, labels)
    assert clf.score(encoded, labels) > 0.9


def test_skorch_tokenizer_transformer_in_a_pipeline(reviews, tmp_path):
    transformers = pytest.importorskip("transformers")
    from sklearn.pipeline import make_pipeline
    from skorch.hf import HuggingfacePretrainedTokenizer
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = sorted({w for t in reviews[0] for w in t.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]"
    )
    tokenizer.save_pretrained(tmp_path / "tok")
    texts, labels = reviews
    pipe = make_pipeline(
        HuggingfacePretrainedTokenizer(str(tmp_path / "tok"), max_length=16),
        FineTuneClassifier(
            BagOfWordsEncoder(vocab_size=len(vocab)),
            lr=1e-2,
            max_epochs=15,
            random_state=0,
        ),
    )
    pipe.fit(texts, labels)
    assert pipe.score(texts, labels) > 0.9


class WidthTokenizer(WordTokenizer):
    """Records the padded width of every batch it tokenizes."""

    def __call__(self, first, second=None, **kwargs):
        encoded = super().__call__(first, second, **kwargs)
        self.calls[-1]["width"] = encoded["input_ids"].shape[1]
        return encoded


class WidthTextBackbone(TextBackbone):
    def tokenizer(self):
        return WidthTokenizer()


def mixed_length_texts(n=96):
    rng = np.random.RandomState(0)
    words = ["good", "bad", "food", "the", "service", "was", "really"]
    texts = [" ".join(rng.choice(words, size=rng.randint(1, 40))) for _ in range(n)]
    return texts, np.array(["good" in t.split()[:1] for t in texts])


def padded_tokens_per_epoch(group_by_length):
    texts, y = mixed_length_texts()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = WidthTextBackbone(BagOfWordsEncoder())
    clf = FineTuneClassifier(
        backbone,
        max_epochs=2,
        batch_size=8,
        cache=False,
        group_by_length=group_by_length,
        random_state=0,
    ).fit(texts, y)
    # Training batches: 2 epochs of 12 (the probe tokenizes 1 text, the
    # token count 96 at once).
    batches = [c for c in clf.tokenizer_.calls if c["n"] == 8]
    assert len(batches) == 2 * len(texts) // 8
    return sum(c["n"] * c["width"] for c in batches[-len(texts) // 8 :])


def test_group_by_length_pads_less():
    grouped = padded_tokens_per_epoch(True)
    shuffled = padded_tokens_per_epoch(False)
    assert grouped < 0.75 * shuffled


@pytest.mark.parametrize("freeze", ["all", 2])
def test_group_by_length_gives_the_same_model_with_and_without_cache(
    reviews, freeze, tiny_bert_encoder
):
    # Lengths are counted on the texts, so raw texts, cached token states
    # (freeze=2 of a BERT) and cached pooled features are grouped alike.
    from skorch.dataset import ValidSplit

    texts, labels = reviews
    backbone = text_backbone() if freeze == "all" else tiny_bert_encoder
    kwargs = dict(
        freeze=freeze,
        group_by_length=True,
        train_split=ValidSplit(0.25, stratified=True, random_state=0),
        max_epochs=3,
        batch_size=8,
        random_state=0,
    )
    on = FineTuneClassifier(backbone, **kwargs).fit(texts, labels)
    off = FineTuneClassifier(backbone, cache=False, **kwargs).fit(texts, labels)
    assert on.cache_info_["enabled"] and not off.cache_info_["enabled"]
    assert isinstance(on.module_.split, TokenSplit) == (freeze == 2)
    np.testing.assert_allclose(
        on.history_[:, "train_loss"], off.history_[:, "train_loss"], atol=1e-5
    )
    np.testing.assert_allclose(
        on.predict_proba(texts), off.predict_proba(texts), atol=1e-5
    )


def test_group_by_length_refuses_a_training_set_it_cannot_map(reviews):
    texts, labels = reviews

    def first_half(dataset, y=None):
        # A split that builds new datasets instead of subsets of the fit data.
        half = len(texts) // 2
        return TextDataset(texts[:half], labels[:half]), TextDataset(
            texts[half:], labels[half:]
        )

    clf = make_text_clf(max_epochs=1, group_by_length=True, train_split=first_half)
    with pytest.raises(ValueError, match=r"group_by_length=True groups the samples"):
        clf.fit(texts, labels)


# -- empty texts ----------------------------------------------------------------

# Empty reviews and messages are common in real data; one comes first here.
EMPTY_FIRST = ["", "good food", "", "bad food"] * 4
EMPTY_FIRST_Y = np.array([0, 1, 0, 0] * 4)


@pytest.mark.parametrize(
    ("kind", "split", "freeze"),
    [
        ("text", None, None),
        ("text", "valid", "all"),  # the cached prefix of empty texts too
        ("pairs", "valid", None),
        ("pairs", None, "all"),
    ],
)
def test_empty_strings_train_like_any_other_text(kind, split, freeze):
    # skorch reads a list of strings as a list of containers and indexes the
    # first sample: an empty one raised IndexError in every scoring callback.
    from skorch.callbacks import EpochScoring
    from skorch.dataset import ValidSplit

    X = EMPTY_FIRST if kind == "text" else [("", t) for t in EMPTY_FIRST]
    X_before = list(X)
    clf = make_text_clf(
        max_epochs=2,
        freeze=freeze,
        train_split=ValidSplit(4, stratified=True) if split else None,
        callbacks=[EpochScoring("accuracy", on_train=True, name="train_acc")],
    ).fit(X, EMPTY_FIRST_Y)
    assert clf.input_spec_.kind == kind
    assert set(clf.history_[-1]) >= {"train_acc", *(["valid_acc"] if split else [])}
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.isfinite(proba).all()
    # Every empty text is the same input, wherever it stands.
    np.testing.assert_array_equal(proba[0], proba[2])
    assert X == X_before


def test_an_empty_text_tokenizes(tiny_bert_encoder):
    clf = FineTuneClassifier(tiny_bert_encoder, max_epochs=1, random_state=0)
    clf.fit(EMPTY_FIRST, EMPTY_FIRST_Y)
    batch = clf._collator.encode(["", "good food"])
    assert batch["attention_mask"].sum(1).tolist() == [2, 4]  # [CLS] [SEP] ...
    assert np.isfinite(clf.predict_proba([""])).all()
    # A tokenizer without special tokens gives an empty text no token at all.
    words = make_text_clf(max_epochs=1).fit(EMPTY_FIRST, EMPTY_FIRST_Y)
    assert words._collator.encode([""])["input_ids"].shape == (1, 0)
    assert np.isfinite(words.predict_proba(["", ""])).all()


def test_validated_texts_are_indexed_by_sample():
    from skorch.utils import multi_indexing

    texts = as_texts(["", "good", "bad"])
    assert texts.dtype == object and texts.shape == (3,)
    assert multi_indexing(texts, np.array([0, 2])).tolist() == ["", "bad"]
    pairs = as_texts([("", "a"), ("b", "c")])
    assert pairs.shape == (2,) and pairs[0] == ("", "a")
