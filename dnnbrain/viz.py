"""Saliency visualisation: PAIR's grayscale/diverging maps (Smilkov et al. 2017, SmoothGrad),
colormap heatmaps and overlays (Slideflow), images as the network saw them, colormap
defaults by sign. The images (``to_uint8_image``, ``network_view``, ``save_image``) are in
:mod:`dnnbrain.vizimages`, re-exported here; the figures (DNNBrain's grid, PyHealth's
labelled panel) are in :mod:`dnnbrain.figures` (``viz.saliency_grid`` still finds them).

Headless: nothing here imports pyplot.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple, Union

import matplotlib
import numpy as np
import torch
from matplotlib.colors import Colormap

from dnnbrain.dnn.base import resize
from dnnbrain import vizimages as _vizimages
from dnnbrain.vizimages import network_view, save_image, to_uint8_image

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = _vizimages.PathLike  # re-export
_MODES = ("RGB", "gray")
#: How the channels of a saliency map become one value per pixel: ``'sumabs'`` (PAIR's
#: ``VisualizeImageGrayscale``: ``sum_c |m|``) or ``'maxabs'`` (PyHealth's gradient
#: saliency map: ``max_c |m|``).
CHANNEL_REDUCTIONS = ("sumabs", "maxabs")


def _check_reduce(reduce: Any) -> str:
    if not isinstance(reduce, str) or reduce not in CHANNEL_REDUCTIONS:
        raise ValueError(f"`reduce` must be one of {list(CHANNEL_REDUCTIONS)} (how a map's "
                         f"channels become one value per pixel), got {reduce!r}")
    return reduce


def _check_percentile(percentile: Any) -> float:
    if (isinstance(percentile, bool) or not isinstance(percentile, numbers.Real)
            or not 0 < float(percentile) <= 100):
        raise ValueError(f"`percentile` must be a number in (0, 100], got {percentile!r}")
    return float(percentile)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _as_map(x: Any) -> np.ndarray:
    """Map (tensor/array) -> float64 numpy ``(H, W)`` or ``(H, W, C)`` (channels last)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"`map` must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3) or arr.shape[2:] not in ((), (1,), (3,)) or not arr.size:
        raise ValueError("`map` must be (H, W), (C, H, W) or (H, W, C) with C 1 or 3 "
                         f"(channels first when both fit), got shape {tuple(np.shape(x))}")
    if not np.isfinite(arr).all():
        raise ValueError("`map` contains NaN or inf values")
    return arr


