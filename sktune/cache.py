"""Frozen-prefix feature cache (DESIGN.md, invariant 4).

When the input side of the backbone is frozen and runs in eval mode, its
output for a sample never changes during a fit. It is computed once, stored
per sample, and every epoch (and every grid-search candidate or fold that
shares the backbone, the cut and the sample) runs only the trainable suffix
and the head.

The cut is found without knowing the model family:

- everything frozen (``freeze="all"``): the cached value is the pooled
  feature vector, for any backbone;
- otherwise the backbone is unrolled into a chain of units (its children in
  forward order, ``nn.Sequential`` containers expanded) and the chain is
  *verified* on the probe sample: running the units one after the other must
  reproduce the backbone's own output. The prefix is the leading run of
  units whose parameters are all frozen and whose modules all stay in eval
  mode. Where the chain does not reproduce the forward pass (a ViT adding
  position embeddings between children, a text model taking keyword inputs),
  only ``freeze="all"`` is cached.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .freeze import FreezePlan
from .heads import pool_features

__all__ = [
    "STORE",
    "FeatureStore",
    "Split",
    "eval_mode",
    "fingerprint",
    "plan_split",
    "sample_digests",
]


@dataclass(frozen=True)
class Split:
    """Where the backbone is cut for caching.

    Attributes
    ----------
    units : tuple of str
        The backbone's chain of units (empty when the whole backbone is
        cached: ``freeze="all"``).
    cut : int
        Units ``[:cut]`` form the cached prefix; ``[cut:]`` run every epoch.
        For a text encoder, the number of transformer layers in the prefix.
    tokens : bool
        Whether the prefix outputs are token states of a text encoder (one
        ``(T_i, D)`` tensor per text, re-padded per batch).
    """

    units: tuple[str, ...]
    cut: int
    tokens: bool = False

    @property
    def whole(self) -> bool:
        return not self.units and not self.tokens

    def key(self) -> tuple:
        if self.tokens:
            return ("tokens", self.cut)
        return ("all",) if self.whole else (self.units[: self.cut],)


def chain_units(backbone: nn.Module, child_order: list[str]) -> list[str]:
    """The backbone's children in forward order, Sequentials expanded."""

    def expand(name: str, module: nn.Module) -> list[str]:
        if isinstance(module, nn.Sequential) and len(module):
            prefix = f"{name}." if name else ""
            return [
                u for n, m in module.named_children() for u in expand(prefix + n, m)
            ]
        return [name]

    if isinstance(backbone, nn.Sequential):
        return expand("", backbone)
    seen: list[str] = []
    for name in child_order:
        if name not in seen:
            seen.append(name)
    return [u for name in seen for u in expand(name, backbone.get_submodule(name))]


def run_units(backbone: nn.Module, units, h):
    for unit in units:
        h = backbone.get_submodule(unit)(h)
    return h


def plan_split(
    backbone: nn.Module,
    plan: FreezePlan,
    blocks,
    child_order: list[str],
    example,
    preprocess=None,
) -> Split | str:
    """Return the :class:`Split` for caching, or the reason there is none."""
    eval_modules = set(plan.eval_modules)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    all_eval = all(name in eval_modules for name, _ in backbone.named_modules())
    if not trainable and all_eval:
        return Split((), 0)

    def static(unit: str) -> bool:
        module = backbone.get_submodule(unit)
        if any(p.requires_grad for p in module.parameters()):
            return False
        return all(
            ".".join(filter(None, (unit, n))) in eval_modules
            for n, _ in module.named_modules()
        )

    if isinstance(example, dict):
        return _plan_token_split(backbone, blocks, static, example)
    units = chain_units(backbone, child_order)

    cut = 0
    while cut < len(units) and static(units[cut]):
        cut += 1
    if cut == 0:
        return "no frozen block at the input side"
    x = preprocess(example) if preprocess is not None else example
    with torch.no_grad(), eval_mode(backbone):
        try:
            chained = pool_features(run_units(backbone, units, x))
        except Exception as exc:
            return f"the backbone is not a chain of its children ({type(exc).__name__})"
        direct = pool_features(backbone(x))
    if chained.shape != direct.shape or not torch.allclose(
        chained, direct, rtol=1e-5, atol=1e-6
    ):
        return "running the backbone's children in order does not reproduce its forward pass"
    return Split(tuple(units), cut)


