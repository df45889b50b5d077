"""Safe loading of local weights files into a module.

Only plain state dicts are read: ``.safetensors`` files, or torch files
through ``torch.load(weights_only=True)``, which refuses a pickle that would
run code. Tensors are matched to the module by name, else by position (the
same architecture saved by another implementation).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .._modules import under

__all__ = [
    "WEIGHT_SUFFIXES",
    "as_state_dict",
    "load_weights",
    "read_state_dict",
    "torch_load",
]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Top-level keys under which checkpoints commonly nest the state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Names of classification layers (``_fc`` of the efficientnet_pytorch family).
_CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads", "last_linear", "logits")


def read_state_dict(
    path: str | os.PathLike, *, param: str = "weights"
) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, safely.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin``/``.ckpt``
        file holding a plain state dict (possibly nested under
        ``"state_dict"``, ``"model_state_dict"``, ``"model"`` or
        ``"module"``). A ``"module."`` prefix on every key (DataParallel) is
        removed.
    param : str
        The parameter name used in error messages.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        For another suffix, or a file that is not a plain state dict: torch
        files are read with ``weights_only=True``, which refuses pickles that
        would run code (pickled modules, custom classes).
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{param}={str(path)!r}: no such file.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise ValueError(
                f"{param}={str(path)!r} is not a readable safetensors file: {exc}"
            ) from exc
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"{param}={str(path)!r} has suffix {suffix!r}; accepted weights files "
            f"are {', '.join(WEIGHT_SUFFIXES)}."
        )
    return as_state_dict(torch_load(path, param=param), str(path), param)


def torch_load(path: Path, *, param: str):
    """``torch.load(weights_only=True)`` with errors that say what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        if "weights only" not in str(exc).lower():
            raise ValueError(
                f"{param}={str(path)!r} is not a readable torch file: {exc}"
            ) from exc
        raise ValueError(
            f"{param}={str(path)!r} is not a plain state dict: torch.load("
            "weights_only=True) refused it for safety, because loading it would "
            "run arbitrary code (a pickled module or custom classes). Save "
            "model.state_dict() instead, or convert it to .safetensors. "
            f"({reason[0] if reason else type(exc).__name__})"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise ValueError(
            f"{param}={str(path)!r} is not a readable torch file: {exc}"
        ) from exc


def as_state_dict(payload, path: str, param: str) -> dict[str, torch.Tensor]:
    """The plain state dict inside a loaded payload (nested or DataParallel)."""
    while isinstance(payload, Mapping) and not _all_tensors(payload):
        nested = [k for k in _CONTAINER_KEYS if isinstance(payload.get(k), Mapping)]
        if not nested:
            break
        payload = payload[nested[0]]
    if not isinstance(payload, Mapping) or not payload or not _all_tensors(payload):
        kind = (
            f"a dict with keys {list(payload)[:8]}"
            if isinstance(payload, Mapping)
            else type(payload).__name__
        )
        raise ValueError(
            f"{param}={path!r} is not a plain state dict (names -> tensors); it "
            f"holds {kind}."
        )
    keys = list(payload)
    if all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in payload.items()}
    return dict(payload)


def _all_tensors(mapping: Mapping) -> bool:
    return all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items()
    )


