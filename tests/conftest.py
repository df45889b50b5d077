"""Shared tiny backbones and data for the test suite."""

import os

# scikit-learn runs its array-API dispatch check only when SciPy's array API
# support is switched on, which must happen before SciPy is imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np
import pytest
import torch
from torch import nn

from sktune import Backbone


def mlp_backbone(n_in: int = 8, width: int = 16) -> nn.Sequential:
    """Three linear blocks; a tiny stand-in for a pretrained tabular network."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(n_in, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(width, width),
            nn.ReLU(),
        )


class TinyCNN(nn.Module):
    """A non-Sequential CNN with BatchNorm: stem, two stages, global pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.stage1 = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.stage2 = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        # Children run in an order that differs from their definition order
        # only in the pooling; the block map follows the forward pass.
        x = self.stem(x)
        x = self.stage1(x)
        x = self.stage2(x)
        return self.pool(x).flatten(1)


def tiny_cnn() -> TinyCNN:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TinyCNN()


@pytest.fixture(scope="module")
def blobs():
    """A 3-class tabular problem with 8 features that a small MLP learns fast."""
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=150, n_features=8, centers=3, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    return X, y


@pytest.fixture(scope="module")
def images():
    """8x8 digit images as float N x 1 x 8 x 8, classes 0-2."""
    from sklearn.datasets import load_digits

    X, y = load_digits(n_class=3, return_X_y=True)
    return (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)[:120], y[:120]


def state_snapshot(module: nn.Module) -> dict:
    """Parameters and buffers, cloned, by name."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- a tiny text model: tokenizer and encoder, no Hugging Face download ------


class WordTokenizer:
    """Whitespace tokenizer with the call signature of a transformers tokenizer.

    Words map to ids by a stable hash; pairs are joined by a separator id.
    Batches are padded to their longest member when ``padding=True``.
    """

    model_max_length = 64
    vocab_size = 97

    def __init__(self):
        self.calls = []

    def _ids(self, text):
        return [
            2 + sum(map(ord, w)) % (self.vocab_size - 2) for w in text.lower().split()
        ]

    def __call__(
        self, first, second=None, *, padding, truncation, max_length, return_tensors
    ):
        self.calls.append(
            {"padding": padding, "max_length": max_length, "n": len(first)}
        )
        rows = [
            self._ids(a) + ([1, *self._ids(b)] if second is not None else [])
            for a, b in zip(first, second or [None] * len(first), strict=True)
        ]
        rows = [r[:max_length] if truncation else r for r in rows]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class BagOfWordsEncoder(nn.Module):
    """Embeddings, then two layers; mean-pools over the attention mask."""

    def __init__(self, vocab_size=97, width=16):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, width)
        self.layer1 = nn.Linear(width, width)
        self.layer2 = nn.Linear(width, width)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.layer1(self.embeddings(input_ids)))
        h = self.layer2(h)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1)


class TextBackbone(Backbone):
    """A Backbone that states its tokenizer, as a Hugging Face one does."""

    def tokenizer(self):
        return WordTokenizer()


def text_backbone() -> TextBackbone:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TextBackbone(BagOfWordsEncoder())


@pytest.fixture(scope="module")
def reviews():
    """Short synthetic reviews whose label is carried by one word."""
    rng = np.random.RandomState(0)
    filler = [
        "the",
        "food",
        "was",
        "service",
        "really",
        "quite",
        "place",
        "staff",
        "very",
    ]
    texts, labels = [], []
    for i in range(120):
        label = i % 2
        words = list(rng.choice(filler, size=rng.randint(2, 8)))
        words.insert(rng.randint(len(words) + 1), "great" if label else "awful")
        texts.append(" ".join(words))
        labels.append("pos" if label else "neg")
    return texts, np.array(labels)


def save_tiny_hf_encoder(path, texts, family: str = "bert"):
    """A tiny random-init Hugging Face encoder and a word-level tokenizer, on disk."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing

    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    size = dict(vocab_size=len(vocab), max_position_embeddings=64)
    if family == "bert":
        config = transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=48,
            **size,
        )
        model_class = transformers.BertModel
    else:
        config = transformers.DistilBertConfig(
            dim=32, n_layers=3, n_heads=2, hidden_dim=48, **size
        )
        model_class = transformers.DistilBertModel
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
