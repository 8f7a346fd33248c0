"""Images to show beside their maps: any image as uint8 RGB pixels, an image as the network
saw it (through its ``test_transform`` and back), and saving pixels to a file.

:mod:`dnnbrain.viz` builds its overlays on these and re-exports them
(``viz.to_uint8_image`` ...). Headless: nothing here imports pyplot.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from dnnbrain.dnn.base import load_image

PathLike = Union[str, os.PathLike]


def to_uint8_image(x: Any, transform: Any = None) -> np.ndarray:
    """Any image -> uint8 ``(H, W, 3)`` RGB pixels.

    Parameters
    ----------
    x : PIL.Image, path, numpy.ndarray or torch.Tensor
        Without ``transform``: anything :func:`dnnbrain.dnn.base.load_image` takes (HW /
        HWC / CHW, uint8 0..255 or float 0..1). With it: a ``(C, H, W)`` or
        ``(1, C, H, W)`` network input, ``C`` the transform's ``channels`` (3, or 1 for
        a grayscale network: shown gray).
    transform : object with ``denormalize`` or None
        E.g. ``dnn.test_transform``: ``denormalize((N, 3, H, W) tensor) -> pixels 0..1``
        shows the image as the network saw it.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8.
    """
    if transform is not None:
        if not callable(getattr(transform, "denormalize", None)):
            raise TypeError("`transform` must have a denormalize(x) method (such as "
                            f"dnn.test_transform), got {type(transform).__name__}")
        c = getattr(transform, "channels", 3)  # 1: a grayscale network's input
        if not isinstance(x, (np.ndarray, torch.Tensor)) or x.ndim not in (3, 4) \
                or (x.ndim == 4 and x.shape[0] != 1) or x.shape[-3] != c:
            raise ValueError(f"with `transform`, `image` must be a ({c}, H, W) or (1, {c}, H,"
                             f" W) network input, got {type(x).__name__} {np.shape(x)}")
        t = torch.as_tensor(x).detach().to("cpu", torch.float32)
        with torch.no_grad():
            pix = torch.as_tensor(transform.denormalize(t if t.ndim == 4 else t[None]))[0]
        pix = pix.expand(3, -1, -1) if c == 1 else pix
    else:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and arr.size and not (
                -1e-6 <= arr.min() <= arr.max() <= 1 + 1e-6):
            raise ValueError("float `image` pixels must lie in 0..1, got "
                             f"{arr.min():.4g}..{arr.max():.4g}; for a network input pass "
                             "`transform=` (e.g. dnn.test_transform)")
        pix = load_image(arr)
    pix = pix.clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(pix.permute(1, 2, 0).numpy())


def network_view(image: Any, transform: Any = None) -> np.ndarray:
    """An image as the network saw it: uint8 ``(H, W, 3)`` pixels.

    Parameters
    ----------
    image : PIL.Image, path, numpy.ndarray or torch.Tensor
        With ``transform``: a path or PIL image goes through the transform's geometry
        (resize, centre crop) and channel handling (alpha dropped as the network's input
        drops it) and back through ``denormalize``, so it has the size and crop of its
        map; an array or tensor is taken as a ``(3, H, W)`` network input (see
        :func:`to_uint8_image`). Without: :func:`to_uint8_image` of the image as it is.
    transform : ImageTransform or None
        E.g. ``dnn.test_transform``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 (a one-channel input is shown gray).
    """
    if transform is None:
        return to_uint8_image(image)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(image)
    else:
        x = transform(image)
    x = x[None] if x.ndim == 3 else x
    if x.ndim == 4 and x.shape[1] == 1:  # a one-channel network input, shown gray
        with torch.no_grad():
            pix = torch.as_tensor(transform.denormalize(x.float()))
        return to_uint8_image(pix[0, 0].clamp(0, 1).numpy())
    return to_uint8_image(x, transform)


def save_image(path: PathLike, arr_uint8: Any) -> Path:
    """Save pixels to an image file (format from the extension).

    Parameters
    ----------
    path : str or path
        Destination file (returned as a :class:`pathlib.Path`); its folder must exist.
    arr_uint8 : numpy.ndarray, torch.Tensor or PIL.Image
        uint8 ``(H, W, 3)`` / ``(H, W)`` saved as is; anything else goes through
        :func:`to_uint8_image` (e.g. float 0..1, channels first).
    """
    arr = arr_uint8.numpy(force=True) if isinstance(arr_uint8, torch.Tensor) else arr_uint8
    if not (isinstance(arr, np.ndarray) and arr.dtype == np.uint8
            and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3))):
        arr = to_uint8_image(arr)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return Path(path)


__all__ = ["to_uint8_image", "network_view", "save_image"]