def load_weights(
    module: nn.Module,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    ignore: tuple[str, ...] = (),
    param: str = "weights",
) -> str:
    """Load a state dict (a local file or a mapping) into ``module`` in place.

    Matching, in this order:

    1. **By name**: every tensor of ``module.state_dict()`` (parameters and
       buffers) must be in the file with the same shape. The file may have
       extra entries only under ``ignore`` (the classifier the backbone
       removed, e.g. ``"fc"``); a file without any ``num_batches_tracked``
       entries (older checkpoints) leaves those counters as they are.
    2. **By position**, when the names differ: the file's tensors, in the
       order they were saved, must match the module's state dict one to one
       in count and shape (``num_batches_tracked`` left out on both sides when
       the file has none). At most two trailing tensors of a classification
       layer (a name whose layer part is ``fc``, ``_fc``, ``classifier``,
       ``head``, ``heads``, ``last_linear`` or ``logits``) are skipped. This
       loads e.g. EfficientNet-Lite0 weights saved with ``_conv_stem``/
       ``_blocks`` names into timm's ``tf_efficientnet_lite0``. Shapes alone
       cannot tell apart two tensors of the same shape saved in another
       order, so only use it for the same architecture saved by another
       implementation. safetensors files store tensors sorted by name, so they
       only match by name.

    Parameters
    ----------
    module : nn.Module
        The architecture, modified in place.
    weights : str, path-like or mapping
        A file accepted by :func:`read_state_dict`, or a state dict.
    ignore : tuple of str
        Module-name prefixes of file entries the module does not have on
        purpose (a removed classifier).
    param : str
        The parameter name used in error messages.

    Returns
    -------
    str
        ``"name"`` or ``"position"``: how the tensors were matched.

    Raises
    ------
    ValueError
        If neither matching works; lists the first missing and unexpected
        keys, shape mismatches, and why matching by position failed.
    """
    if isinstance(weights, Mapping):
        label, ordered = "the given state dict", True
        state = as_state_dict(weights, label, param)
    else:
        label = f"{param}={os.fspath(weights)!r}"
        ordered = Path(os.fspath(weights)).suffix.lower() != ".safetensors"
        state = read_state_dict(weights, param=param)
    target = module.state_dict()
    keep_counters = any(k.endswith("num_batches_tracked") for k in state)
    wanted = [
        k for k in target if keep_counters or not k.endswith("num_batches_tracked")
    ]

    matched, problems, names_differ = _match_by_name(target, wanted, state, ignore)
    how = "name"
    if matched is None and names_differ:
        if not ordered:
            problems.append(
                "matching by position needs the saved order, which a safetensors "
                "file does not keep"
            )
        else:
            matched, problem = _match_by_position(target, wanted, state)
            problems.append(problem)
            how = "position"
    if matched is None:
        raise ValueError(
            f"{label} does not fit the {type(module).__name__} architecture: "
            + "; ".join(problems)
            + "."
        )
    result = module.load_state_dict(matched, strict=False)
    left = [k for k in result.missing_keys if k in wanted]
    if left or result.unexpected_keys:  # pragma: no cover - guarded above
        raise ValueError(
            f"{label}: could not load {left[:5]} / {result.unexpected_keys[:5]}."
        )
    return how


def _match_by_name(target, wanted, state, ignore):
    """Match by key; returns (matched or None, problems, whether names differ)."""
    missing = [k for k in wanted if k not in state]
    unexpected = [
        k for k in state if k not in target and not any(under(k, p) for p in ignore)
    ]
    shapes = [
        f"{k!r}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in wanted
        if k in state and state[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {_first(missing)})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected keys (e.g. {_first(unexpected)})"
        )
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:5])})")
    matched = None if problems else {k: state[k] for k in wanted}
    return matched, problems, bool(missing or unexpected)


def _match_by_position(target, wanted, state):
    keys = list(state)
    if not any(k.endswith("num_batches_tracked") for k in keys):
        keys = [k for k in keys if not k.endswith("num_batches_tracked")]
    extra = len(keys) - len(wanted)
    if 0 < extra <= 2 and all(_is_classifier_key(k) for k in keys[-extra:]):
        keys = keys[:-extra]
    if len(keys) != len(wanted):
        return None, (
            f"matching by position failed: the file has {len(keys)} tensors, the "
            f"model {len(wanted)}"
        )
    for i, (k_file, k_model) in enumerate(zip(keys, wanted, strict=True)):
        if state[k_file].shape != target[k_model].shape:
            return None, (
                f"matching by position failed at tensor {i}: file {k_file!r} "
                f"{tuple(state[k_file].shape)} vs model {k_model!r} "
                f"{tuple(target[k_model].shape)}"
            )
    return {
        k_model: state[k_file] for k_file, k_model in zip(keys, wanted, strict=True)
    }, ""


def _is_classifier_key(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2].lstrip("_") in _CLASSIFIER_NAMES


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")
