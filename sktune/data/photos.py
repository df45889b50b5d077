"""Photos as they come: image files, PIL images and pictures of any size.

``X`` may be a sequence of photos: paths (``str`` or ``os.PathLike``, as a
list, a 1-D array, a pandas Series or a one-column DataFrame), PIL images,
or uint8 arrays (``H x W`` or ``H x W x C``) of different sizes. Strings are
paths for an image backbone and texts for a text backbone.

Every photo is brought to the backbone's working size the way its
pretrained evaluation preprocessing does (timm's ``resolve_data_config``,
torchvision's weights' ``transforms()``): its EXIF orientation applied,
converted to RGB (or gray for a one-channel backbone), resized so that it
covers ``size / crop_pct`` and centre-cropped to ``size``
(:class:`PhotoSpec`). JPEGs are reduced while they decode (Pillow's
``Image.draft``): a 2592 px photo meant for 224 px is decoded at 1/8 scale,
never at full size.

:meth:`Photos.load` decodes every photo once, in DataLoader worker
processes, into one uint8 ``N x H x W x C`` tensor held for the length of
the call (``fit``, ``predict``) within a memory budget; the photos beyond
the budget are checked (a reduced decode) and decoded again when used.
Files that are missing, are not images or are truncated are all reported
in one error, before any training. The network sees uint8 batches, as it
does for images in one array (:class:`sktune.data.images.ImagePreprocess`).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import astuple, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "PhotoDataset",
    "PhotoSpec",
    "Photos",
    "decode",
    "is_photo",
    "photo_workers",
]

#: Errors listed in full before the rest are only counted.
_MAX_LISTED = 10


#: Pillow's resampling filters by the names timm and torchvision give them.
_FILTERS = {
    "nearest": 0,
    "nearest-exact": 0,
    "lanczos": 1,
    "bilinear": 2,
    "bicubic": 3,
    "box": 4,
    "hamming": 5,
}


def _pil():
    """Pillow's Image module (the vision extra, a dependency of torchvision)."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with torchvision
        raise ImportError(
            "Photo input (paths, PIL images, pictures of any size) needs Pillow: "
            "pip install 'sktune[vision]'."
        ) from exc
    return Image


def _is_pil(item) -> bool:
    """Whether ``item`` is a PIL image (without importing Pillow: one exists
    only where Pillow was imported)."""
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(item, image.Image)


def is_photo(item) -> bool:
    """Whether ``item`` is one photo: a path, a PIL image or a uint8 picture."""
    if isinstance(item, (str, np.str_, os.PathLike)) or _is_pil(item):
        return True
    return (
        isinstance(item, np.ndarray)
        and item.dtype == np.uint8
        and (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (1, 3, 4)))
    )


