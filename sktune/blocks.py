"""The block map: a backbone's ordered, freezable blocks, input side first.

``freeze=k`` means "the first k blocks of the block map", so the map decides
what a freeze depth means for every backbone. Known families are recognised
first, for module instances as much as for string specs:

- timm models (they have ``group_matcher``): timm's own coarse parameter
  groups (stem, then each stage or block), as used for its layer-wise
  learning-rate decay. Parameters timm leaves unmatched (a final norm, a
  ``conv_head``) join the last block; the classifier (``get_classifier()``)
  belongs to no block.
- torchvision ResNet family: the stem (``conv1``, ``bn1``, ``relu``,
  ``maxpool``), then ``layer1`` to ``layer4``.
- torchvision models with a ``features`` ``nn.Sequential`` (EfficientNet,
  MobileNet V2/V3, ConvNeXt, VGG, DenseNet, ...): the children of
  ``features``; what remains of the ``classifier`` before its final
  ``nn.Linear`` (a norm, a pre-logits layer) joins the last block.
- torchvision ``VisionTransformer``: the patch embedding (``conv_proj``,
  ``class_token``, ``encoder.pos_embedding``), then each ``encoder.layers``
  block; the final ``encoder.ln`` joins the last block.
- Hugging Face encoders (BERT, MiniLM, RoBERTa, ELECTRA, DistilBERT, ...,
  bare, inside a task model, or inside :class:`sktune._hf.HFEncoder`): the
  embeddings, then each encoder layer (``encoder.layer`` or
  ``transformer.layer``); the pooler and anything else of the base model
  join the last block. Task heads outside the base model belong to no block.

In every family the final classification layer belongs to no block: it is
trained unless ``freeze="all"``. Submodules without parameters or buffers
(activations, pooling, dropout) join the block of the module registered
before them.

Otherwise a generic rule applies:

- ``nn.Sequential``: its children, in order.
- any other module: its top-level children in the order a forward pass runs
  them (recorded with forward pre-hooks during the probe forward pass).

Children without parameters (activations, pooling, dropout) join the block
before them, so every block holds trainable weights; parameters registered
directly on the root module (e.g. a class token) join the first block.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["Block", "block_map", "record_child_order"]

# Parameter or buffer name -> block index, or None for "in no block".
_BlockOf = Callable[[str], "int | None"]


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
        :func:`record_child_order`). Ignored for the known families (timm,
        torchvision, Hugging Face encoders); required for other modules that
        are not an ``nn.Sequential`` and have children.

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
    block_of = _family_block_of(module)
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


# -- known families ----------------------------------------------------------


def _family_block_of(module: nn.Module) -> _BlockOf | None:
    """The block assignment of a known family, or None for the generic rule."""
    for finder in (_hf_block_of, _timm_block_of, _torchvision_block_of):
        block_of = finder(module)
        if block_of is not None:
            return block_of
    return None


def _loaded(name: str):
    """The module ``name`` if it is already imported (a model of that library
    can only exist if it is), else None: plain modules never pay for an import.
    """
    return sys.modules.get(name)


def _module_name(root: nn.Module, target: nn.Module) -> str | None:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    return None


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _timm_block_of(module: nn.Module) -> _BlockOf | None:
    matcher_fn = getattr(module, "group_matcher", None)
    if not callable(matcher_fn) or _loaded("timm") is None:
        return None
    from timm.models._manipulate import group_with_matcher

    classifier = None
    get_classifier = getattr(module, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except (AttributeError, NotImplementedError, TypeError):
            head = None
        if isinstance(head, nn.Module):
            classifier = _module_name(module, head)
    if classifier == "":  # the whole model is its own classifier: no grouping
        return None
    names = [
        n
        for n in _tensor_names(module)
        if classifier is None or not _under(n, classifier)
    ]
    # A name that no pattern matches lands in timm's last group (the one for
    # "neck, head" layers); the sentinel tells which group that is.
    sentinel = "\x00sktune-unmatched"
    try:
        matcher = matcher_fn(coarse=True)
    except (NotImplementedError, TypeError, AttributeError):
        return None  # a model without grouping: the generic rule applies
    group_of = group_with_matcher(
        ((n, None) for n in [*names, sentinel]), matcher, reverse=True
    )
    unmatched = group_of.pop(sentinel)
    n_groups = max(group_of.values(), default=-1) + 1
    if unmatched == n_groups - 1 and n_groups > 1:
        # Unmatched non-classifier layers (a final norm, a conv head) belong
        # to the feature extractor: they join the last real block.
        group_of = {n: min(g, n_groups - 2) for n, g in group_of.items()}
    return group_of.get


def _torchvision_block_of(module: nn.Module) -> _BlockOf | None:
    tvm = _loaded("torchvision.models")
    if tvm is None:
        return None
    if isinstance(module, tvm.ResNet):
        return _regex_block_of(
            [(r"(?:conv1|bn1)(?:\.|$)", 0), (r"layer(\d+)(?:\.|$)", 0)],
            classifier="fc",
            rest=len([n for n, _ in module.named_children() if n.startswith("layer")]),
        )
    if isinstance(module, tvm.VisionTransformer):
        return _regex_block_of(
            [
                (r"(?:conv_proj|class_token|encoder\.pos_embedding)(?:\.|$)", 0),
                (r"encoder\.layers\.encoder_layer_(\d+)(?:\.|$)", 1),
            ],
            classifier=_final_linear(module, "heads"),
            rest=len(module.encoder.layers),
        )
    features = getattr(module, "features", None)
    if (
        isinstance(features, nn.Sequential)
        and len(features)
        and type(module).__module__.startswith("torchvision.")
    ):
        # Children by position (DenseNet names them conv0, denseblock1, ...).
        index = {name: i for i, (name, _) in enumerate(features.named_children())}
        last = max(
            (i for i, child in enumerate(features) if _has_tensors(child)), default=0
        )
        classifier = _final_linear(module, "classifier")

        def block_of(name: str) -> int | None:
            if classifier is not None and _under(name, classifier):
                return None
            if name.startswith("features."):
                return index[name.split(".", 2)[1]]
            return last

        return block_of
    return None


def _has_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _final_linear(module: nn.Module, name: str) -> str | None:
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


def _regex_block_of(
    rules: list[tuple[str, int]], *, classifier: str | None, rest: int
) -> _BlockOf:
    """Assign names by the first matching ``(regex, offset)`` rule.

    A rule whose regex captures a number gives ``offset + number``, one
    without a capture gives ``offset``. Names under ``classifier`` are in no
    block; names that no rule matches go to block ``rest`` (the last one).
    """
    compiled = [(re.compile(pattern), offset) for pattern, offset in rules]

    def block_of(name: str) -> int | None:
        if classifier is not None and _under(name, classifier):
            return None
        for pattern, offset in compiled:
            match = pattern.match(name)
            if match:
                return offset + (int(match.group(1)) if match.groups() else 0)
        return rest

    return block_of


_HF_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers")


def _hf_block_of(module: nn.Module) -> _BlockOf | None:
    base, prefix = _hf_base(module)
    if base is None or not isinstance(getattr(base, "embeddings", None), nn.Module):
        return None
    for path in _HF_LAYER_PATHS:
        try:
            layers = base.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers):
            break
    else:
        return None
    block_of = _regex_block_of(
        [(r"embeddings(?:\.|$)", 0), (re.escape(path) + r"\.(\d+)(?:\.|$)", 1)],
        classifier=None,
        rest=len(layers),
    )

    def prefixed(name: str) -> int | None:
        # Task heads outside the base model are in no block.
        if not name.startswith(prefix):
            return None
        return block_of(name[len(prefix) :])

    return prefixed


def _hf_base(module: nn.Module) -> tuple[nn.Module | None, str]:
    """The Hugging Face base model inside ``module`` and its name prefix."""
    prefix = ""
    hf = _loaded("sktune._hf")
    if hf is not None and isinstance(module, hf.HFEncoder):
        module, prefix = module.model, "model."
    transformers = _loaded("transformers")
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return None, ""
    base = module.base_model
    if base is not module:
        name = _module_name(module, base)
        if not name:
            return None, ""
        prefix += name + "."
    return base, prefix


# -- blocks from an assignment -------------------------------------------------


def _tensor_names(module: nn.Module) -> list[str]:
    names = [n for n, _ in module.named_parameters()]
    names += [n for n, _ in module.named_buffers()]
    return names


def _blocks_from(module: nn.Module, block_of: _BlockOf) -> list[Block]:
    """Build blocks from a name -> block assignment of parameters and buffers.

    Block numbers are renumbered densely in sorted order. A block's modules
    are the largest submodules whose parameters and buffers all fall in it;
    a submodule with neither joins the block of the module registered before
    it (the next block's, if it comes first). Returns [] when no tensor is in
    a block.
    """
    assigned = {name: block_of(name) for name in _tensor_names(module)}
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
