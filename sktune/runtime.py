"""Where and at what precision a network runs: device, autocast, gradient scaling.

- ``device="auto"``: CUDA where it is available, else the CPU
  (:func:`resolve_device`).
- ``precision="32" | "bf16" | "16"``: the backbone's forward and backward run
  under :func:`torch.autocast` at that precision; the head and the loss stay
  in float32 (:func:`compute_dtype`). Float16 gradients are scaled
  (:func:`grad_scaler`, torch's ``GradScaler``) so small ones do not vanish.
- :class:`StepGuard`: the part of a training step between the loss and the
  optimizer: backward (scaled for float16), then a check that stops a
  non-finite step before it is applied. :class:`AcceleratorGuard` is the
  same with Hugging Face Accelerate's autocast and backward.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "PRECISIONS",
    "AcceleratorGuard",
    "StepGuard",
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


class StepGuard:
    """Backward, then a check that stops a non-finite step before it applies.

    Parameters
    ----------
    scaler : torch.amp.GradScaler, optional
        Scales the loss for float16 training (:func:`grad_scaler`); the
        gradients are unscaled before callbacks see them, and the scaler
        steps the optimizer (:meth:`step`).
    """

    def __init__(self, scaler: torch.amp.GradScaler | None = None):
        self.scaler = scaler

    def autocast(self):
        """The context the forward pass and the loss run in."""
        return contextlib.nullcontext()

    @property
    def scaled(self) -> bool:
        """Whether a gradient scaler handles overflowing gradients."""
        return self.scaler is not None

    def backward(self, loss: torch.Tensor, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)  # callbacks see true gradients

    def step(self, optimizer) -> bool:
        """Step ``optimizer`` through the scaler (False: no scaler, step it yourself)."""
        if self.scaler is None:
            return False
        self.scaler.step(optimizer)
        self.scaler.update()
        return True

    def check(self, loss: torch.Tensor, optimizer, where: str, lr) -> None:
        """Raise before the optimizer applies a non-finite step.

        The weights stay those of the last finite step, and the estimator
        usable; the error says ``where`` (epoch and batch) and suggests a
        rate below ``lr``.
        """
        what = self.not_finite(loss, optimizer)
        if what is not None:
            raise FloatingPointError(
                f"Training diverged at {where}: the {what}. The estimator keeps "
                f"the weights of the last finite step; try a lower learning rate "
                f"than lr={lr}."
            )

    def not_finite(self, loss: torch.Tensor, optimizer) -> str | None:
        """What is not finite in this step (None: all is).

        With gradient scaling, an overflowing gradient is the scaler's
        business (it skips the step and lowers the scale); only the loss is
        checked.
        """
        grads = (
            []
            if self.scaled
            else [
                # The optimizer's own parameter list: walking the whole
                # module's parameters every batch cost 17% of a cached probe.
                p.grad
                for group in optimizer.param_groups
                for p in group["params"]
                if p.grad is not None
            ]
        )
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else 0.0
        if torch.isfinite(loss + grad_norm):  # one check (one sync), usually
            return None
        if not torch.isfinite(loss):
            return f"loss is {loss.item()}"
        return "gradient is not finite"


class AcceleratorGuard(StepGuard):
    """:class:`StepGuard` with an ``accelerate.Accelerator``'s autocast and
    backward (its own gradient scaler, where it has one)."""

    def __init__(self, accelerator):
        super().__init__(None)
        self.accelerator = accelerator

    def autocast(self):
        return self.accelerator.autocast()

    @property
    def scaled(self) -> bool:
        return getattr(self.accelerator, "scaler", None) is not None

    def backward(self, loss: torch.Tensor, optimizer) -> None:
        self.accelerator.backward(loss)
