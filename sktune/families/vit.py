"""Vision transformers of timm and torchvision: blocks, classifier, cut.

A ViT is no chain of its children: position embeddings and the class token
are added between them, so its stages are spelled out here per library.

- Block map: timm's ``group_matcher`` for timm ViTs; for torchvision's
  ``VisionTransformer`` the patch embedding (``conv_proj``, ``class_token``,
  ``encoder.pos_embedding``), then each ``encoder.layers`` block, the final
  ``encoder.ln`` joining the last block.
- Cut: after the patch and position embedding and the frozen layers; the
  cached value is each image's ``(T, D)`` token states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cache.split import NoCache, Split
from ..heads import pool_features
from ._base import Family, loaded
from .timm import timm_block_of, timm_classifier, timm_data_config
from .torchvision import final_linear, regex_block_of

__all__ = ["ViTFamily", "ViTSplit", "vit_kind"]

_PARTS = {
    # library: (the layers' Sequential, the modules that run after the layers)
    "timm": ("blocks", ("norm", "attn_pool", "fc_norm", "head_drop", "head")),
    "torchvision": ("encoder.layers", ("encoder.ln", "heads")),
}


def vit_kind(module: nn.Module) -> str | None:
    """``"timm"`` or ``"torchvision"`` for their vision transformers, else None."""
    if all(
        hasattr(module, a)
        for a in ("patch_embed", "_pos_embed", "norm_pre", "norm", "forward_head")
    ) and isinstance(getattr(module, "blocks", None), nn.Sequential):
        return "timm"
    encoder = getattr(module, "encoder", None)
    if (
        all(hasattr(module, a) for a in ("_process_input", "class_token", "heads"))
        and hasattr(encoder, "pos_embedding")
        and isinstance(getattr(encoder, "layers", None), nn.Sequential)
    ):
        return "torchvision"
    return None


class ViTFamily(Family):
    name = "vit"

    def matches(self, module):
        return vit_kind(module) is not None

    def backbone_lr(self, module):
        # In the range vision transformers are tuned in (no pretrained ViT
        # installs offline here to measure it on).
        return 3e-5

    def block_of(self, module):
        if vit_kind(module) == "timm":
            return timm_block_of(module) if loaded("timm") is not None else None
        return regex_block_of(
            [
                (r"(?:conv_proj|class_token|encoder\.pos_embedding)(?:\.|$)", 0),
                (r"encoder\.layers\.encoder_layer_(\d+)(?:\.|$)", 1),
            ],
            classifier=final_linear(module, "heads"),
            rest=len(module.encoder.layers),
        )

    def data_config(self, module):
        if vit_kind(module) != "timm":
            return None
        config = timm_data_config(module)
        # A ViT built for another size (img_size=...) takes only that size;
        # timm's config still states the pretrained one.
        img_size = getattr(getattr(module, "patch_embed", None), "img_size", None)
        if (
            config is not None
            and isinstance(img_size, (tuple, list))
            and len(img_size) == 2
        ):
            config["input_size"] = (config["input_size"][0], *map(int, img_size))
        return config

    def removed_classifier(self, module):
        return timm_classifier(module) if vit_kind(module) == "timm" else ()

    def remove_classifier(self, module):
        if vit_kind(module) != "torchvision":
            return None
        module.heads.head = nn.Identity()
        return ("heads.head",)

    def plan_cut(self, backbone, static, blocks, order):
        return plan_vit_cut(backbone, static)


@dataclass(frozen=True)
class ViTSplit(Split):
    """The patch and position embedding and the first ``n_layers`` layers.

    Attributes
    ----------
    kind : {"timm", "torchvision"}
    n_layers : int
        Transformer layers in the cached prefix.
    """

    kind: str
    n_layers: int

    what = "running the vision transformer from cached token states"

    def prefix(self, net, X=None, **inputs):
        backbone = net.backbone
        x = net.input(X)
        if self.kind == "timm":
            h = backbone.norm_pre(
                backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(x)))
            )
        else:
            h = backbone._process_input(x)
            h = torch.cat([backbone.class_token.expand(len(h), -1, -1), h], dim=1)
            h = backbone.encoder.dropout(h + backbone.encoder.pos_embedding)
        return _layers(backbone, self.kind)[: self.n_layers](h)

    def suffix(self, net, cached):
        backbone = net.backbone
        h = _layers(backbone, self.kind)[self.n_layers :](cached)
        if self.kind == "timm":
            out = backbone.forward_head(backbone.norm(h))
        else:
            out = backbone.heads(backbone.encoder.ln(h)[:, 0])
        return pool_features(out, net.pooling)

    def key(self):
        return ("vit", self.kind, self.n_layers)


def _layers(backbone: nn.Module, kind: str) -> nn.Sequential:
    return backbone.get_submodule(_PARTS[kind][0])


def plan_vit_cut(backbone: nn.Module, static) -> Split | NoCache:
    """Cut a vision transformer after its embedding and last frozen layer.

    The prefix is everything but the layers from the cut on and the modules
    after the layers: all its parameters must be frozen and all its modules
    in eval mode (whatever the embedding uses: class, distillation or
    register tokens, position embeddings, dropouts, a pre-norm).
    """
    kind = vit_kind(backbone)
    layers_path, tail = _PARTS[kind]
    layers = [f"{layers_path}.{n}" for n, _ in _layers(backbone, kind).named_children()]

    def static_before(cut: int) -> bool:
        suffix = (*layers[cut:], *tail)

        def in_prefix(name: str) -> bool:
            return not any(name == m or name.startswith(f"{m}.") for m in suffix)

        def container(name: str) -> bool:
            # A module that holds suffix modules (the root, the layer list)
            # runs partly after the cut: its own mode does not matter.
            return not name or any(m.startswith(f"{name}.") for m in suffix)

        return not any(
            p.requires_grad for n, p in backbone.named_parameters() if in_prefix(n)
        ) and all(
            n in static.eval_modules
            for n, _ in backbone.named_modules()
            if in_prefix(n) and not container(n)
        )

    cut = next((c for c in range(len(layers), -1, -1) if static_before(c)), None)
    if cut is None:
        return NoCache("no frozen block at the input side")
    return ViTSplit(kind, cut)
