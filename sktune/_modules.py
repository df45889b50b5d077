"""Small functions on ``nn.Module``: they know nothing about estimators."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "eval_mode",
    "has_lazy",
    "is_lazy",
    "module_name",
    "same_output",
    "under",
]


@contextmanager
def eval_mode(module: nn.Module):
    """Eval mode inside, every submodule's previous mode restored after."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode


def is_lazy(param) -> bool:
    """Whether ``param`` is an uninitialized parameter of a lazy module."""
    return isinstance(param, nn.parameter.UninitializedParameter)


def has_lazy(module: nn.Module) -> bool:
    """Whether ``module`` still has uninitialized (lazy) parameters."""
    return any(is_lazy(p) for p in module.parameters())


def under(name: str, prefix: str) -> bool:
    """Whether the dotted ``name`` is ``prefix`` or lies inside it (``""``: all)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def module_name(root: nn.Module, target: nn.Module) -> str | None:
    """The qualified name of ``target`` inside ``root`` (``""``: root itself)."""
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def same_output(a: torch.Tensor, b: torch.Tensor, *, rtol: float, atol: float) -> bool:
    """Whether two outputs agree in shape and, to the tolerances, in value."""
    return a.shape == b.shape and torch.allclose(
        a.float(), b.float(), rtol=rtol, atol=atol
    )
