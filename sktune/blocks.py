"""The block map: a backbone's ordered, freezable blocks, input side first.

``freeze=k`` means "the first k blocks of the block map", so the map decides
what a freeze depth means for every backbone. A known model family
(:mod:`sktune.families`: timm, torchvision, vision transformers, Hugging Face
encoders) assigns each parameter and buffer to a block (its
:meth:`~sktune.families.Family.block_of`, which the caller passes in: this
module knows no family); in every family the
final classification layer belongs to no block, so it trains unless
``freeze="all"``. Submodules without parameters or buffers (activations,
pooling, dropout) join the block of the module registered before them.

Otherwise a generic rule applies:

- ``nn.Sequential``: its children, in order.
- any other module: its top-level children in the order a forward pass runs
  them (recorded with forward pre-hooks during the probe forward pass).

Children without parameters (activations, pooling, dropout) join the block
before them, so every block holds trainable weights; parameters registered
directly on the root module (e.g. a class token) join the first block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["Block", "BlockOf", "block_map", "describe_blocks", "record_child_order"]

# Parameter or buffer name -> block index, or None for "in no block".
BlockOf = Callable[[str], "int | None"]


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


def block_map(
    module: nn.Module,
    child_order: list[str] | None = None,
    block_of: BlockOf | None = None,
) -> list[Block]:
    """Return the ordered blocks of ``module``, input side first.

    Parameters
    ----------
    module : nn.Module
        The backbone.
    child_order : list of str, optional
        Top-level child names in the order a forward pass ran them (see
        :func:`record_child_order`). Ignored when ``block_of`` assigns the
        blocks; required for other modules that are not an ``nn.Sequential``
        and have children.
    block_of : callable, optional
        The module's family's assignment of parameter and buffer names to
        blocks (``family_of(module).block_of(module)``, see
        :mod:`sktune.families`). None, or an assignment that puts nothing in
        a block: the generic rule.

    Returns
    -------
    list of Block
        The blocks, input side first. Every parameter is in at most one
        block; the classifier of a known family is in none.

    Raises
    ------
    ValueError
        When the forward pass does not run the children as an ordered chain
        (a child runs twice, interleaved with others), so "the first k blocks"
        has no meaning for this module.
    """
    if block_of is not None:
        blocks = _blocks_from(module, block_of)
        if blocks:
            return blocks
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


# -- blocks from an assignment -------------------------------------------------


def _blocks_from(module: nn.Module, block_of: BlockOf) -> list[Block]:
    """Build blocks from a name -> block assignment of parameters and buffers.

    Block numbers are renumbered densely in sorted order. A block's modules
    are the largest submodules whose parameters and buffers all fall in it;
    a submodule with neither joins the block of the module registered before
    it (the next block's, if it comes first). Returns [] when no tensor is in
    a block.
    """
    names = [*dict(module.named_parameters()), *dict(module.named_buffers())]
    assigned = {name: block_of(name) for name in names}
    dense = {
        b: i
        for i, b in enumerate(sorted({b for b in assigned.values() if b is not None}))
    }
    assigned = {n: None if b is None else dense[b] for n, b in assigned.items()}
    modules: list[list[str]] = [[] for _ in dense]
    pending: list[str] = []  # tensor-free modules before the first block
    last: int | None = None

    def visit(prefix: str, mod: nn.Module) -> None:
        nonlocal last
        dot = f"{prefix}." if prefix else ""
        labels = {
            assigned.get(dot + name, None)
            for name, _ in [*mod.named_parameters(), *mod.named_buffers()]
        }
        if not labels:
            (pending if last is None else modules[last]).append(prefix)
        elif len(labels) > 1:
            for name, child in mod.named_children():
                visit(dot + name, child)
        elif (label := labels.pop()) is not None:
            modules[label].extend(pending)
            pending.clear()
            modules[label].append(prefix)
            last = label

    visit("", module)
    params: list[list[str]] = [[] for _ in dense]
    for name, _ in module.named_parameters():
        if assigned[name] is not None:
            params[assigned[name]].append(name)
    return [
        Block(
            mods[0] if mods else ps[0] if ps else type(module).__name__,
            tuple(mods),
            tuple(ps),
        )
        for mods, ps in zip(modules, params, strict=True)
    ]


# -- generic rule ----------------------------------------------------------------


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
    return any(True for name in names for _ in module.get_submodule(name).parameters())


def _block(module: nn.Module, name: str, module_names: list[str]) -> Block:
    params: list[str] = []
    for mod_name in module_names:
        prefix = f"{mod_name}." if mod_name else ""
        params.extend(
            prefix + p for p, _ in module.get_submodule(mod_name).named_parameters()
        )
    return Block(name or type(module).__name__, tuple(module_names), tuple(params))


# -- description -------------------------------------------------------------------


def describe_blocks(
    backbone: nn.Module,
    blocks: list[Block],
    head: nn.Module,
    eval_modules,
    rates: dict[str, float] | None = None,
) -> str:
    """A table of the blocks and the head: parameters, trainable, frozen, mode.

    Parameters
    ----------
    backbone : nn.Module
        The (training copy of the) backbone the blocks are of.
    blocks : list of Block
        Its block map.
    head : nn.Module
        The task head, listed last.
    eval_modules : iterable of str
        The backbone modules kept in eval mode while the rest trains.
    rates : dict, optional
        Parameter name in the network (``backbone.*``, ``head.*``) -> the
        learning rate it trains at; adds an ``lr`` column (a row's highest
        rate, ``-`` where nothing trains).

    Returns
    -------
    str
        One row per block, then the head.
    """
    named = dict(backbone.named_parameters())
    frozen_modules = set(eval_modules)

    def lr(names) -> list[str]:
        if rates is None:
            return []
        found = [rates[n] for n in names if n in rates]
        return [f"{max(found):.2g}" if found else "-"]

    rows = [("block", "name", "params", "trainable", "frozen", "mode")]
    rows[0] += ("lr",) if rates is not None else ()
    for i, block in enumerate(blocks):
        params = [named[p] for p in block.params]
        n = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = block.modules and set(block.modules) <= frozen_modules
        rows.append(
            (
                str(i),
                block.name,
                f"{n:,}",
                f"{trainable:,}",
                f"{n - trainable:,}",
                "eval" if frozen else "train",
                *lr(f"backbone.{p}" for p in block.params),
            )
        )
    head_n = sum(p.numel() for p in head.parameters())
    head_trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    rows.append(
        (
            "head",
            type(head).__name__,
            f"{head_n:,}",
            f"{head_trainable:,}",
            f"{head_n - head_trainable:,}",
            "train",
            *lr(f"head.{n}" for n, _ in head.named_parameters()),
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if j < 2 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