def _rescale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(x - lo) / (hi - lo)`` clipped to 0..1; when ``hi <= lo`` values above ``lo``
    saturate to 1 and the rest are 0 (a constant map gives zeros, never NaN)."""
    if hi > lo:
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (x > lo).astype(np.float64)


def grayscale(map: ArrayLike, percentile: float = 99, reduce: str = "sumabs") -> np.ndarray:
    """PAIR's ``VisualizeImageGrayscale``: ``|map|`` summed over channels, clipped, 0..1.

    Parameters
    ----------
    map : numpy.ndarray or torch.Tensor
        ``(3, H, W)`` (channels first, as dnnbrain returns), ``(H, W, 3)`` or ``(H, W)``.
    percentile : float
        In (0, 100]: values at or above this percentile of the reduced map saturate to 1.
    reduce : {'sumabs', 'maxabs'}
        ``s = sum_c |map|`` (PAIR's, default) or ``s = max_c |map|`` (PyHealth's map).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 in 0..1: ``clip((s - min(s)) / (P(s) - min(s)), 0, 1)``. A
        constant map gives zeros.
    """
    return _gray(_as_map(map), _check_percentile(percentile), _check_reduce(reduce))


def reduce_channels(maps: ArrayLike, reduce: str = "sumabs") -> np.ndarray:
    """The channels of saliency maps reduced to one value per pixel, unscaled.

    Parameters
    ----------
    maps : numpy.ndarray or torch.Tensor
        ``(..., C, H, W)``: channels third from last, as dnnbrain returns maps
        (``(C, H, W)``, ``(N, C, H, W)``, ``(N, U, C, H, W)``).
    reduce : {'sumabs', 'maxabs'}
        ``sum_c |m|`` (PAIR's grayscale, default) or ``max_c |m|`` (PyHealth's gradient
        saliency map, ``torch.max(torch.abs(grad), dim=1)``).

    Returns
    -------
    numpy.ndarray
        ``(..., H, W)`` float32, non-negative.

    Examples
    --------
    >>> reduce_channels(np.array([[[1.0]], [[-3.0]], [[2.0]]]), 'maxabs')
    array([[3.]], dtype=float32)
    """
    how = _check_reduce(reduce)
    arr = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if arr.ndim < 3 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"`maps` must be numbers shaped (..., C, H, W), got "
                         f"{arr.dtype} of shape {arr.shape}")
    mag = np.abs(arr.astype(np.float32, copy=False))
    return mag.sum(axis=-3) if how == "sumabs" else mag.max(axis=-3)


def _gray(m: np.ndarray, pct: float, reduce: str = "sumabs") -> np.ndarray:
    """:func:`grayscale` on an :func:`_as_map` array."""
    s = ((np.abs(m).sum(axis=-1) if reduce == "sumabs" else np.abs(m).max(axis=-1))
         if m.ndim == 3 else np.abs(m))
    return _rescale(s, float(s.min()), float(np.percentile(s, pct))).astype(np.float32)


def diverging(map: ArrayLike, percentile: float = 99) -> np.ndarray:
    """PAIR's ``VisualizeImageDiverging`` as documented: the signed map summed over
    channels, divided by a percentile of its absolute value, clipped to -1..1.

    Parameters
    ----------
    map : numpy.ndarray or torch.Tensor
        ``(3, H, W)``, ``(H, W, 3)`` or ``(H, W)``.
    percentile : float
        In (0, 100]: ``span = P(|s|)``; ``|s| >= span`` saturates to +-1.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 ``clip(s / span, -1, 1)``: symmetric, sign kept, zero stays
        exactly zero; when ``span`` is 0 non-zero values give +-1. (PAIR's code returns
        ``(s + span) / (2 span)``, which breaks its own "zero unchanged" contract.)
    """
    m = _as_map(map)
    s = m.sum(axis=-1) if m.ndim == 3 else m
    span = float(np.percentile(np.abs(s), _check_percentile(percentile)))
    out = np.clip(s / span, -1.0, 1.0) if span > 0 else np.sign(s)
    return (out + 0.0).astype(np.float32)  # + 0.0 turns -0.0 into 0.0


def _get_cmap(cmap: Union[str, Colormap]) -> Colormap:
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError):
        few = ["inferno", "viridis", "hot", "gray", "jet", "RdBu_r", "coolwarm", "magma"]
        raise ValueError(f"`cmap` must be a matplotlib colormap name such as {few} (all: "
                         f"matplotlib.colormaps), got {cmap!r}") from None


def _check_limits(vmin: Any, vmax: Any) -> None:
    for name, v in (("vmin", vmin), ("vmax", vmax)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                              or not math.isfinite(v)):
            raise ValueError(f"`{name}` must be a finite number or None, got {v!r}")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"`vmin` must be smaller than `vmax`, got vmin={vmin}, vmax={vmax}")


def check_figure_options(cmap: Union[str, Colormap] = "gray", vmin: Optional[float] = None,
                         vmax: Optional[float] = None, mode: str = "RGB",
                         percentile: float = 99) -> None:
    """Raise the ValueError :func:`saliency_grid` would raise for these options (an
    unknown ``cmap`` or ``mode``, non-finite or inverted ``vmin``/``vmax``, a
    ``percentile`` outside (0, 100]), before any map is computed."""
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {list(_MODES)}, got {mode!r}")
    _check_percentile(percentile)
    _get_cmap(cmap)
    _check_limits(vmin, vmax)


def _map_2d(map: ArrayLike, percentile: Optional[float], reduce: str = "sumabs") -> tuple:
    """Map -> (2-D float array, percentile still to apply). A 3-D map is reduced with
    :func:`grayscale` (which uses up the percentile; None means no clipping)."""
    m = _as_map(map)
    pct = None if percentile is None else _check_percentile(percentile)
    if m.ndim == 2:
        return m, pct
    return _gray(m, 100.0 if pct is None else pct, _check_reduce(reduce)).astype(
        np.float64), None


def auto_limits(m: np.ndarray, percentile: Optional[float]) -> Tuple[str, Optional[float],
                                                                      Optional[float]]:
    """What ``cmap='auto'`` means for one 2-D map ``m``: ``(cmap, vmin, vmax)``.

    A map with a negative value gets :data:`DIVERGING` centred on zero, limits ``-a, a``
    with ``a`` its max ``|value|`` (or that ``percentile`` of ``|value|``); any other map
    :data:`SEQUENTIAL` with the default limits (None, None).
    """
    if float(m.min()) >= 0:
        return SEQUENTIAL, None, None
    a = np.abs(m)
    hi = float(a.max() if percentile is None else np.percentile(a, percentile))
    return (DIVERGING, -hi, hi) if hi > 0 else (DIVERGING, -1.0, 1.0)


def _colorize(m: np.ndarray, cmap: Union[str, Colormap], percentile: Optional[float],
              vmin: Optional[float], vmax: Optional[float]) -> np.ndarray:
    _check_limits(vmin, vmax)
    if isinstance(cmap, str) and cmap == AUTO:
        cmap, lo, hi = auto_limits(m, percentile)
        if vmin is None and vmax is None:  # limits given by the caller win
            vmin, vmax = lo, hi
    cm = _get_cmap(cmap)
    lo = float(m.min() if vmin is None else vmin)
    hi = vmax if vmax is not None else (m.max() if percentile is None else
                                         np.percentile(m, percentile))
    return np.rint(cm(_rescale(m, lo, float(hi)))[..., :3] * 255.0).astype(np.uint8)


def heatmap(map: ArrayLike, cmap: Union[str, Colormap] = "inferno",
            percentile: Optional[float] = None, vmin: Optional[float] = None,
            vmax: Optional[float] = None, reduce: str = "sumabs") -> np.ndarray:
    """Colour a saliency map with a matplotlib colormap (Slideflow's ``inferno``).

    Parameters
    ----------
    map : numpy.ndarray or torch.Tensor
        ``(H, W)`` used as is, or ``(3, H, W)`` / ``(H, W, 3)`` reduced with
        :func:`grayscale` first (at ``percentile``, or 100 when None).
    cmap : str or matplotlib.colors.Colormap
        Any matplotlib colormap name (an unknown one raises ValueError), or ``'auto'``:
        :data:`DIVERGING` centred on zero for a map with negative values, else
        :data:`SEQUENTIAL` (:func:`auto_limits`).
    percentile : float or None
        For a 2-D map, the default ``vmax`` is this percentile of the map (None: its max).
    vmin, vmax : float or None
        Mapped to the colormap's ends (default: the map's min and max), values outside
        clipped. A constant map gives the low end everywhere.
    reduce : {'sumabs', 'maxabs'}
        How a 3-D map's channels are reduced (:func:`grayscale`).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    """
    m, pct = _map_2d(map, percentile, reduce)
    return _colorize(m, cmap, pct, vmin, vmax)


