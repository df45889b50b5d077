"""Block maps of known families: freeze=k freezes exactly the first k blocks.

Tiny configurations with random weights; nothing is downloaded or trained.
"""

import pytest
import torch
from conftest import tiny_cnn
from torch import nn

from sktune.blocks import block_map, record_child_order
from sktune.freeze import apply_freeze, plan_freeze, set_frozen_eval

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")
transformers = pytest.importorskip("transformers")


def frozen_after(module: nn.Module, freeze) -> tuple[set, set]:
    """Apply ``freeze`` through the block map; return (frozen, trainable) names."""
    plan = plan_freeze(module, block_map(module), freeze)
    apply_freeze(module, plan)
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    return frozen, trainable


def under(module: nn.Module, *prefixes: str) -> set:
    return {
        n
        for n, _ in module.named_parameters()
        if any(n == p or n.startswith(p + ".") for p in prefixes)
    }


def check_partition(module: nn.Module, excluded: tuple[str, ...] = ()) -> list:
    """Every parameter is in exactly one block, except the classifier's."""
    blocks = block_map(module)
    names = [p for b in blocks for p in b.params]
    assert len(names) == len(set(names))
    assert set(names) == set(dict(module.named_parameters())) - under(module, *excluded)
    # Input side first: blocks follow the registration order of parameters.
    order = {n: i for i, (n, _) in enumerate(module.named_parameters())}
    firsts = [min(order[p] for p in b.params) for b in blocks]
    assert firsts == sorted(firsts)
    return blocks


# -- timm ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=0)


def test_timm_resnet_blocks_follow_group_matcher(timm_resnet):
    blocks = check_partition(timm_resnet)
    assert [b.name for b in blocks] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert blocks[0].modules == ("conv1", "bn1", "act1", "maxpool")

    frozen, trainable = frozen_after(timm_resnet, 1)
    assert frozen == {"conv1.weight", "bn1.weight", "bn1.bias"}
    frozen, trainable = frozen_after(timm_resnet, 2)
    assert frozen == under(timm_resnet, "conv1", "bn1", "layer1")
    assert trainable == under(timm_resnet, "layer2", "layer3", "layer4")
    frozen, trainable = frozen_after(timm_resnet, -1)
    assert trainable == under(timm_resnet, "layer4")


def test_timm_frozen_batchnorm_runs_in_eval(timm_resnet):
    plan = plan_freeze(timm_resnet, block_map(timm_resnet), 2)
    timm_resnet.train()
    set_frozen_eval(timm_resnet, plan)
    assert not timm_resnet.bn1.training
    assert not timm_resnet.layer1[0].bn1.training
    assert timm_resnet.layer2[0].bn1.training


def test_timm_classifier_is_in_no_block():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    blocks = check_partition(model, excluded=("fc",))
    _frozen, trainable = frozen_after(model, len(blocks))
    assert trainable == {"fc.weight", "fc.bias"}


def test_timm_vit_stem_blocks_and_final_norm():
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2, img_size=32
    )
    blocks = check_partition(vit)
    assert [b.name for b in blocks] == ["patch_embed", "blocks.0", "blocks.1"]
    frozen, _ = frozen_after(vit, 1)
    assert frozen == {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
    }
    frozen, trainable = frozen_after(vit, 2)
    assert trainable == under(vit, "blocks.1", "norm")


def test_timm_efficientnet_conv_head_joins_last_block():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    blocks = check_partition(model)
    assert len(blocks) == 8  # stem + 7 stages
    assert blocks[0].params == ("conv_stem.weight", "bn1.weight", "bn1.bias")
    assert {"conv_head", "bn2"} <= set(blocks[-1].modules)
    _, trainable = frozen_after(model, -1)
    assert trainable == under(model, "blocks.6", "conv_head", "bn2")


# -- torchvision -------------------------------------------------------------------


def test_torchvision_resnet_stem_then_layers():
    model = tvm.resnet18(weights=None)
    blocks = check_partition(model, excluded=("fc",))
    assert [b.name for b in blocks] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert blocks[0].modules == ("conv1", "bn1", "relu", "maxpool")
    frozen, trainable = frozen_after(model, 3)
    assert frozen == under(model, "conv1", "bn1", "layer1", "layer2")
    assert trainable == under(model, "layer3", "layer4", "fc")