def _plan_token_split(backbone, blocks, static, example) -> Split | str:
    """Cut a text encoder after its embeddings and first frozen layers."""
    if not hasattr(backbone, "layers_path") or backbone.layers_path() is None:
        return "the backbone takes keyword inputs and is no known text encoder, so only freeze='all' is cached"
    n_static = 0
    while n_static < len(blocks) and all(static(m) for m in blocks[n_static].modules):
        n_static += 1
    if n_static == 0:
        return "no frozen block at the input side"
    n_layers = n_static - 1  # block 0 is the embeddings
    with torch.no_grad(), eval_mode(backbone):
        try:
            states = backbone.prefix_states(n_layers, **example)
            chained = backbone.suffix_features(
                n_layers, states, example["attention_mask"]
            )
        except Exception as exc:  # any failure means "cannot split"
            return f"the text encoder cannot be split after its frozen layers ({type(exc).__name__}: {exc})"
        direct = backbone(**example)
    if chained.shape != direct.shape or not torch.allclose(
        chained, direct, rtol=1e-4, atol=1e-5
    ):
        return "running the text encoder from cached token states does not reproduce its forward pass"
    return Split((), n_layers, tokens=True)


class eval_mode:
    """Context manager: eval mode inside, previous modes restored after."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.modes = {m: m.training for m in self.module.modules()}
        self.module.eval()

    def __exit__(self, *exc):
        for m, mode in self.modes.items():
            m.training = mode


# -- fingerprints -------------------------------------------------------------

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FINGERPRINT_LOCK = threading.Lock()


def fingerprint(module: nn.Module) -> str:
    """A digest of a module's weights, buffers and structure.

    Memoized per module object while no tensor of it changes: in-place
    updates bump a tensor's version counter, and a replaced tensor changes
    identity, so a stale digest is never returned.
    """
    state = module.state_dict(keep_vars=True)
    stamp = tuple((k, id(t), t._version) for k, t in state.items())
    with _FINGERPRINT_LOCK:
        cached = _FINGERPRINTS.get(module)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    digest = hashlib.blake2b(repr(module).encode(), digest_size=16)
    for key, tensor in state.items():
        digest.update(key.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str((data.dtype, tuple(data.shape))).encode())
        if data.numel():
            # A uint8 view, hashed through the buffer protocol: no byte copy of
            # what may be a large embedding matrix.
            digest.update(data.view(torch.uint8).numpy())
    value = digest.hexdigest()
    with _FINGERPRINT_LOCK:
        _FINGERPRINTS[module] = (stamp, value)
    return value


def sample_digests(X) -> list[bytes]:
    """One digest per sample of an array, a list of texts or a dict of arrays."""
    if isinstance(X, dict):
        parts = [sample_digests(v) for _, v in sorted(X.items())]
        return [
            hashlib.blake2b(b"".join(p), digest_size=16).digest()
            for p in zip(*parts, strict=True)
        ]
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if isinstance(X, np.ndarray) and X.dtype != object:
        X = np.ascontiguousarray(X)
        head = str((X.dtype, X.shape[1:])).encode()
        return [
            hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in X
        ]
    return [hashlib.blake2b(repr(item).encode(), digest_size=16).digest() for item in X]


# -- the store ------------------------------------------------------------------


class FeatureStore:
    """Per-sample prefix outputs, shared by every estimator of the process.

    Entries are keyed by a context (backbone fingerprint, cut, preprocessing)
    and a sample digest; the least recently used contexts are evicted when
    the store exceeds the byte budget of the latest request.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._contexts: OrderedDict[tuple, dict[bytes, torch.Tensor]] = OrderedDict()
        self._bytes: dict[tuple, int] = {}

    def lookup(self, context: tuple, digests: list[bytes]) -> list[torch.Tensor | None]:
        with self._lock:
            rows = self._contexts.get(context)
            if rows is None:
                return [None] * len(digests)
            self._contexts.move_to_end(context)
            return [rows.get(d) for d in digests]

    def insert(self, context: tuple, digests, rows, budget: int) -> None:
        """Store ``rows`` (one tensor per sample) under ``context``."""
        with self._lock:
            entries = self._contexts.setdefault(context, {})
            self._contexts.move_to_end(context)
            for d, row in zip(digests, rows, strict=True):
                if d not in entries:
                    entries[d] = row
                    size = row.numel() * row.element_size()
                    self._bytes[context] = self._bytes.get(context, 0) + size
            while self._contexts and sum(self._bytes.values()) > budget:
                oldest = next(iter(self._contexts))
                if oldest == context and len(self._contexts) == 1:
                    break
                del self._contexts[oldest]
                del self._bytes[oldest]

    def nbytes(self) -> int:
        with self._lock:
            return sum(self._bytes.values())

    def clear(self) -> None:
        with self._lock:
            self._contexts.clear()
            self._bytes.clear()


STORE = FeatureStore()
