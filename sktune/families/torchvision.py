"""torchvision models: ``"torchvision:NAME"`` specs, stages, classifiers.

Block maps:

- ResNet family: the stem (``conv1``, ``bn1``, ``relu``, ``maxpool``), then
  ``layer1`` to ``layer4``;
- models with a ``features`` ``nn.Sequential`` (EfficientNet, MobileNet
  V2/V3, ConvNeXt, VGG, DenseNet, ...): the children of ``features``; what
  remains of the ``classifier`` before its final ``nn.Linear`` (a norm, a
  pre-logits layer) joins the last block.

The final classification layer is in no block; a spec's model has it
replaced by ``nn.Identity``. Vision transformers are in
:mod:`sktune.families.vit`.
"""

from __future__ import annotations

import re

from torch import nn

from .._modules import under
from ._base import CNN_LR, BlockOf, Family, Loaded, did_you_mean, loaded

__all__ = ["TorchvisionFamily", "final_linear", "regex_block_of"]

_CLASSIFIER_ATTRS = ("fc", "classifier", "head")


class TorchvisionFamily(Family):
    name = "torchvision"
    spec_prefix = "torchvision"
    spec_example = "resnet18"

    def backbone_lr(self, module):
        return CNN_LR  # convolutional networks

    def matches(self, module):
        return type(module).__module__.startswith("torchvision.")

    def load(self, name, pretrained, kwargs, family_of):
        import torchvision.models as tvm

        if name not in tvm.list_models():
            raise ValueError(
                f"Backbone spec 'torchvision:{name}': torchvision has no model "
                f"{name!r}." + did_you_mean(name, tvm.list_models())
            )
        module = tvm.get_model(
            name, weights="DEFAULT" if pretrained else None, **kwargs
        )
        removed = family_of(module).remove_classifier(module)
        if removed is None:
            raise ValueError(
                f"Backbone spec 'torchvision:{name}': sktune does not know where the "
                f"classifier of torchvision's {type(module).__name__} is. Build the "
                "model yourself, replace its classifier by nn.Identity() and pass "
                "the module."
            )
        return Loaded(module, _weights_data_config(name), removed=removed)

    def remove_classifier(self, module):
        for attr in _CLASSIFIER_ATTRS:
            name = final_linear(module, attr)
            if name is not None:
                parent, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent), child, nn.Identity())
                return (name,)
        return None

    def block_of(self, module):
        tvm = loaded("torchvision.models")
        if tvm is not None and isinstance(module, tvm.ResNet):
            return regex_block_of(
                [(r"(?:conv1|bn1)(?:\.|$)", 0), (r"layer(\d+)(?:\.|$)", 0)],
                classifier="fc",
                rest=len(
                    [n for n, _ in module.named_children() if n.startswith("layer")]
                ),
            )
        features = getattr(module, "features", None)
        if isinstance(features, nn.Sequential) and len(features):
            return _features_block_of(module, features)
        return None


def _features_block_of(module: nn.Module, features: nn.Sequential) -> BlockOf:
    # Children by position (DenseNet names them conv0, denseblock1, ...).
    index = {name: i for i, (name, _) in enumerate(features.named_children())}
    last = max(
        (
            i
            for i, child in enumerate(features)
            if any(True for _ in child.parameters())
            or any(True for _ in child.buffers())
        ),
        default=0,
    )
    classifier = final_linear(module, "classifier")

    def block_of(name: str) -> int | None:
        if classifier is not None and under(name, classifier):
            return None
        if name.startswith("features."):
            return index[name.split(".", 2)[1]]
        return last

    return block_of


def final_linear(module: nn.Module, name: str) -> str | None:
    """Name of the final classification layer under ``name``, if it is Linear.

    Only the last child counts: once sktune has replaced it by ``nn.Identity``
    there is no classifier left, and the layers before it are features.
    """
    head = getattr(module, name, None)
    if isinstance(head, nn.Linear):
        return name
    if isinstance(head, nn.Sequential) and len(head):
        last_name, last = list(head.named_children())[-1]
        if isinstance(last, nn.Linear):
            return f"{name}.{last_name}"
    return None


def regex_block_of(
    rules: list[tuple[str, int]], *, classifier: str | None, rest: int
) -> BlockOf:
    """Assign names by the first matching ``(regex, offset)`` rule.

    A rule whose regex captures a number gives ``offset + number``, one
    without a capture gives ``offset``. Names under ``classifier`` are in no
    block; names that no rule matches go to block ``rest`` (the last one).
    """
    compiled = [(re.compile(pattern), offset) for pattern, offset in rules]

    def block_of(name: str) -> int | None:
        if classifier is not None and under(name, classifier):
            return None
        for pattern, offset in compiled:
            match = pattern.match(name)
            if match:
                return offset + (int(match.group(1)) if match.groups() else 0)
        return rest

    return block_of


def _weights_data_config(name: str) -> dict | None:
    """The preprocessing of the model's default torchvision weights."""
    import torchvision.models as tvm

    try:
        transforms = tvm.get_model_weights(name).DEFAULT.transforms()
        crop = int(transforms.crop_size[0])
        resize = int(transforms.resize_size[0])
        interpolation = getattr(
            transforms.interpolation, "value", transforms.interpolation
        )
        return {
            "mean": tuple(float(v) for v in transforms.mean),
            "std": tuple(float(v) for v in transforms.std),
            "input_size": (3, crop, crop),
            "interpolation": str(interpolation),
            "crop_pct": crop / resize,
        }
    except (AttributeError, KeyError, ValueError, IndexError, TypeError):
        return None
