"""Put adapter layers into a training copy with PEFT, and find them again."""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from . import Adapter

__all__ = ["adapter_params", "attach", "candidates", "merge"]


def supports(kind: str, module: nn.Module) -> bool:
    """Whether PEFT's ``kind`` adapts modules like ``module``."""
    if isinstance(module, nn.MultiheadAttention):
        return kind == "lora"
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        # LoRA needs its rank divisible by the groups: depthwise convolutions
        # (one group per channel) are left out.
        return kind == "ia3" or module.groups == 1
    return isinstance(module, nn.Conv1d) and kind == "lora" and module.groups == 1


def _inside_attention(backbone: nn.Module) -> set[str]:
    """Submodules of ``nn.MultiheadAttention`` (its ``out_proj`` is not called
    as a module, so an adapter on it would never run)."""
    return {
        f"{name}.{sub}"
        for name, m in backbone.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for sub, _ in m.named_modules()
        if sub
    }


def _matches(name: str, pattern: str) -> bool:
    return (
        name == pattern
        or name.endswith("." + pattern)
        or fnmatch.fnmatch(name, pattern)
    )


def candidates(
    backbone: nn.Module, adapter: Adapter, family
) -> tuple[list[str], list[str]]:
    """The modules ``adapter`` would adapt (anywhere), and its feed-forward ones.

    Raises
    ------
    ValueError
        When a target matches no module, or a module the kind cannot adapt.
    """
    kind = adapter.kind
    skip = _inside_attention(backbone)
    named = [(n, m) for n, m in backbone.named_modules() if n and n not in skip]
    if adapter.target is None:
        default = family.adapter_targets(backbone, kind)
        if default is not None:
            return default
        return [n for n, m in named if supports(kind, m)], []
    chosen: list[str] = []
    for pattern in adapter.target:
        hits = [(n, m) for n, m in named if _matches(n, pattern)]
        if not hits:
            examples = [n for n, m in named if supports(kind, m)][:5]
            raise ValueError(
                f"adapter__target entry {pattern!r} matches no module of the "
                f"backbone; modules {kind} can adapt look like: {examples}."
            )
        unsupported = [
            f"{n} ({type(m).__name__})" for n, m in hits if not supports(kind, m)
        ]
        if unsupported:
            raise ValueError(
                f"adapter__target entry {pattern!r} matches modules that {kind} "
                f"cannot adapt: {unsupported[:5]}; it adapts nn.Linear, nn.Conv2d"
                + (
                    " (not depthwise), nn.Conv1d and nn.MultiheadAttention."
                    if kind == "lora"
                    else "."
                )
            )
        chosen += [n for n, _ in hits if n not in chosen]
    return chosen, []


def attach(
    backbone: nn.Module, adapter: Adapter, trainable: set[str], family, describe: str
) -> list[str]:
    """Inject ``adapter`` into the modules of ``backbone`` that may train.

    Parameters
    ----------
    backbone : nn.Module
        The private training copy, modified in place.
    adapter : Adapter
    trainable : set of str
        Parameter names the freeze policy leaves trainable: only modules all
        of whose parameters are among them get adapters.
    family : Family
        The backbone's model family (its default targets).
    describe : str
        The freeze policy, for the error when nothing is left to adapt.

    Returns
    -------
    list of str
        The names of the adapted modules.
    """
    from peft import IA3Config, LoraConfig, inject_adapter_in_model

    names, feedforward = candidates(backbone, adapter, family)
    modules = dict(backbone.named_modules())
    eligible = [
        n
        for n in names
        if all(f"{n}.{p}" in trainable for p, _ in modules[n].named_parameters())
    ]
    if not eligible:
        raise ValueError(
            f"adapter={adapter.kind!r} has no module to adapt: {describe} leaves none "
            f"of the {len(names)} modules it would adapt trainable "
            f"(e.g. {names[:3]}); freeze fewer blocks."
        )
    exact = "^(?:" + "|".join(map(re.escape, eligible)) + ")$"
    if adapter.kind == "lora":
        config = LoraConfig(
            r=adapter.r,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            target_modules=exact,
        )
    else:
        ff = [n for n in eligible if n in set(feedforward)]
        config = IA3Config(
            target_modules=exact,
            feedforward_modules="^(?:" + "|".join(map(re.escape, ff)) + ")$"
            if ff
            else [],
        )
    inject_adapter_in_model(config, backbone)
    return eligible


def adapter_params(module: nn.Module) -> set[str]:
    """Names of the adapter parameters of ``module`` (PEFT's layers only)."""
    names: set[str] = set()
    for prefix, layer in module.named_modules():
        for attr in getattr(layer, "adapter_layer_names", ()):
            container = getattr(layer, attr, None)
            if isinstance(container, (nn.ModuleDict, nn.ParameterDict)):
                for name, _ in container.named_parameters():
                    names.add(".".join(filter(None, (prefix, attr, name))))
    return names


def merge(module: nn.Module) -> int:
    """Merge every adapter of ``module`` into its base weights; return how many."""
    merged = 0
    for layer in module.modules():
        if hasattr(layer, "adapter_layer_names") and hasattr(layer, "merge"):
            if not getattr(layer, "merged", False):
                layer.merge()
                merged += 1
    return merged
