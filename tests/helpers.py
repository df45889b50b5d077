"""Tiny backbones and models for the test suite (fixtures are in conftest.py)."""

import pytest
import torch
from torch import nn

from sktune import Backbone, FineTuneClassifier
from sktune.blocks import block_map, record_child_order
from sktune.families import family_of
from sktune.freeze import apply_freeze, plan_freeze


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


def state_snapshot(module: nn.Module) -> dict:
    """Parameters and buffers, cloned, by name."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold the same parameters and buffers, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


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


def tiny_bert_config(**kwargs):
    """The configuration of :func:`tiny_bert`; ``kwargs`` override it."""
    transformers = pytest.importorskip("transformers")
    params = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=100,
        max_position_embeddings=32,
    )
    return transformers.BertConfig(**{**params, **kwargs})


def tiny_bert():
    """A 2-layer BERT in memory, seeded random weights, no tokenizer.

    The saved encoder with a tokenizer is the ``tiny_bert_encoder`` fixture.
    """
    transformers = pytest.importorskip("transformers")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.BertModel(tiny_bert_config())


def tiny_distilbert(n_layers: int = 2):
    """A DistilBERT in memory of :func:`tiny_bert`'s width, seeded."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DistilBertConfig(
        dim=32, n_layers=n_layers, n_heads=2, hidden_dim=37, vocab_size=100
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.DistilBertModel(config)


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


#: A one-block timm ViT of 32x32 input: ``timm.create_model(name, **TINY_VIT)``.
TINY_VIT = {"depth": 1, "img_size": 32, "embed_dim": 24, "num_heads": 2}


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


def family_blocks(module: nn.Module, order=None) -> list:
    """The block map as the builder makes it: the family's assignment, if any."""
    return block_map(module, order, family_of(module).block_of(module))


def frozen_after(module: nn.Module, freeze) -> tuple[set, set]:
    """Apply ``freeze`` through the block map; return (frozen, trainable) names."""
    plan = plan_freeze(module, family_blocks(module), freeze)
    apply_freeze(module, plan)
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    return frozen, trainable


def names_under(module: nn.Module, *prefixes: str) -> set:
    return {
        n
        for n, _ in module.named_parameters()
        if any(n == p or n.startswith(p + ".") for p in prefixes)
    }


def check_partition(module: nn.Module, excluded: tuple[str, ...] = ()) -> list:
    """Every parameter is in exactly one block, except the classifier's."""
    blocks = family_blocks(module)
    names = [p for b in blocks for p in b.params]
    assert len(names) == len(set(names))
    assert set(names) == set(dict(module.named_parameters())) - names_under(
        module, *excluded
    )
    # Input side first: blocks follow the registration order of parameters.
    order = {n: i for i, (n, _) in enumerate(module.named_parameters())}
    firsts = [min(order[p] for p in b.params) for b in blocks]
    assert firsts == sorted(firsts)
    return blocks


def make_classifier(backbone=None, **kwargs) -> FineTuneClassifier:
    """A seeded classifier of a few epochs (the MLP backbone by default)."""
    params = dict(max_epochs=5, lr=1e-2, random_state=0)
    params.update(kwargs)
    return FineTuneClassifier(
        backbone if backbone is not None else mlp_backbone(), **params
    )


def cnn_blocks(module: nn.Module) -> list:
    """The block map of a 1-channel CNN, its forward order probed on 8x8 input."""
    order, remove = record_child_order(module)
    module.eval()
    module(torch.zeros(1, 1, 8, 8))
    remove()
    return block_map(module, order)
