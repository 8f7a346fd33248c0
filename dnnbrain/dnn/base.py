"""Image processing (``ip``) and the image-to-tensor path every method shares.

``ip`` keeps DNNBrain's helpers (``to_array``, ``to_tensor``, ``to_pil``, ``norm``,
``resize``, ``crop``, ``save``) with channels-first arrays. :class:`ImageTransform` is the
``test_transform`` of every network: it takes a PIL image, a path, or an array/tensor of
pixels and returns a normalised float tensor, along one code path for all of them
(:mod:`dnnbrain.dnn.pixels`, whose :func:`load_image` and :func:`luma` this module
re-exports).
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .pixels import (CHANNELS, ImageLike, _channels_first, _resize, _to_numpy, load_image,
                     luma)


class ImageTransform:
    """The ``test_transform`` of a network: pixels -> normalised network input.

    Parameters
    ----------
    size : int, tuple of int or None
        Output ``(H, W)`` (an int means square); None keeps the image size.
    mean, std : sequence of float or None
        Per-channel normalisation after scaling to 0..1; None skips it.
    resize : int or None
        Resize the shorter side to ``resize`` (keeping the aspect ratio), then crop the
        centre ``size``, as torchvision's ``ImageClassification`` transform does (ViT:
        256 then 224). None (default): resize straight to ``size``.
    interpolation : {'bilinear', 'bicubic'}
        Resampling of the resize (antialiased either way).
    channels : {3, 1}
        Channels of the network input: 3 (RGB) or 1 (grayscale, for a network whose first
        layer takes one channel: every image is turned to its luminance
        ``0.299 R + 0.587 G + 0.114 B``, ITU-R 601-2 as PIL's ``'L'`` mode, so ordinary
        RGB images, grayscale files and arrays all fit). ``mean``/``std`` then hold one
        number each.

    Notes
    -----
    PIL images, paths, arrays and tensors all follow one path: to float 0..1, resize with
    antialiasing (``torch.nn.functional.interpolate``), centre crop when ``resize`` is
    set, normalise. So the same pixels give the same input whatever container they came
    in.
    """

    def __init__(self, size: Union[int, Tuple[int, int], None],
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, resize: Optional[int] = None,
                 interpolation: str = "bilinear", channels: int = 3) -> None:
        if size is not None:
            size = (size, size) if isinstance(size, int) else size
            if (not isinstance(size, (tuple, list)) or len(size) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                               for v in size)):
                raise ValueError(f"`size` must be a positive int, (H, W) of positive ints or "
                                 f"None, got {size!r}")
        self.size = None if size is None else tuple(size)
        if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool)
                                   or resize < 1 or size is None):
            raise ValueError(f"`resize` must be a positive int (with a `size`) or None, got "
                             f"{resize!r}")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"`interpolation` must be one of ['bilinear', 'bicubic'], got "
                             f"{interpolation!r}")
        if channels not in CHANNELS or isinstance(channels, bool):
            raise ValueError(f"`channels` must be 3 (RGB) or 1 (grayscale), got {channels!r}")
        self.resize, self.interpolation, self.channels = resize, interpolation, int(channels)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is not None and (v.ndim != 1 or len(v) != self.channels):
                raise ValueError(f"`{name}` must hold {self.channels} number"
                                 f"{'s' if self.channels > 1 else ''} (channels="
                                 f"{self.channels}), got {v.tolist()}")

    def __call__(self, image: ImageLike) -> torch.Tensor:
        """Transform one image to a float32 ``(3, H, W)`` tensor."""
        return self.batch([image])[0]

    def batch(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Transform several images to one float32 ``(N, 3, H, W)`` tensor."""
        tensors = [load_image(im) for im in images]
        if self.channels == 1:
            tensors = [luma(t) for t in tensors]
        if self.size is None:
            shapes = {t.shape for t in tensors}
            if len(shapes) > 1:
                raise ValueError("images of different sizes need a transform with a `size`"
                                 f", got shapes {sorted(shapes)}")
            x = torch.stack(tensors)
        else:
            x = torch.cat([self._fit(t[None]) for t in tensors])
        return self.normalize(x)

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """One ``(1, 3, h, w)`` image to ``size``: straight, or shorter side to ``resize``
        then the centre crop."""
        if self.resize is None:
            return _resize(x, self.size, self.interpolation)
        h, w = x.shape[-2:]
        short = min(h, w)
        new = (max(self.size[0], round(h * self.resize / short)),
               max(self.size[1], round(w * self.resize / short)))
        x = _resize(x, new, self.interpolation)
        top, left = (new[0] - self.size[0]) // 2, (new[1] - self.size[1]) // 2
        return x[..., top:top + self.size[0], left:left + self.size[1]]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the mean/std normalisation to a ``(N, 3, H, W)`` 0..1 tensor."""
        if self.mean is not None:
            x = (x - self.mean.view(1, -1, 1, 1).to(x)) / self.std.view(1, -1, 1, 1).to(x)
        return x

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`normalize`: network input ``(N, 3, H, W)`` -> pixels in 0..1."""
        if self.mean is not None:
            x = x * self.std.view(1, -1, 1, 1).to(x) + self.mean.view(1, -1, 1, 1).to(x)
        return x

    def __repr__(self) -> str:
        mean = None if self.mean is None else [round(v, 4) for v in self.mean.tolist()]
        std = None if self.std is None else [round(v, 4) for v in self.std.tolist()]
        extra = (f", resize={self.resize}" if self.resize is not None else "") + \
            (f", interpolation={self.interpolation!r}" if self.interpolation != "bilinear"
             else "") + (f", channels={self.channels}" if self.channels != 3 else "")
        return f"ImageTransform(size={self.size}, mean={mean}, std={std}{extra})"



def _preprocessed(images: Any, transform: ImageTransform) -> torch.Tensor:
    """A preprocessed ``(3, H, W)`` / ``(N, 3, H, W)`` array or tensor, checked, as a float32
    ``(N, C, H, W)`` copy (nothing downstream can touch the caller's tensor)."""
    c = getattr(transform, "channels", 3)
    want = (f"({c}, {transform.size[0]}, {transform.size[1]})" if transform.size
            else f"({c}, H, W)")
    if not isinstance(images, (np.ndarray, torch.Tensor)) or images.ndim not in (3, 4):
        raise TypeError(f"with preprocessed=True `image` must be a {want} or (N, {want[1:]} "
                        f"tensor or array, got {type(images).__name__}"
                        f"{tuple(getattr(images, 'shape', ()))}")
    kind = images.dtype.kind if isinstance(images, np.ndarray) else (
        "f" if images.dtype.is_floating_point else "c" if images.dtype.is_complex else
        "b" if images.dtype == torch.bool else "i")
    if kind not in "biuf":
        raise TypeError(f"with preprocessed=True `image` must hold real numbers, got dtype "
                        f"{images.dtype}")
    x = (torch.from_numpy(np.array(images, dtype=np.float32)) if isinstance(images, np.ndarray)
         else images.detach().to(dtype=torch.float32, copy=True))
    x = x if x.ndim == 4 else x[None]
    if x.numel() == 0:
        raise ValueError(f"with preprocessed=True `image` must not be empty, got shape "
                         f"{tuple(images.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`image` must be finite, got {int((~torch.isfinite(x)).sum())} NaN "
                         f"or inf values in the preprocessed input of shape "
                         f"{tuple(images.shape)}")
    return x


