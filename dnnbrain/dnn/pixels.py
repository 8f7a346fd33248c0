"""Pixels -> tensors: what counts as an image and how it becomes a float ``(3, H, W)``
tensor in 0..1.

:func:`load_image` reads a PIL image in any mode, a path, or an array/tensor of pixels
(HW / HWC / CHW; uint8, uint16, bool or float 0..1) along one code path; :func:`luma` is
the grayscale a one-channel transform gives the network. :mod:`dnnbrain.dnn.base` builds
:class:`~dnnbrain.dnn.base.ImageTransform` and ``ip`` on top of these (and re-exports
them).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile

from ..io.images import decode, read_image, upright

ImageLike = Union[Image.Image, str, os.PathLike, np.ndarray, torch.Tensor]

_CHANNEL_COUNTS = (1, 3, 4)
#: Channels an :class:`~dnnbrain.dnn.base.ImageTransform` can give the network.
CHANNELS = (3, 1)
#: ITU-R 601-2 luma weights (PIL's ``convert('L')``) of a grayscale transform.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Grayscale ``(..., 1, H, W)`` of RGB pixels ``(..., 3, H, W)``: ``0.299 R + 0.587 G
    + 0.114 B`` (ITU-R 601-2, PIL's ``convert('L')``), what a grayscale
    :class:`~dnnbrain.dnn.base.ImageTransform` gives the network."""
    return torch.tensordot(_LUMA.to(rgb), rgb, dims=([0], [-3])).unsqueeze(-3)


_MODE_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
               "I": 65535.0, "F": 1.0}


def _to_numpy(img: Any) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu()
        if img.dtype.is_floating_point and img.dtype not in (torch.float16, torch.float32,
                                                              torch.float64):
            img = img.float()  # bfloat16, float8: numpy has no such dtype
        return img.numpy()
    return np.asarray(img)


def _channels_first(arr: np.ndarray, name: str) -> np.ndarray:
    """3-D array -> CHW. Channels first wins when the first axis has 1 or 3 entries (the
    dnnbrain convention), else a last axis of 1, 3 or 4 is channels, else a first axis of 4."""
    if arr.shape[0] in (1, 3):
        return arr
    if arr.shape[-1] in _CHANNEL_COUNTS:
        return np.moveaxis(arr, -1, 0)
    if arr.shape[0] == 4:
        return arr
    raise ValueError(f"`{name}` array must be HW, HWC or CHW with 1, 3 or 4 channels, got "
                     f"shape {arr.shape}")


def _pil_to_float(img: Image.Image) -> np.ndarray:
    """PIL image in any mode -> float32 HxWx3 array in 0..1 (alpha dropped)."""
    if img.width < 1 or img.height < 1:
        raise ValueError(f"`image` must have at least one pixel, got a {img.width}x"
                         f"{img.height} PIL image")
    if img.mode in _MODE_SCALE:
        arr = np.asarray(img, dtype=np.float32) / _MODE_SCALE[img.mode]
        if img.mode == "F" and not np.isfinite(arr).all():
            raise ValueError("`image` in PIL mode 'F' must be finite, got NaN or inf values")
        if img.mode == "F" and (arr.min() < 0 or arr.max() > 1):
            raise ValueError("`image` in PIL mode 'F' must hold values in 0..1, "
                             f"got {arr.min():.3g}..{arr.max():.3g}")
        return np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=-1)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as err:
            raise ValueError(f"`image` in PIL mode {img.mode!r} cannot be converted "
                             "to RGB") from err
    return np.asarray(img, dtype=np.float32) / 255.0


def _array_to_float_chw(arr: np.ndarray) -> np.ndarray:
    """Pixel array (HW, HWC or CHW; uint/int 0..255, uint16, bool or float 0..1) ->
    float32 3xHxW in 0..1."""
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = _channels_first(arr, "image")
    else:
        raise ValueError(f"`image` array must have 2 or 3 dimensions, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"`image` array must have at least one pixel, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("integer `image` arrays must hold 0..255 (or be uint16), got "
                             f"{arr.min()}..{arr.max()} ({arr.dtype})")
        out = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError("float `image` arrays must be finite pixels in 0..1, got NaN or "
                             "inf values")
        if out.min() < -1e-6 or out.max() > 1 + 1e-6:
            raise ValueError("float `image` arrays must hold pixels in 0..1, got "
                             f"{np.nanmin(out):.4g}..{np.nanmax(out):.4g}; divide uint8 data "
                             "by 255, or pass an already preprocessed tensor with "
                             "preprocessed=True")
        out = np.clip(out, 0, 1)
    else:
        raise TypeError(f"`image` array dtype must be bool, integer or float, got {arr.dtype}")
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out[:3])


def load_image(image: ImageLike, max_pixels: Optional[int] = None) -> torch.Tensor:
    """Any supported image -> float32 tensor ``(3, H, W)`` in 0..1, on the CPU.

    Parameters
    ----------
    image : PIL.Image, str, os.PathLike, numpy.ndarray or torch.Tensor
        A PIL image in any mode (L, LA, P, RGB, RGBA, CMYK, I;16, I, F), a path to an image
        file, or pixels as HW / HWC / CHW with uint8 0..255, uint16, bool or float 0..1.
        Files, and PIL images straight from ``Image.open``, are turned upright by their
        EXIF orientation; any other PIL image is used as it is (see
        :mod:`dnnbrain.io.images`).
    max_pixels : int or None
        Most pixels an image file may have (None: ``$DNNBRAIN_MAX_PIXELS``, else about
        89.5 million, see :func:`dnnbrain.io.images.pixel_limit`).

    Returns
    -------
    torch.Tensor
        ``(3, H, W)`` float32 in 0..1. The input is never modified.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        A missing file; a folder, an unreadable, truncated or too large file (named), or
        bad pixel values; an unsupported type or dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        img = read_image(image, max_pixels)
        try:
            return load_image(img)
        except ValueError as err:  # bad pixel values: name the file they came from
            msg = str(err).replace("`image` in", "in", 1)
            raise ValueError(f"image file '{image}': {msg}") from None
    if isinstance(image, ImageFile.ImageFile):  # straight from Image.open: decode, turn
        decode(image, path=image.filename)
        image = upright(image, path=image.filename)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.moveaxis(_pil_to_float(image), -1, 0).copy())
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return torch.from_numpy(_array_to_float_chw(_to_numpy(image)))
    raise TypeError("`image` must be a PIL image, a path, a numpy array or a torch tensor, "
                    f"got {type(image).__name__}")


def _resize(x: torch.Tensor, size: Tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return out.clamp_(0, 1) if mode == "bicubic" else out  # (bicubic overshoots)


__all__ = ["load_image", "luma"]