@dataclass(frozen=True)
class PhotoSpec:
    """How a photo becomes one input sample of the backbone.

    Attributes
    ----------
    size : (int, int)
        The working size (height, width): the centre crop.
    crop_pct : float
        The crop's share of the resized photo: the photo is resized to cover
        ``size / crop_pct`` first (timm's evaluation transform).
    interpolation : str
        The resize filter ("bicubic", "bilinear", ...).
    channels : int
        3 (RGB) or 1 (gray).
    """

    size: tuple[int, int]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    channels: int = 3

    @classmethod
    def of(cls, image_size, data_config: dict | None) -> PhotoSpec:
        """The spec for the estimator's ``image_size`` and the backbone's
        pretrained preprocessing (``data_config``).

        ``image_size=None`` or "auto" is the backbone's own input size; an
        int or (height, width) sets the crop, resized with the backbone's
        ``crop_pct`` and filter.

        Raises
        ------
        ValueError
            Without ``image_size`` for a backbone that states no input size.
        """
        config = data_config or {}
        channels = int(config.get("input_size", (3,))[0])
        if channels not in (1, 3):
            raise ValueError(
                f"The backbone takes {channels}-channel images, but photos decode "
                "to RGB (3 channels) or gray (1): pass a uint8 array of "
                f"N x H x W x {channels} images instead."
            )
        if image_size is None or isinstance(image_size, str):
            if "input_size" not in config:
                raise ValueError(
                    "Photos of any size need a working size, and this backbone "
                    "states no input size: pass image_size=(height, width) (or an "
                    "int), the size every photo is resized and centre-cropped to."
                )
            size = tuple(int(v) for v in config["input_size"][1:])
        elif isinstance(image_size, (tuple, list)):
            size = (int(image_size[0]), int(image_size[1]))
        else:
            size = (int(image_size), int(image_size))
        interpolation = str(config.get("interpolation", "bilinear"))
        if interpolation not in _FILTERS:
            interpolation = "bilinear"  # timm's "random" is a training setting
        return cls(size, float(config.get("crop_pct", 1.0)), interpolation, channels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One decoded photo's shape, ``H x W x C``."""
        return (*self.size, self.channels)

    def as_tuple(self) -> tuple:
        return astuple(self)


def decode(source, spec: PhotoSpec) -> np.ndarray:
    """One photo at the working size, as uint8 ``H x W x C``.

    A path is opened with Pillow, reduced while decoding where the format
    allows it (JPEG's DCT scaling through ``Image.draft``), turned upright
    by its EXIF orientation and converted to RGB or gray; then resized to
    cover ``size / crop_pct`` (Pillow's antialiased filters, as
    torchvision's ``Resize`` on PIL images) and centre-cropped to ``size``.

    Raises
    ------
    OSError, ValueError, UnidentifiedImageError
        For a file that is missing, not an image, or truncated.
    """
    from PIL import ImageOps

    Image = _pil()
    height, width = spec.size
    cover = (math.floor(height / spec.crop_pct), math.floor(width / spec.crop_pct))
    if isinstance(source, np.ndarray):
        gray = source.ndim == 3 and source.shape[2] == 1
        image = Image.fromarray(source[..., 0] if gray else source)
    elif _is_pil(source):
        image = source
    else:
        image = Image.open(os.fspath(source))
        w, h = _upright_size(image)
        scale = max(cover[0] / h, cover[1] / w)
        if scale < 1:  # JPEG: decode at the smallest 1/2^k scale still covering
            image.draft(
                "L" if spec.channels == 1 and image.mode == "L" else None,
                (math.ceil(image.width * scale), math.ceil(image.height * scale)),
            )
    image = _converted(ImageOps.exif_transpose(image), spec.channels)
    # Resize, then centre crop: computed as one resize of the region the
    # crop keeps (Pillow's ``box``), the same pixels at half the work.
    resized = _covering(image.height, image.width, cover)
    top = round((resized[0] - height) / 2.0)  # as torchvision's center_crop
    left = round((resized[1] - width) / 2.0)
    sy, sx = image.height / resized[0], image.width / resized[1]
    box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
    image = image.resize((width, height), _FILTERS[spec.interpolation], box=box)
    pixels = np.array(image, dtype=np.uint8)  # writable: torch takes it as is
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _covering(h: int, w: int, cover: tuple[int, int]) -> list[int]:
    """The size ``h x w`` scales to so that it just covers ``cover``: the
    binding side exactly, the other truncated (torchvision's ``Resize``)."""
    if cover[0] * w >= cover[1] * h:
        return [cover[0], max(cover[1], int(w * cover[0] / h))]
    return [max(cover[0], int(h * cover[1] / w)), cover[1]]


def _upright_size(image) -> tuple[int, int]:
    """The (width, height) after the EXIF orientation is applied."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        return image.height, image.width
    return image.width, image.height


def _converted(image, channels: int):
    """``image`` in RGB (3 channels) or L (1), from any Pillow mode.

    16-bit and 32-bit integer modes span their full range (a 16-bit PNG's
    65535 is white); Pillow's own conversion would clip them at 255.
    Palette images with a transparent color go through RGBA, as Pillow
    advises.
    """
    target = "RGB" if channels == 3 else "L"
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        top = (
            65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        )
        gray = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        image = _pil().fromarray(gray)
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == target else image.convert(target)


def _check(source, spec: PhotoSpec) -> None:
    """Decode a file at its smallest reduced size: it exists, is an image and
    is complete (a truncated JPEG fails even at 1/8 scale)."""
    if isinstance(source, np.ndarray) or _is_pil(source):
        return
    with _pil().open(os.fspath(source)) as image:
        image.draft(None, (1, 1))
        image.load()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "a directory, not a file"
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    return f"{type(exc).__name__}: {exc}"


class _Decoding(Dataset):
    """The decode pass: sample ``i`` is ``(i, pixels)`` for the first
    ``n_kept`` photos, ``(i, None)`` for the rest once checked, or
    ``(i, reason)`` for a file that cannot be read."""

    def __init__(self, sources, spec: PhotoSpec, n_kept: int):
        self.sources = sources
        self.spec = spec
        self.n_kept = n_kept

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i):
        try:
            if i < self.n_kept:
                return i, decode(self.sources[i], self.spec)
            _check(self.sources[i], self.spec)
            return i, None
        except Exception as exc:  # every bad file is reported, not the first
            return i, _reason(exc)


def photo_workers(n_photos: int) -> int:
    """Decode worker processes by default: one per core, up to 4, and none
    for a few photos (a worker takes longer to start than they to decode)."""
    if n_photos < 64:
        return 0
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return min(4, cores)


class Photos:
    """Validated photo input: the sources, and the photos decoded so far.

    Holds no pixels until :meth:`load`; indexing gives one photo's uint8
    ``H x W x C`` tensor (decoded again if it was beyond the budget).

    Parameters
    ----------
    sources : list
        Paths, PIL images or uint8 arrays.
    """

    def __init__(self, sources: list):
        self.sources = sources
        self.spec: PhotoSpec | None = None
        self.kept: torch.Tensor | None = None  # decoded photos, at working size
        # Each photo's row in ``kept``, -1 for one beyond the budget.
        self.slots = np.full(len(sources), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sources)

    def load(
        self, spec: PhotoSpec, *, budget_mb: float, workers: int | None, param="X"
    ):
        """Decode every photo once (into memory, up to ``budget_mb``) and
        check the rest; raise naming every file that cannot be read.

        Parameters
        ----------
        spec : PhotoSpec
        budget_mb : float
            The most the decoded photos may hold, in MB.
        workers : int or None
            Decode worker processes (None: :func:`photo_workers`).
        param : str
            The name of the input in errors.

        Returns
        -------
        self
        """
        if self.spec == spec and self.kept is not None:
            return self
        n_kept = min(len(self), int(budget_mb * 2**20) // math.prod(spec.shape))
        kept = torch.empty((n_kept, *spec.shape), dtype=torch.uint8)
        workers = photo_workers(len(self)) if workers is None else workers
        loader = DataLoader(
            _Decoding(self.sources, spec, n_kept),
            batch_size=8,
            num_workers=workers,
            collate_fn=list,  # pixels travel pickled, not through shared memory
        )
        errors, pixels = [], kept.numpy()  # numpy copies: no torch threads
        for items in loader:
            for i, out in items:
                if isinstance(out, str):
                    errors.append((i, out))
                elif out is not None:
                    pixels[i] = out
        if errors:
            raise ValueError(self._bad_files(errors, param))
        self.spec, self.kept = spec, kept
        self.slots = np.where(np.arange(len(self)) < n_kept, np.arange(len(self)), -1)
        return self

    def take(self, indices) -> Photos:
        """The photos ``indices``, sharing the decoded ones (no copy)."""
        indices = np.asarray(indices, dtype=np.int64)
        part = Photos([self.sources[i] for i in indices])
        part.spec, part.kept, part.slots = self.spec, self.kept, self.slots[indices]
        return part

    def check_paths(self, param: str = "X") -> None:
        """Raise when no path is a file (texts given to an image backbone,
        say), before anything that needs the backbone; :meth:`load` names
        the bad files among good ones."""
        errors = [
            (i, "no such file")
            for i, source in enumerate(self.sources)
            if isinstance(source, (str, os.PathLike))
            and not os.path.exists(os.fspath(source))
        ]
        if errors and len(errors) == len(self):
            raise ValueError(self._bad_files(errors, param))

    def _bad_files(self, errors, param: str) -> str:
        listed = "; ".join(
            f"{param}[{i}] {_shown(self.sources[i])}: {reason}"
            for i, reason in errors[:_MAX_LISTED]
        )
        more = len(errors) - _MAX_LISTED
        tail = f"; and {more} more" if more > 0 else ""
        if len(errors) == len(self) and all(
            reason == "no such file" and isinstance(self.sources[i], str)
            for i, reason in errors
        ):
            return (
                f"{param} holds strings, but none is a file: for a backbone without "
                "a tokenizer strings are paths of photos (texts need a Hugging Face "
                f"text backbone). {listed}{tail}."
            )
        return (
            f"{len(errors)} of {len(self)} photos cannot be read: {listed}{tail}. "
            "Fix or remove them; nothing was trained or changed."
        )

    def __getitem__(self, i) -> torch.Tensor:
        slot = self.slots[i]
        if slot >= 0:
            return self.kept[slot]
        return torch.from_numpy(decode(self.sources[i], self.spec))

    def digests(self) -> list[bytes]:
        """One digest per photo, for the frozen-prefix cache: a file by its
        real path, size and modification time (a changed file is a new
        sample); a PIL image or array by its pixels. No path is kept."""
        return [_digest(source) for source in self.sources]


def _shown(source) -> str:
    """A source as errors name it: a path in full, in quotes."""
    if _is_pil(source):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<uint8 array {'x'.join(map(str, source.shape))}>"
    return repr(os.fspath(source))


def _digest(source) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    if _is_pil(source):
        digest.update(repr(("pil", source.mode, source.size)).encode())
        digest.update(source.tobytes())
    elif isinstance(source, np.ndarray):
        digest.update(repr(("array", source.shape)).encode())
        digest.update(np.ascontiguousarray(source).tobytes())
    else:
        path = os.path.realpath(os.fspath(source))
        stat = os.stat(path)
        digest.update(repr(("file", path, stat.st_size, stat.st_mtime_ns)).encode())
    return digest.digest()


class PhotoDataset(Dataset):
    """Decoded photos (and targets), a batch at a time, for skorch's loops.

    Batches are uint8 ``N x H x W x C`` tensors, as from an image array.
    Photos held in memory are gathered in one operation; the others are
    decoded here, in the loader's worker processes when it has any.
    """

    def __init__(self, photos: Photos, y=None):
        self.photos = photos
        self.y = None if y is None else torch.as_tensor(np.asarray(y))

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        slots = self.photos.slots[indices]
        index = torch.as_tensor(indices, dtype=torch.long)
        if (slots >= 0).all():
            X = self.photos.kept[torch.from_numpy(slots)]
        else:
            X = torch.stack([self.photos[int(i)] for i in indices])
        if self.y is None:
            return X, torch.zeros(len(indices), dtype=torch.long)
        y = self.y[index]
        return X, y

    @staticmethod
    def collate_fn(batch):
        """Batches arrive ready from :meth:`__getitems__`."""
        return batch

    @property
    def decodes_on_the_fly(self) -> bool:
        """Whether some photos are beyond the budget (decoded when used)."""
        return bool((self.photos.slots < 0).any())

    def __getstate__(self):
        # A worker started by spawn would receive a copy of the decoded
        # photos: it decodes the ones it needs instead.
        state = dict(self.__dict__)
        photos = Photos(self.photos.sources)
        photos.spec = self.photos.spec  # slots all -1: nothing decoded
        state["photos"] = photos
        return state
