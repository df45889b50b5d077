"""Images: uint8 pictures to the backbone's normalized input, memory layout.

uint8 ``N x H x W x C`` images stay uint8 (4x smaller than float) until a
batch is converted by :class:`ImagePreprocess` with the backbone's own
pretrained normalization; in training mode it augments the uint8 batch
first (:mod:`sktune.data.augment`). Convolutional backbones may run in channels-last
memory layout (:func:`use_channels_last`), which oneDNN and cuDNN
convolutions run fastest in.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .._modules import eval_mode, same_output
from ..heads import pool_features

__all__ = [
    "IMAGE_SIZE_ACCEPTED",
    "ImagePreprocess",
    "image_preprocess",
    "is_image_size",
    "use_channels_last",
]

IMAGE_SIZE_ACCEPTED = (
    "None (keep the images' size), 'auto' (the backbone's input size), an int "
    "or (height, width)"
)


class ImagePreprocess(nn.Module):
    """uint8 ``N x H x W x C`` images to normalized float ``N x C x H x W``.

    Float tensors pass through unchanged (they are taken as already
    preprocessed). The normalization is the backbone's own (its pretrained
    data config); without one, pixels are only scaled to [0, 1].

    Parameters
    ----------
    mean, std : sequence of float
        Per-channel normalization, in [0, 1] pixel units.
    size : (int, int) or None
        Resize to this height and width (bilinear, antialiased); None keeps
        the images' own size.
    augment : callable, optional
        Applied to the uint8 ``N x C x H x W`` batch before resizing and
        normalizing, in training mode only (see
        :func:`sktune.data.augment.batch_augment`); each fit sets it from
        the estimator's ``augment``.
    """

    def __init__(
        self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size=None, augment=None
    ):
        super().__init__()
        # The layout of the output: channels-last when the backbone runs so
        # (set when the estimator builds its network).
        self.memory_format = torch.contiguous_format
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.size = tuple(size) if size is not None else None
        self.augment = augment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        # The backbone's layout: standard NCHW strides unless it runs
        # channels-last, which the permuted view of N x H x W x C already is.
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.shape[-1] == 1:
            x = x[..., 0].unsqueeze(1)
        else:
            x = x.permute(0, 3, 1, 2)
        # Training batches only: eval (predictions, the frozen-prefix pass,
        # embed, the builder's probe) sees the images as they are.
        if self.training and self.augment is not None:
            x = self.augment(x)
        if x.shape[1] > 1:
            x = x.contiguous(memory_format=self.memory_format)
        x = x.float().div_(255.0)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(
                x, size=self.size, mode="bilinear", antialias=True, align_corners=False
            )
        return (x - _per_channel(self.mean, x)) / _per_channel(self.std, x)


def _per_channel(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The normalization ``stat`` for the channels of ``x``.

    Fewer channels than the statistics (gray into an RGB backbone) use the
    first ones; more channels (multispectral bands) need the same value for
    every channel, as without a pretrained normalization (mean 0, std 1).
    """
    channels = x.shape[1]
    if stat.shape[1] >= channels:
        return stat[:, :channels]
    if torch.all(stat == stat[:, :1]):
        return stat[:, :1]
    raise ValueError(
        f"The images have {channels} channels, but the backbone's pretrained "
        f"normalization has {stat.shape[1]} ({stat.flatten().tolist()}): pass "
        f"{stat.shape[1]}-channel images, or float32 N x C x H x W images "
        "normalized yourself."
    )


def _positive_int(value) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value > 0
    )


def is_image_size(image_size) -> bool:
    """Whether ``image_size`` is a valid ``image_size`` parameter."""
    if image_size is None or (isinstance(image_size, str) and image_size == "auto"):
        return True
    if isinstance(image_size, (tuple, list)):
        return len(image_size) == 2 and all(map(_positive_int, image_size))
    return _positive_int(image_size)


def image_preprocess(image_size, data_config: dict | None) -> ImagePreprocess:
    """The preprocessing of uint8 images for a backbone, in eval mode.

    The network's ``train()`` turns it to training mode, and so its
    augmentation (set by each fit) on, for training batches only.

    Parameters
    ----------
    image_size : None, "auto", int or (int, int)
        The estimator's ``image_size`` (validated with :func:`is_image_size`).
    data_config : dict or None
        The backbone's pretrained preprocessing (``mean``, ``std``,
        ``input_size``), if it states one.
    """
    config = data_config or {}
    if image_size is None:
        size = None
    elif isinstance(image_size, str):
        if "input_size" not in config:
            raise ValueError(
                "image_size='auto' needs the backbone's input size, which this "
                "backbone does not state; pass image_size=(height, width)."
            )
        size = tuple(int(v) for v in config["input_size"][1:])
    elif isinstance(image_size, numbers.Integral):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(v) for v in image_size)
    if "mean" not in config:
        preprocess = ImagePreprocess(size=size)
    else:
        preprocess = ImagePreprocess(config["mean"], config["std"], size)
    # Planning (the probe, the layout check, the cut's verification) runs a
    # synthetic sample through it: never augmented, nor drawing from the RNG
    # that then initializes the head.
    return preprocess.eval()


def use_channels_last(backbone: nn.Module, x, reference: torch.Tensor) -> str | None:
    """Convert ``backbone`` to channels-last memory layout where that is safe.

    Channels-last (NHWC strides) is the layout that oneDNN's CPU kernels and
    cuDNN run convolutions fastest in; the values do not change. The backbone
    is converted in place and checked on ``x`` (a preprocessed probe batch):
    it must run and reproduce ``reference``, its pooled features in the
    default layout (a module that calls ``.view`` on its input fails here).

    Returns None when the backbone now runs channels-last, else the reason it
    stays as it was.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        return "the input is not a batch of images (N x C x H x W)"
    if not any(isinstance(m, nn.Conv2d) for m in backbone.modules()):
        return "the backbone has no 2-D convolution"
    backbone.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), eval_mode(backbone):
            out = pool_features(
                backbone(x.contiguous(memory_format=torch.channels_last))
            )
        same = same_output(out, reference, rtol=1e-3, atol=1e-4)
        reason = None if same else "its output differs in channels-last layout"
    except Exception as exc:  # e.g. a .view() or an assert on contiguity
        reason = f"it fails in channels-last layout ({type(exc).__name__}: {exc})"
    if reason is not None:
        backbone.to(memory_format=torch.contiguous_format)
    return reason
