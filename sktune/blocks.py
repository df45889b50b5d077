"""The block map: a backbone's ordered, freezable blocks, input side first.

``freeze=k`` means "the first k blocks of the block map", so the map decides
what a freeze depth means for every backbone:

- ``nn.Sequential``: its children, in order.
- any other module: its top-level children in the order a forward pass runs
  them (recorded with forward pre-hooks during the probe forward pass).

Children without parameters (activations, pooling, dropout) join the block
before them, so every block holds trainable weights; parameters registered
directly on the root module (e.g. a class token) join the first block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["Block", "block_map", "record_child_order"]


@dataclass(frozen=True)
class Block:
    """One freezable block of a backbone.

    Parameters
    ----------
    name : str
        Display name (the first child's name).
    modules : tuple of str
        Qualified names, relative to the backbone, of the submodules in this
        block. ``""`` stands for the backbone itself.
    params : tuple of str
        Qualified names of the parameters in this block.
    """

    name: str
    modules: tuple[str, ...]
    params: tuple[str, ...]


def record_child_order(module: nn.Module) -> tuple[list[str], callable]:
    """Register hooks that record the order in which top-level children run.

    Returns the list that fills up during the next forward pass and a function
    that removes the hooks.
    """
    order: list[str] = []
    handles = []
    for name, child in module.named_children():

        def hook(_mod, _args, _name=name):
            order.append(_name)

        handles.append(child.register_forward_pre_hook(hook))

    def remove():
        for handle in handles:
            handle.remove()

    return order, remove


def block_map(module: nn.Module, child_order: list[str] | None = None) -> list[Block]:
    """Return the ordered blocks of ``module``, input side first.

    Parameters
    ----------
    module : nn.Module
        The backbone.
    child_order : list of str, optional
        Top-level child names in the order a forward pass ran them (see
        :func:`record_child_order`). Required for modules that are not an
        ``nn.Sequential`` and have children.

    Raises
    ------
    ValueError
        When the forward pass does not run the children as an ordered chain
        (a child runs twice, interleaved with others), so "the first k blocks"
        has no meaning for this module.
    """
    children = [name for name, _ in module.named_children()]
    if not children:
        return [_block(module, "", [""])]
    if isinstance(module, nn.Sequential):
        order = children
    else:
        if child_order is None:
            raise ValueError(
                f"The block map of a {type(module).__name__} needs the order of a "
                "forward pass; got none."
            )
        order = _dedupe_order(module, child_order)
    return _group(module, order)


def _dedupe_order(module: nn.Module, child_order: list[str]) -> list[str]:
    order: list[str] = []
    for name in child_order:
        if name in order:
            if order[-1] == name:  # the same child called again in a row
                continue
            raise ValueError(
                f"Cannot split {type(module).__name__} into ordered blocks: its "
                f"child {name!r} runs again after {order[-1]!r} in forward, so "
                "'the first k blocks' is not defined. Pass freeze as 'all', None, or "
                "a list of parameter-name patterns (e.g. ['encoder.*']) instead."
            )
        order.append(name)
    if not order:
        raise ValueError(
            f"Cannot split {type(module).__name__} into ordered blocks: none of its "
            "children ran in the forward pass."
        )
    return order


def _group(module: nn.Module, order: list[str]) -> list[Block]:
    groups: list[list[str]] = []
    for name in order:
        has_params = any(True for _ in module.get_submodule(name).parameters())
        if has_params or not groups:
            groups.append([name])
        else:
            groups[-1].append(name)
    # A leading group without parameters joins the next one.
    if len(groups) > 1 and not _has_params(module, groups[0]):
        groups[1] = groups[0] + groups[1]
        del groups[0]
    blocks = [_block(module, names[0], names) for names in groups]
    root_params = tuple(name for name, _ in module.named_parameters(recurse=False))
    if root_params:
        first = blocks[0]
        blocks[0] = Block(first.name, first.modules, root_params + first.params)
    return blocks


def _has_params(module: nn.Module, names: Iterable[str]) -> bool:
    return any(
        True for name in names for _ in module.get_submodule(name).parameters()
    )


def _block(module: nn.Module, name: str, module_names: list[str]) -> Block:
    params: list[str] = []
    for mod_name in module_names:
        prefix = f"{mod_name}." if mod_name else ""
        params.extend(
            prefix + p for p, _ in module.get_submodule(mod_name).named_parameters()
        )
    return Block(name or type(module).__name__, tuple(module_names), tuple(params))
