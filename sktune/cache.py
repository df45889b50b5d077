"""Frozen-prefix feature cache (DESIGN.md, invariant 4).

When the input side of the backbone is frozen and runs in eval mode, its
output for a sample never changes during a fit. It is computed once, stored
per sample, and every epoch (and every grid-search candidate or fold that
shares the backbone, the cut and the sample) runs only the trainable suffix
and the head.

Where the cut lies:

- everything frozen (``freeze="all"``): the cached value is the pooled
  feature vector, for any backbone;
- a Hugging Face text encoder: after its embeddings and frozen layers; the
  cached value is each text's token states, re-padded per batch;
- a timm or torchvision vision transformer: after its patch and position
  embedding and frozen layers (the stages are spelled out per family, since
  position embeddings and the class token are added between children);
- otherwise, without knowing the model family, the backbone is unrolled into
  a chain of units (its children in forward order, ``nn.Sequential``
  containers expanded). The prefix is the leading run of units whose
  parameters are all frozen and whose modules all stay in eval mode.

Every cut is *verified* on the probe sample: running the prefix and then the
suffix must reproduce the backbone's own output. Where it does not (a model
whose children are no chain, a text model taking keyword inputs it does not
know), only ``freeze="all"`` is cached, and ``cache_info_`` says why.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
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
    "vit_family",
    "vit_prefix",
    "vit_suffix",
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
    vit : {"timm", "torchvision"} or None
        The vision transformer family, when the prefix is its patch and
        position embedding followed by its first ``cut`` layers (outputs:
        ``(T, D)`` token states per image).
    """

    units: tuple[str, ...]
    cut: int
    tokens: bool = False
    vit: str | None = None

    @property
    def whole(self) -> bool:
        return not self.units and not self.tokens and self.vit is None

    def key(self) -> tuple:
        if self.tokens:
            return ("tokens", self.cut)
        if self.vit is not None:
            return ("vit", self.vit, self.cut)
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
    """Run ``units`` of ``backbone`` one after the other on ``h``."""
    for unit in units:
        module = backbone.get_submodule(unit)
        if (
            isinstance(module, nn.Linear)
            and h.ndim > 2
            and h.shape[-1] != module.in_features
        ):
            # The ``torch.flatten(x, 1)`` that CNNs call between their pooling
            # and their classifier (torchvision's MobileNet, VGG, ...).
            h = h.flatten(1)
        h = module(h)
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
    x = preprocess(example) if preprocess is not None else example
    family = vit_family(backbone)
    if family is not None:
        return _plan_vit_split(backbone, family, eval_modules, x)
    units = chain_units(backbone, child_order)

    cut = 0
    while cut < len(units) and static(units[cut]):
        cut += 1
    if cut == 0:
        return "no frozen block at the input side"
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


# -- vision transformers --------------------------------------------------------
#
# A ViT is no chain of its children: position embeddings and the class token
# are added between them. Its stages are spelled out per family instead.

_VIT_PARTS = {
    # family: (the layers' Sequential, the modules that run after the layers)
    "timm": ("blocks", ("norm", "attn_pool", "fc_norm", "head_drop", "head")),
    "torchvision": ("encoder.layers", ("encoder.ln", "heads")),
}


def vit_family(backbone: nn.Module) -> str | None:
    """``"timm"`` or ``"torchvision"`` for their vision transformers, else None."""
    if all(
        hasattr(backbone, a)
        for a in ("patch_embed", "_pos_embed", "norm_pre", "norm", "forward_head")
    ) and isinstance(getattr(backbone, "blocks", None), nn.Sequential):
        return "timm"
    encoder = getattr(backbone, "encoder", None)
    if (
        all(hasattr(backbone, a) for a in ("_process_input", "class_token", "heads"))
        and hasattr(encoder, "pos_embedding")
        and isinstance(getattr(encoder, "layers", None), nn.Sequential)
    ):
        return "torchvision"
    return None


def vit_prefix(backbone: nn.Module, family: str, n_layers: int, x):
    """Token states after the embedding and the first ``n_layers`` layers."""
    if family == "timm":
        h = backbone.norm_pre(
            backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(x)))
        )
    else:
        h = backbone._process_input(x)
        h = torch.cat([backbone.class_token.expand(len(h), -1, -1), h], dim=1)
        h = backbone.encoder.dropout(h + backbone.encoder.pos_embedding)
    return _vit_layers(backbone, family)[:n_layers](h)


def vit_suffix(backbone: nn.Module, family: str, n_layers: int, h):
    """The backbone's output from the token states after ``n_layers`` layers."""
    h = _vit_layers(backbone, family)[n_layers:](h)
    if family == "timm":
        return backbone.forward_head(backbone.norm(h))
    return backbone.heads(backbone.encoder.ln(h)[:, 0])


def _vit_layers(backbone, family) -> nn.Sequential:
    return backbone.get_submodule(_VIT_PARTS[family][0])


def _plan_vit_split(backbone, family, eval_modules, x) -> Split | str:
    """Cut a vision transformer after its embedding and first frozen layers.

    The prefix is everything but the layers from the cut on and the modules
    after the layers: all its parameters must be frozen and all its modules
    in eval mode (whatever the embedding uses: class, distillation or
    register tokens, position embeddings, dropouts, a pre-norm).
    """
    layers_path, tail = _VIT_PARTS[family]
    layers = [
        f"{layers_path}.{n}" for n, _ in _vit_layers(backbone, family).named_children()
    ]

    def static(cut: int) -> bool:
        suffix = (*layers[cut:], *tail)

        def in_prefix(name: str) -> bool:
            return not any(name == m or name.startswith(f"{m}.") for m in suffix)

        def container(name: str) -> bool:  # holds suffix modules; never called
            return not name or any(m.startswith(f"{name}.") for m in suffix)

        return not any(
            p.requires_grad for n, p in backbone.named_parameters() if in_prefix(n)
        ) and all(
            n in eval_modules
            for n, _ in backbone.named_modules()
            if in_prefix(n) and not container(n)
        )

    cut = next((c for c in range(len(layers), -1, -1) if static(c)), None)
    if cut is None:
        return "no frozen block at the input side"
    with torch.no_grad(), eval_mode(backbone):
        try:
            states = vit_prefix(backbone, family, cut, x)
            chained = pool_features(vit_suffix(backbone, family, cut, states))
        except Exception as exc:  # any failure means "cannot split"
            return f"the vision transformer cannot be split after its frozen layers ({type(exc).__name__}: {exc})"
        direct = pool_features(backbone(x))
    if chained.shape != direct.shape or not torch.allclose(
        chained, direct, rtol=1e-5, atol=1e-6
    ):
        return "running the vision transformer from cached token states does not reproduce its forward pass"
    return Split((), cut, vit=family)


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
    # SHA-256: CPUs with SHA extensions hash it twice as fast as BLAKE2b.
    digest = hashlib.sha256(repr(module).encode())
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
