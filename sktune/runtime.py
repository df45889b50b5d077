"""Where and at what precision a network runs: device, autocast, gradient scaling.

- ``device="auto"``: CUDA where it is available, else the CPU
  (:func:`resolve_device`).
- ``precision="32" | "bf16" | "16"``: the backbone's forward and backward run
  under :func:`torch.autocast` at that precision; the head and the loss stay
  in float32 (:func:`compute_dtype`). Float16 gradients are scaled
  (:func:`grad_scaler`, torch's ``GradScaler``) so small ones do not vanish.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "PRECISIONS",
    "autocast",
    "compute_dtype",
    "grad_scaler",
    "resolve_device",
]

#: The accepted ``precision`` values and the autocast dtype of each.
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(device) -> str | torch.device | None:
    """The device ``device`` names: ``"auto"`` is CUDA where available."""
    if isinstance(device, str) and device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` (None: float32, no autocast)."""
    return PRECISIONS[precision]


def autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device_type`` (a no-op without a dtype)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def grad_scaler(precision: str, device) -> torch.amp.GradScaler | None:
    """A gradient scaler for float16 training on ``device`` (else None)."""
    if precision != "16":
        return None
    device_type = torch.device(resolve_device(device) or "cpu").type
    return torch.amp.GradScaler(device_type)