@pytest.mark.parametrize(
    ("factory", "n_features", "classifier", "head_rest"),
    [
        (tvm.efficientnet_b0, 9, "classifier.1", ()),
        (tvm.mobilenet_v3_small, 13, "classifier.3", ("classifier.0",)),
    ],
)
def test_torchvision_features_children(factory, n_features, classifier, head_rest):
    model = factory(weights=None)
    blocks = check_partition(model, excluded=(classifier,))
    assert [b.name for b in blocks] == [f"features.{i}" for i in range(n_features)]
    frozen, trainable = frozen_after(model, 2)
    assert frozen == under(model, "features.0", "features.1")
    # Pre-logits layers of the classifier train with the last block.
    assert set(blocks[-1].params) == under(
        model, f"features.{n_features - 1}", *head_rest
    )
    _, trainable = frozen_after(model, n_features)
    assert trainable == under(model, classifier)


def test_torchvision_classifier_replaced_by_identity_leaves_no_exclusion():
    model = tvm.mobilenet_v3_small(weights=None)
    model.classifier[3] = nn.Identity()
    blocks = check_partition(model)
    assert "classifier.0.weight" in blocks[-1].params


def test_torchvision_vit_patch_embedding_then_layers():
    vit = tvm.VisionTransformer(
        image_size=32,
        patch_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )
    blocks = check_partition(vit, excluded=("heads.head",))
    assert len(blocks) == 3
    frozen, _ = frozen_after(vit, 1)
    assert frozen == {
        "class_token",
        "conv_proj.weight",
        "conv_proj.bias",
        "encoder.pos_embedding",
    }
    _, trainable = frozen_after(vit, 2)
    assert trainable == under(
        vit, "encoder.layers.encoder_layer_1", "encoder.ln", "heads.head"
    )


# -- Hugging Face --------------------------------------------------------------------


def bert_config():
    return transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=100,
    )


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return transformers.BertModel(bert_config())


def test_bert_embeddings_layers_pooler_last(bert):
    blocks = check_partition(bert)
    assert [b.name for b in blocks] == [
        "embeddings",
        "encoder.layer.0",
        "encoder.layer.1",
    ]
    assert "pooler" in blocks[-1].modules
    frozen, trainable = frozen_after(bert, 1)
    assert frozen == under(bert, "embeddings")
    frozen, trainable = frozen_after(bert, 2)
    assert trainable == under(bert, "encoder.layer.1", "pooler")


def test_hf_wrapper_names_carry_its_prefix(bert):
    from sktune._hf import HFEncoder

    encoder = HFEncoder(bert)
    blocks = check_partition(encoder)
    assert blocks[0].modules == ("model.embeddings",)
    frozen, _ = frozen_after(encoder, 1)
    assert frozen == under(encoder, "model.embeddings")


def test_hf_task_model_head_is_in_no_block():
    model = transformers.BertForSequenceClassification(bert_config())
    blocks = check_partition(model, excluded=("classifier",))
    assert blocks[0].name == "bert.embeddings"
    _, trainable = frozen_after(model, len(blocks))
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_distilbert_transformer_layers():
    config = transformers.DistilBertConfig(
        dim=32, n_layers=2, n_heads=2, hidden_dim=37, vocab_size=100
    )
    model = transformers.DistilBertModel(config)
    blocks = check_partition(model)
    assert [b.name for b in blocks] == [
        "embeddings",
        "transformer.layer.0",
        "transformer.layer.1",
    ]
    frozen, _ = frozen_after(model, 2)
    assert frozen == under(model, "embeddings", "transformer.layer.0")


# -- generic fallback, unchanged ----------------------------------------------------


def test_sequential_and_forward_order_fallback():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3))
    assert [b.modules for b in block_map(seq)] == [("0", "1"), ("2",)]

    cnn = tiny_cnn()
    order, remove = record_child_order(cnn)
    cnn(torch.zeros(1, 1, 8, 8))
    remove()
    assert [b.name for b in block_map(cnn, order)] == ["stem", "stage1", "stage2"]
    with pytest.raises(ValueError, match="needs the order of a forward pass"):
        block_map(cnn)
