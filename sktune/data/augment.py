"""Augmentation of training images: the ``augment`` parameter.

``augment`` is None, ``"light"``, ``"strong"`` or a callable. It runs inside
:class:`sktune.data.images.ImagePreprocess`, on the uint8 batch, while the
network is in training mode: training batches only. Evaluation, prediction,
the frozen-prefix pass, ``embed`` and the builder's probe run in eval mode
and never augment.

- ``"light"``: a random resized crop back to the image's own size and a
  horizontal flip (``torchvision.transforms.v2``);
- ``"strong"``: ``"light"``, then ``v2.TrivialAugmentWide`` (one random
  photometric or geometric operation at a random strength);
- a callable takes a uint8 ``N x C x H x W`` batch (torchvision's
  convention, on the training device) and returns one of the same N and C
  (H and W may change); its output is checked every batch.

torchvision v2 transforms draw one set of random parameters per call, so
applied to a batch every image would get the same crop: the named policies
are applied image by image (:class:`PerImage`). Every draw comes from torch's
global RNG, which a fit seeds per epoch from ``random_state``. torchvision is
imported when a named policy first runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._constraints import InvalidParameterError

__all__ = [
    "AUGMENTED_KINDS",
    "AUGMENTS",
    "AUGMENT_ACCEPTED",
    "PerImage",
    "augment_hint",
    "augment_name",
    "batch_augment",
    "is_augment",
]

#: The named policies.
AUGMENTS = ("light", "strong")

#: The input kinds that reach the network as uint8 ``N x H x W x C`` batches
#: (arrays, and photos decoded at working size), the only ones augmented:
#: float images are taken as preprocessed.
AUGMENTED_KINDS = ("image", "photos")

AUGMENT_ACCEPTED = (
    "None, 'light' (random resized crop and horizontal flip), 'strong' (light, "
    "then TrivialAugmentWide) or a callable taking and returning a uint8 "
    "N x C x H x W batch"
)

# The share of the picture a "light" crop keeps (RandomResizedCrop's scale).
# ImageNet's (0.08, 1) is made for training from scratch over hundreds of
# epochs; fine-tuning a small set for a few epochs, a crop of 8% often loses
# the object and rarely looks like the centre-cropped images the model is
# evaluated on. Keeping at least about a third of the picture still varies
# the position and scale of the object.
CROP_SCALE = (0.35, 1.0)


def is_augment(value) -> bool:
    """Whether ``value`` is a valid ``augment`` parameter."""
    if value is None:
        return True
    if isinstance(value, str):
        return value in AUGMENTS
    return callable(value) and not isinstance(value, type)


def augment_hint(value) -> str:
    """Why a value is no ``augment``, beyond what is accepted."""
    if isinstance(value, type):
        return (
            "A class is not a transform: pass an instance, e.g. "
            "augment=v2.RandomHorizontalFlip()."
        )
    return ""


def augment_name(value) -> str:
    """``augment=...`` as messages show it (a callable by its name)."""
    if value is None or isinstance(value, str):
        return f"augment={value!r}"
    name = getattr(value, "__name__", None) or f"{type(value).__name__}(...)"
    return f"augment={name}"


def batch_augment(augment) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What augments a uint8 ``N x C x H x W`` batch for a valid ``augment``.

    None for None; a :class:`PerImage` policy for a name; a callable wrapped
    so that its output is checked (:class:`Checked`).
    """
    if augment is None:
        return None
    if isinstance(augment, str):
        return PerImage(augment)
    return Checked(augment)


class PerImage:
    """A named policy, applied to each image of a batch with its own draw.

    Parameters
    ----------
    policy : {"light", "strong"}
    """

    def __init__(self, policy: str):
        self.policy = policy

    def transform(self, height: int, width: int):
        """The v2 transform of one ``C x H x W`` image of that size."""
        from torchvision.transforms import v2

        steps = [
            v2.RandomResizedCrop((height, width), scale=CROP_SCALE, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if self.policy == "strong":
            steps.append(v2.TrivialAugmentWide())
        return v2.Compose(steps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        transform = self.transform(*x.shape[-2:])
        return torch.stack([transform(image) for image in x])

    def __repr__(self) -> str:
        return f"PerImage({self.policy!r})"


class Checked:
    """A user's callable, its output checked against the contract."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x)
        if (
            isinstance(out, torch.Tensor)
            and out.dtype == torch.uint8
            and out.ndim == 4
            and out.shape[:2] == x.shape[:2]
        ):
            return out
        got = (
            f"a {out.dtype} tensor of shape {tuple(out.shape)}"
            if isinstance(out, torch.Tensor)
            else f"an object of type {type(out).__name__}"
        )
        raise InvalidParameterError(
            f"{augment_name(self.fn)} must return a uint8 N x C x H x W tensor with "
            f"the batch's N={x.shape[0]} and C={x.shape[1]} (it is given a uint8 "
            f"batch of shape {tuple(x.shape)}); it returned {got}."
        )

    def __repr__(self) -> str:
        return f"Checked({self.fn!r})"
