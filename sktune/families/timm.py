"""timm models: ``"timm:NAME"`` specs, timm's own block grouping, data config.

The block map is timm's coarse parameter grouping (``group_matcher``: stem,
then each stage or block), the one timm computes layer-wise learning-rate
decay from. Parameters timm leaves unmatched (a final norm, a ``conv_head``)
join the last block; the classifier (``get_classifier()``) is in no block.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .._modules import module_name, under
from ._base import CNN_LR, BlockOf, Family, Loaded, did_you_mean, loaded

__all__ = ["TimmFamily", "timm_block_of", "timm_classifier", "timm_data_config"]


class TimmFamily(Family):
    name = "timm"
    spec_prefix = "timm"
    spec_example = "resnet18"

    def backbone_lr(self, module):
        return CNN_LR  # convolutional networks

    def matches(self, module):
        return loaded("timm") is not None and callable(
            getattr(module, "group_matcher", None)
        )

    def load(self, name, pretrained, kwargs, family_of):
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"Backbone spec 'timm:{name}': timm has no model {name!r}."
                + did_you_mean(name, timm.list_models())
            )
        # num_classes=0: pooled features, no classifier.
        module = timm.create_model(
            name, pretrained=pretrained, **{"num_classes": 0, **kwargs}
        )
        family = family_of(module)  # a vision transformer knows more
        return Loaded(
            module,
            family.data_config(module),
            removed=family.removed_classifier(module),
        )

    def block_of(self, module):
        return timm_block_of(module)

    def data_config(self, module):
        return timm_data_config(module)

    def removed_classifier(self, module):
        return timm_classifier(module)


def timm_classifier(module: nn.Module) -> tuple[str, ...]:
    """The pretrained classifier's names, from timm's ``pretrained_cfg``."""
    cfg = getattr(module, "pretrained_cfg", None)
    classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(classifier, str):
        return (classifier,)
    if isinstance(classifier, (list, tuple)):
        return tuple(classifier)
    return ()


class _Names:
    """Names posing as a module for timm's ``group_parameters``, which only
    reads ``named_parameters()``: buffers are grouped like parameters."""

    def __init__(self, names):
        self.names = names

    def named_parameters(self):
        return ((name, None) for name in self.names)


def timm_block_of(module: nn.Module) -> BlockOf | None:
    """Block of each parameter and buffer from timm's coarse ``group_matcher``."""
    from timm.models import group_parameters

    classifier = None
    get_classifier = getattr(module, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except (AttributeError, NotImplementedError, TypeError):
            head = None
        if isinstance(head, nn.Module):
            classifier = module_name(module, head)
    if classifier == "":  # the whole model is its own classifier: no grouping
        return None
    names = [
        n
        for n in [*dict(module.named_parameters()), *dict(module.named_buffers())]
        if classifier is None or not under(n, classifier)
    ]
    # A name that no pattern matches lands in timm's last group (the one for
    # "neck, head" layers); the sentinel tells which group that is.
    sentinel = "\x00sktune-unmatched"
    try:
        matcher = module.group_matcher(coarse=True)
    except (NotImplementedError, TypeError, AttributeError):
        return None  # a model without grouping: the generic rule applies
    group_of = group_parameters(_Names([*names, sentinel]), matcher, reverse=True)
    unmatched = group_of.pop(sentinel)
    n_groups = max(group_of.values(), default=-1) + 1
    if unmatched == n_groups - 1 and n_groups > 1:
        # Unmatched non-classifier layers (a final norm, a conv head) belong
        # to the feature extractor: they join the last real block.
        group_of = {n: min(g, n_groups - 2) for n, g in group_of.items()}
    return group_of.get


def timm_data_config(module: nn.Module) -> dict | None:
    """The pretrained preprocessing of a timm model, in sktune's terms."""
    if getattr(module, "pretrained_cfg", None) is None or loaded("timm") is None:
        return None
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(module)
    return {
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }
