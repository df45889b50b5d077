"""Build the network a fit trains, in named stages, on the training device.

    training copy -> inputs and preprocessing -> probe -> block map
    -> adapters -> freeze plans -> layout -> head -> network
    -> cut plan and cache of each depth a fit trains at

Every stage runs on the device that trains (DESIGN.md, invariant 8): the
pristine backbone is copied, the copy moved, and the probe, the
channels-last check and the verification of the cache's cut run there. The
probe sample is synthetic (:meth:`sktune.data.FittedInput.example`): no
training sample is needed, so none is kept (invariant 7), and a fitted
estimator rebuilds its network from its fitted attributes alone.

The stages that look at the input (its checks against the backbone, the
probe, the channels-last decision) live in :mod:`sktune._probe`. The model
family is looked up once, here, and handed to what asks it (the block map,
the adapters, the cut) and to the estimator (:attr:`Built.family`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ._modules import eval_mode, has_lazy, same_output
from ._probe import (
    check_input_fits,
    example_batch,
    plan_layout,
    probe,
    resolve_max_length,
)
from .adapters import as_adapter
from .adapters.inject import adapter_params, attach
from .backbones import Backbone
from .blocks import Block, block_map
from .cache import (
    CacheKey,
    NoCache,
    PrefixCache,
    Split,
    StaticParts,
    WholeSplit,
    fingerprint,
)
from .cache.prefix import storage_dtype
from .data.images import image_preprocess
from .data.inputs import FittedInput
from .families import Family, family_of
from .families.generic import plan_chain_cut
from .freeze import (
    FreezePlan,
    apply_freeze,
    at_depth,
    auto_depths,
    is_auto,
    options,
    plan_freeze,
    with_adapters,
)
from .heads import build_head
from .network import FineTuneNetwork
from .schedules import schedule_depths

__all__ = ["Built", "Stage", "build_network"]


@dataclass
class Stage:
    """The network with ``n_frozen`` blocks frozen: its plan and its cache."""

    plan: FreezePlan
    prefix_cache: PrefixCache


@dataclass
class Built:
    """What :func:`build_network` makes.

    Attributes
    ----------
    network : FineTuneNetwork
        On the training device, its backbone frozen as planned.
    blocks : list of Block
        The backbone's block map.
    tokenizer : object or None
        A text backbone's tokenizer.
    max_length : int or None
        A text backbone's truncation length.
    stages : dict
        Number of frozen blocks -> :class:`Stage`: the freeze policy's own
        depth, and every depth its schedule passes through (with
        ``freeze="auto"``: every depth its search may visit).
    depth : int
        The freeze policy's own number of frozen blocks (its stage is the
        network's state as built); with ``freeze="auto"``, the depth chosen
        (``auto_depth``), else the search's floor (every parameter the
        search may train trains there).
    adapted : list of str
        The backbone modules that carry adapters.
    family : Family
        The model family that answers for the backbone (:func:`family_of`,
        asked once, here).
    """

    network: FineTuneNetwork
    blocks: list[Block]
    tokenizer: object
    max_length: int | None
    stages: dict[int, Stage]
    depth: int
    adapted: list[str]
    family: Family


def build_network(
    source: Backbone,
    fitted: FittedInput,
    *,
    n_outputs: int,
    freeze,
    adapter,
    head,
    pooling,
    image_size,
    max_length,
    channels_last,
    cache,
    cache_size,
    cache_dtype,
    device,
    precision=None,
    auto_depth=None,
) -> Built:
    """Build the network for input like ``fitted``, validated parameters given.

    Parameters
    ----------
    source : Backbone
        The pristine backbone (never modified).
    fitted : FittedInput
        What fit saw of X.
    n_outputs : int
        The head's outputs (classes, or regression targets).
    freeze, adapter, head, pooling, image_size, max_length, channels_last, \
cache, cache_size, cache_dtype
        The estimator's parameters of those names, validated.
    device : str, torch.device or None
        Where the network trains (None: where the backbone is).
    precision : torch.dtype, optional
        The backbone's autocast dtype (None: float32).
    auto_depth : int, optional
        With ``freeze="auto"``: the depth a fit chose (``freeze_depth_``), to
        rebuild a fitted network at it; None before the search.

    Raises
    ------
    ValueError
        When the input does not fit the backbone, the backbone cannot process
        the probe sample, or a setting cannot be honoured (``freeze`` out of
        range, an adapter with nothing to adapt, ``channels_last=True`` on a
        backbone that cannot run so).
    """
    backbone = _training_copy(source, device)
    # Adapters replace layers inside the copy, never the module itself: the
    # family found now answers for the adapted backbone too.
    family = family_of(backbone)
    tokenizer = source.tokenizer()
    data_config = source.data_config()
    check_input_fits(fitted, tokenizer, data_config)
    # Photos arrive decoded at the working size (sktune.data.photos).
    preprocess = (
        image_preprocess(image_size, data_config)
        if fitted.kind == "image"
        else image_preprocess(None, data_config)
        if fitted.kind == "photos"
        else None
    )
    if preprocess is not None and device is not None:
        preprocess.to(device)
    max_length = resolve_max_length(max_length, tokenizer) if tokenizer else None
    pooling = pooling if pooling is not None else source.default_pooling()
    if hasattr(backbone, "pooling") and pooling is not None:
        backbone.pooling = pooling
    example = example_batch(fitted, tokenizer, max_length, device)
    features, order = probe(backbone, preprocess, example)
    blocks = block_map(backbone, order, family.block_of(backbone))
    blocks, adapted = attach_adapters(backbone, blocks, order, freeze, adapter, family)
    plans = _plans(backbone, blocks, freeze, adapter is not None, auto_depth)
    depth = plans.pop("final")
    layout = plan_layout(channels_last, backbone, preprocess, example, features)
    if layout and preprocess is not None:
        # uint8 N x H x W x C permuted is channels-last already: no copy.
        preprocess.memory_format = torch.channels_last
    head_module = build_head(head, features.shape[1], n_outputs)
    if device is not None:
        head_module.to(device)
    network = FineTuneNetwork(
        backbone,
        head_module,
        plans[depth],
        preprocess,
        pooling,
        None,
        layout,
        precision,
    )
    info = {"enabled": False, "reason": None, "computed": 0, "reused": 0}
    stages = {}
    for n_frozen, plan in plans.items():  # the policy's own depth last
        apply_freeze(backbone, plan)
        cut, row = (
            (NoCache("cache=False"), None)
            if cache is False
            else _plan_cut(
                network, plan, blocks, order, example, tokenizer, features, family
            )
        )
        key = (
            None
            if row is None
            else _cache_key(source, network, cut, fitted, row, cache_dtype, max_length)
        )
        cache_of_stage = PrefixCache(
            cut,
            key,
            setting=cache,
            size_mb=cache_size,
            row_dtype=row.dtype if row is not None else torch.float32,
            row_numel=row.numel() if row is not None else 0,
            stored_dtype=(storage_dtype(cache_dtype) or row.dtype)
            if row is not None
            else torch.float32,
        )
        cache_of_stage.info = info  # one account over the stages of a fit
        stages[n_frozen] = Stage(plan, cache_of_stage)
    network.set_stage(plans[depth], stages[depth].prefix_cache.split)
    return Built(network, blocks, tokenizer, max_length, stages, depth, adapted, family)


def _plans(backbone, blocks, freeze, adapters: bool, auto_depth=None) -> dict:
    """The freeze plan of each depth a fit may train at, the final depth last.

    The entry ``"final"`` names the policy's own depth (``freeze="auto"``:
    ``auto_depth``, else the search's floor).
    """
    policy = options(freeze)
    n_blocks = len(blocks)

    def plan_of(policy_at):
        plan = plan_freeze(backbone, blocks, policy_at)
        if adapters:
            plan = with_adapters(backbone, plan, adapter_params(backbone), policy_at)
        return plan

    if is_auto(freeze):
        depths = auto_depths(freeze, n_blocks)
        plans = {d: plan_of(at_depth(freeze, d, n_blocks)) for d in depths}
        final = depths[-1] if auto_depth is None else auto_depth
        plans[final] = plans.pop(final)  # the network's state as built, last
        plans["final"] = final
        return plans
    final = plan_of(freeze)
    depth = final.n_frozen_blocks
    plans = {}
    if policy.schedules():  # (with a depth: Freeze refuses patterns with one)
        visited = schedule_depths(
            n_blocks=n_blocks,
            depth=depth,
            probe_epochs=policy.probe_epochs,
            unfreeze_every=policy.unfreeze_every,
        )
        for n_frozen in sorted(visited, reverse=True):
            plans[n_frozen] = plan_of(at_depth(freeze, n_frozen, n_blocks))
    key = n_blocks if depth is None else depth
    plans[key] = final
    plans["final"] = key
    return plans


# -- stages ------------------------------------------------------------------------


def _training_copy(source: Backbone, device) -> nn.Module:
    """A private copy of the pristine backbone, on the training device."""
    backbone = copy.deepcopy(source.module())
    return backbone if device is None else backbone.to(device)


def attach_adapters(
    backbone: nn.Module, blocks, order, freeze, adapter, family: Family
):
    """Put adapters into the parts of the copy that ``freeze`` leaves trainable.

    Returns the block map (made anew: the adapted layers' parameters have
    new names) and the names of the adapted modules.
    """
    adapter = as_adapter(adapter)
    if adapter is None:
        return blocks, []
    if is_auto(freeze):
        # Adapters in every block the search may unfreeze (down to its
        # floor), whichever depth it chooses: a fitted network rebuilds with
        # the same modules. Those in blocks left frozen stay at their
        # initialization, which changes no output (LoRA's B and (IA)^3's
        # scales start at zero and one).
        freeze = at_depth(freeze, auto_depths(freeze, len(blocks))[-1], len(blocks))
    plan = plan_freeze(backbone, blocks, freeze)
    trainable = {n for n, _ in backbone.named_parameters()} - plan.frozen_params
    adapted = attach(backbone, adapter, trainable, family, f"freeze={freeze!r}")
    return block_map(backbone, order, family.block_of(backbone)), adapted


def _plan_cut(
    network, plan: FreezePlan, blocks, order, example, tokenizer, features, family
):
    """The verified cut (or why none) and one row of its prefix output."""
    backbone = network.backbone
    static = StaticParts(backbone, plan.eval_modules)
    if static.everything():
        return WholeSplit(), features[0]
    cut = family.plan_cut(backbone, static, blocks, order)
    if cut is None:
        cut = (
            NoCache(
                "the backbone takes keyword inputs and is no known text encoder, "
                "so only freeze='all' is cached"
            )
            if isinstance(example, Mapping)
            else plan_chain_cut(backbone, static, order)
        )
    if isinstance(cut, NoCache):
        return cut, None
    if cut.ragged and getattr(tokenizer, "padding_side", "right") != "right":
        # Ragged rows keep each text's leading tokens.
        return NoCache("the tokenizer pads on the left"), None
    return _verify_cut(cut, network, example)


def _verify_cut(split: Split, network: FineTuneNetwork, example):
    """Prefix, rows, gathered batch, suffix: must reproduce the features."""
    args, kwargs = ((), example) if isinstance(example, Mapping) else ((example,), {})
    previous, network.split = network.split, split
    with torch.no_grad(), eval_mode(network):
        try:
            outputs = network.prefix(*args, **kwargs)
            rows = split.rows(outputs, example)
            held = split.stack(rows)
            chained = network.suffix(
                split.gather(held, range(len(rows)), outputs.dtype)
            )
        except Exception as exc:  # any failure means "cannot split here"
            return NoCache(f"{split.what} fails ({type(exc).__name__}: {exc})"), None
        finally:
            network.split = previous
        direct = network.features(*args, **kwargs)
    rtol, atol = split.tolerance
    if not same_output(chained, direct, rtol=rtol, atol=atol):
        return NoCache(f"{split.what} does not reproduce its forward pass"), None
    row = rows[0]
    return split, (row[0] if split.ragged else row)


def _cache_key(
    source, network, split, fitted, row, cache_dtype, max_length
) -> CacheKey:
    # The frozen prefix holds the pristine weights, whose digest is memoized
    # across fits and clones; lazy layers are only materialized (by a seeded
    # init) in the training copy, so that is what counts then.
    pristine = source.module()
    weights = network.backbone if has_lazy(pristine) else pristine
    preprocess = network.preprocess
    return CacheKey(
        weights=fingerprint(weights),
        cut=split.key(),
        kind=fitted.kind,
        preprocess=None
        if preprocess is None
        else (
            tuple(preprocess.mean.flatten().tolist()),
            tuple(preprocess.std.flatten().tolist()),
            preprocess.size,
            fitted.photo,
        ),
        pooling=network.pooling,
        channels_last=network.channels_last,
        precision=str(network.precision),
        dtype=str(storage_dtype(cache_dtype) or row.dtype),
        max_length=max_length,
    )
