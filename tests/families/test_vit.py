"""Vision transformers of timm and torchvision: blocks and the token-state cut."""

import numpy as np
import pytest
import torch
from helpers import (
    check_partition,
    frozen_after,
    names_under,
    tiny_timm_vit,
    tiny_torchvision_vit,
)
from helpers import (
    make_classifier as make,
)

from sktune.cache import NoCache, StaticParts
from sktune.families.vit import ViTSplit, plan_vit_cut, vit_kind
from sktune.freeze import FreezePlan

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")


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
    assert trainable == names_under(vit, "blocks.1", "norm")


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
    assert trainable == names_under(
        vit, "encoder.layers.encoder_layer_1", "encoder.ln", "heads.head"
    )


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
    # Block 0 is the patch and position embedding.
    assert split == ViTSplit(vit_kind(on.module_.backbone), n_layers=freeze - 1)
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


def test_vision_transformer_cut_needs_every_embedding_parameter_frozen():
    # A distilled DeiT adds a distillation token in its embedding. With every
    # module in eval mode and every parameter before the layers frozen except
    # that token, nothing before the layers is static: no cut.
    deit = tiny_timm_vit("deit_tiny_distilled_patch16_224", depth=2)
    prefix = ("cls_token", "pos_embed", "dist_token", "patch_embed.", "blocks.0.")
    frozen = [n for n, _ in deit.named_parameters() if n.startswith(prefix)]
    plan = FreezePlan(frozen, tuple(n for n, _ in deit.named_modules()), None)

    def split_with(trainable: str):
        for name, param in deit.named_parameters():
            param.requires_grad_(name not in frozen or name == trainable)
        return plan_vit_cut(deit, StaticParts(deit, plan.eval_modules))

    assert split_with("dist_token") == NoCache("no frozen block at the input side")
    assert split_with("blocks.0.mlp.fc2.bias") == ViTSplit("timm", n_layers=0)
    assert split_with("none") == ViTSplit("timm", n_layers=1)