def overlay(image: Any, map: ArrayLike, alpha: float = 0.5,
            cmap: Union[str, Colormap] = "inferno", percentile: Optional[float] = None,
            transform: Any = None, vmin: Optional[float] = None,
            vmax: Optional[float] = None, reduce: str = "sumabs") -> np.ndarray:
    """Blend a colormap heatmap of ``map`` over ``image`` (Slideflow's ``overlay``).

    Parameters
    ----------
    image, transform
        See :func:`to_uint8_image` (with ``transform`` a network input is denormalised).
    map : numpy.ndarray or torch.Tensor
        ``(h, w)`` or ``(3, h, w)`` / ``(h, w, 3)`` (reduced with :func:`grayscale`); a map
        whose size differs from the image's is resized to it (bilinear), not the image.
    alpha : float
        Heatmap weight in [0, 1]: 0 gives the image, 1 the heatmap.
    cmap, percentile, vmin, vmax, reduce
        As in :func:`heatmap`.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8: ``round((1 - alpha) * image + alpha * heatmap)``.
    """
    a = _check_alpha(alpha)
    img = to_uint8_image(image, transform)
    m, pct = _map_2d(map, percentile, reduce)
    if m.shape != img.shape[:2]:
        m = resize(m.astype(np.float32), img.shape[:2]).astype(np.float64)
    out = (1.0 - a) * img + a * _colorize(m, cmap, pct, vmin, vmax).astype(np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


#: Default colormap of non-negative maps (CAMs, grayscale magnitude maps): sequential.
SEQUENTIAL = "inferno"
#: Default colormap of signed maps, centred on zero (limits: plus and minus the largest
#: absolute value): diverging.
DIVERGING = "RdBu_r"
#: ``cmap`` that picks :data:`DIVERGING` or :data:`SEQUENTIAL` by the map's sign.
AUTO = "auto"


def is_signed(maps: Any) -> bool:
    """True when any value of ``maps`` (an array, tensor, or a nested list of them) is
    negative: such maps get :data:`DIVERGING` centred on zero by default."""
    if isinstance(maps, (list, tuple)):
        return any(is_signed(m) for m in maps)
    arr = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    return bool(arr.size) and float(np.nanmin(arr)) < 0


def default_cmap(maps: Any) -> str:
    """:data:`DIVERGING` for signed maps (:func:`is_signed`), else :data:`SEQUENTIAL`."""
    return DIVERGING if is_signed(maps) else SEQUENTIAL


def __getattr__(name: str) -> Any:
    """``viz.saliency_grid`` and ``viz.labelled_panel`` live in :mod:`dnnbrain.figures`."""
    if name in ("saliency_grid", "labelled_panel"):
        from . import figures
        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["check_figure_options", "grayscale", "reduce_channels", "diverging", "heatmap",
           "overlay", "to_uint8_image", "network_view", "is_signed", "default_cmap", "auto_limits",
           "SEQUENTIAL", "DIVERGING", "AUTO", "save_image"]