def input_channels(model: Any) -> Optional[int]:
    """Channels the first convolution of ``model`` takes (its ``in_channels``), or None
    when it has no convolution (in ``named_modules`` order, the order they were defined)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return None


def is_batch(images: Any) -> bool:
    """True when ``images`` is several images: a list/tuple, or a 4-D array/tensor."""
    if isinstance(images, (list, tuple)):
        return True
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return images.ndim == 4
    return hasattr(images, "paths") and not isinstance(images, (str, os.PathLike))


def to_input(images: Any, transform: ImageTransform,
             preprocessed: bool = False) -> Tuple[torch.Tensor, bool]:
    """Images -> network input ``(N, 3, H, W)`` float32 on the CPU, and whether a batch
    was given.

    Parameters
    ----------
    images : image, list of images, (N, ...) array/tensor, or a Stimulus
        See :func:`load_image` for one image. A Stimulus contributes its file paths.
    transform : ImageTransform
        The network's ``test_transform``.
    preprocessed : bool
        When True, ``images`` is already the transform's output, ``(N, 3, H, W)`` or
        ``(3, H, W)`` float, and is used as it is (no resize, no normalisation).
    """
    if not isinstance(preprocessed, (bool, np.bool_)):
        raise TypeError(f"`preprocessed` must be True or False, got {preprocessed!r}")
    batch = is_batch(images)
    if preprocessed:
        return _preprocessed(images, transform), batch
    if hasattr(images, "paths") and not isinstance(images, (list, tuple)):
        images = list(images.paths)
    seq = list(images) if batch else [images]
    if not seq:
        raise ValueError("`image` is an empty batch")
    return transform.batch(seq), batch


# ---------------------------------------------------------------------------------------
# ip: DNNBrain's image-processing helpers


def to_array(pic: Any) -> np.ndarray:
    """Image -> numpy array, channels first.

    Parameters
    ----------
    pic : PIL.Image, numpy.ndarray or torch.Tensor
        A PIL image gives ``(C, H, W)`` (``(H, W)`` for single-band modes) in its own
        dtype (uint8 for RGB); arrays and tensors are returned as numpy copies.
    """
    if isinstance(pic, Image.Image):
        arr = np.array(pic)
        return np.ascontiguousarray(np.moveaxis(arr, -1, 0)) if arr.ndim == 3 else arr
    if isinstance(pic, (np.ndarray, torch.Tensor)):
        return np.array(_to_numpy(pic))
    raise TypeError(f"`pic` must be a PIL image, array or tensor, got {type(pic).__name__}")


def to_tensor(pic: Any) -> torch.Tensor:
    """Image -> float32 tensor ``(3, H, W)`` in 0..1 (see :func:`load_image`)."""
    return load_image(pic)


def norm(x: Any) -> np.ndarray:
    """Min-max rescale to float32 0..1; a constant input gives zeros (never NaN)."""
    arr = _to_numpy(x).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def to_pil(pic: Any, normalization: bool = False) -> Image.Image:
    """Array/tensor ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)`` -> PIL image.

    Parameters
    ----------
    pic : numpy.ndarray, torch.Tensor or PIL.Image
        Channels first as in DNNBrain (channels last is accepted too).
    normalization : bool
        True: min-max rescale to 0..255 first (a constant image gives zeros). False: uint8
        is kept, floats are read as 0..1 and scaled by 255; values are clipped.

    Returns
    -------
    PIL.Image
        Mode RGB for 3 channels, L for 1 channel or 2-D input.
    """
    if isinstance(pic, Image.Image):
        return pic.copy()
    arr = _to_numpy(pic)
    if arr.ndim == 3:
        arr = np.moveaxis(_channels_first(arr, "pic"), 0, -1)
    if arr.ndim not in (2, 3):
        raise ValueError(f"`pic` must be 2-D or 3-D, got shape {arr.shape}")
    if normalization:
        arr = norm(arr) * 255.0
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float32) * (255.0 if np.issubdtype(arr.dtype, np.floating) else 1.0)
    arr = np.clip(np.rint(arr) if arr.dtype != np.uint8 else arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def resize(pic: Any, size: Union[int, Tuple[int, int]]) -> Any:
    """Resize an image to ``size`` ``(H, W)`` (int: square), keeping its container.

    PIL images use bilinear resampling; arrays/tensors ``(C, H, W)`` or ``(H, W)`` use
    antialiased bilinear interpolation and keep their dtype.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if isinstance(pic, Image.Image):
        return pic.resize((hw[1], hw[0]), Image.BILINEAR)
    arr = _to_numpy(pic)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    t = t[None, None] if arr.ndim == 2 else t[None]
    out = _resize(t, hw)[0].numpy()
    out = out[0] if arr.ndim == 2 else out
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(arr.dtype)
    return torch.from_numpy(out) if isinstance(pic, torch.Tensor) else out


def crop(pic: Any, box: Tuple[int, int, int, int]) -> Any:
    """Crop ``box = (left, upper, right, lower)`` (PIL convention) from an image.

    Arrays/tensors are channels first ``(C, H, W)`` or ``(H, W)``.
    """
    left, upper, right, lower = (int(v) for v in box)
    if isinstance(pic, Image.Image):
        return pic.crop((left, upper, right, lower))
    h, w = pic.shape[-2:]
    if not (0 <= left < right <= w and 0 <= upper < lower <= h):
        raise ValueError(f"`box` must lie inside the {w}x{h} image with left<right and "
                         f"upper<lower, got {box}")
    return pic[..., upper:lower, left:right].copy() if isinstance(pic, np.ndarray) \
        else pic[..., upper:lower, left:right].clone()


def save(pic: Any, fname: Union[str, os.PathLike], normalization: bool = False) -> None:
    """Save an image (PIL, or array/tensor via :func:`to_pil`) to ``fname``."""
    to_pil(pic, normalization).save(fname)


ip = SimpleNamespace(to_array=to_array, to_tensor=to_tensor, to_pil=to_pil, norm=norm,
                     resize=resize, crop=crop, save=save)
"""DNNBrain's image-processing namespace: ``ip.to_pil(x, True)`` etc."""

__all__: List[str] = ["ip", "ImageTransform", "load_image", "luma", "to_input", "is_batch",
                      "to_array", "to_tensor", "to_pil", "norm", "resize", "crop", "save"]
