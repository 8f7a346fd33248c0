"""Pictures of many maps at once: :func:`dnnbrain.viz.heatmap` and
:func:`dnnbrain.viz.overlay` vectorised over a stack of maps.

A run writes thousands of small pictures; calling the viz functions map by map costs more
than computing the maps on a small network. These functions do the same arithmetic in the
same order on a whole stack, so each picture is byte for byte what the viz function gives
(``tests/test_batch_pictures.py`` checks it).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import matplotlib
import numpy as np
import torch

from .. import viz


def _rescale(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per map (``lo``, ``hi``: ``(K, 1, 1)``) the rescaling of :mod:`dnnbrain.viz`:
    ``clip((x - lo) / (hi - lo), 0, 1)``, or ``x > lo`` where ``hi <= lo``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.where(hi > lo, scaled, (x > lo).astype(np.float64))


def _maps_2d(maps: np.ndarray, percentile: Optional[float], reduce: str = "sumabs"):
    """``(K, H, W)`` maps as they are, or ``(K, C, H, W)`` (C 1 or 3) reduced as
    :func:`dnnbrain.viz.grayscale` does (``reduce``: ``'sumabs'`` or ``'maxabs'``);
    returns (float64 stack, percentile still to apply)."""
    arr = np.asarray(maps, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("`map` contains NaN or inf values")
    if arr.ndim == 3:
        return arr, percentile
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"`maps` must be (K, H, W) or (K, C, H, W) with C 1 or 3, got "
                         f"{arr.shape}")
    s = np.abs(arr).sum(axis=1) if reduce == "sumabs" else np.abs(arr).max(axis=1)
    pct = 100.0 if percentile is None else percentile
    lo = s.min(axis=(1, 2), keepdims=True)
    hi = np.percentile(s, pct, axis=(1, 2), keepdims=True)
    return _rescale(s, lo, hi).astype(np.float32).astype(np.float64), None


def heatmaps(maps: np.ndarray, cmap: str = "inferno",
             percentile: Optional[float] = None, reduce: str = "sumabs") -> np.ndarray:
    """:func:`dnnbrain.viz.heatmap` of each map of a stack.

    Parameters
    ----------
    maps : numpy.ndarray
        ``(K, H, W)`` or ``(K, C, H, W)`` (``C`` 1 or 3, channels first) real maps.
    cmap : str
        A matplotlib colormap name, or ``'auto'`` (by each map's sign, as in
        :func:`dnnbrain.viz.heatmap`).
    percentile : float or None
        As in :func:`dnnbrain.viz.heatmap`.
    reduce : {'sumabs', 'maxabs'}
        Channel reduction, as in :func:`dnnbrain.viz.heatmap`.

    Returns
    -------
    numpy.ndarray
        ``(K, H, W, 3)`` uint8; ``out[k]`` equals
        ``viz.heatmap(maps[k], cmap, percentile, reduce=reduce)``.
    """
    m, pct = _maps_2d(maps, percentile, reduce)
    if cmap != viz.AUTO:
        return _lookup(m, pct, colour_table(cmap))
    signed = m.min(axis=(1, 2)) < 0
    out = np.empty(m.shape + (3,), np.uint8)
    if (~signed).any():
        out[~signed] = _lookup(m[~signed], pct, colour_table(viz.SEQUENTIAL))
    if signed.any():
        a = np.abs(m[signed])
        hi = (a.max(axis=(1, 2), keepdims=True) if pct is None else
              np.percentile(a, pct, axis=(1, 2), keepdims=True))
        hi = np.where(hi > 0, hi, 1.0)  # as viz.auto_limits: +-1 when |m|'s limit is 0
        out[signed] = _lookup(m[signed], pct, colour_table(viz.DIVERGING), -hi, hi)
    return out


def _lookup(m: np.ndarray, pct: Optional[float], lut: np.ndarray,
            lo: Optional[np.ndarray] = None, hi: Optional[np.ndarray] = None) -> np.ndarray:
    """Colour ``(K, H, W)`` maps with ``lut`` between per-map limits ``lo``, ``hi``
    (``(K, 1, 1)``; default: min, and max or the ``pct`` percentile), by matplotlib's
    float lookup: index ``floor(x * N)``, the top end ``x == 1`` in the last entry."""
    if lo is None:
        lo = m.min(axis=(1, 2), keepdims=True)
        hi = (m.max(axis=(1, 2), keepdims=True) if pct is None else
              np.percentile(m, pct, axis=(1, 2), keepdims=True))
    index = _rescale(m, lo, hi) * len(lut)
    return lut[np.minimum(index, len(lut) - 1).astype(np.intp)]


@functools.lru_cache(maxsize=16)
def colour_table(cmap: str) -> np.ndarray:
    """``(N, 3)`` uint8: entry ``i`` of the colormap's ``N``-entry table, rounded as
    :func:`dnnbrain.viz.heatmap` rounds it (looking colours up in it is matplotlib's own
    float lookup, 3-4x faster than colouring in float64 and rounding afterwards)."""
    cm = matplotlib.colormaps[cmap]
    table = np.rint(cm(np.arange(cm.N))[:, :3] * 255.0).astype(np.uint8)
    table.flags.writeable = False
    return table


def overlays(images: np.ndarray, maps: np.ndarray, alpha: float = 0.5,
             cmap: str = "inferno", percentile: Optional[float] = None,
             reduce: str = "sumabs") -> np.ndarray:
    """:func:`dnnbrain.viz.overlay` of each map on its image, for maps of the image's size.

    Parameters
    ----------
    images : numpy.ndarray
        ``(K, H, W, 3)`` uint8 pictures (e.g. :func:`stimulus_pixels`).
    maps : numpy.ndarray
        ``(K, H, W)`` or ``(K, C, H, W)`` maps of the same ``H, W``.
    alpha, cmap, percentile, reduce
        As in :func:`dnnbrain.viz.overlay`.

    Returns
    -------
    numpy.ndarray
        ``(K, H, W, 3)`` uint8, ``round((1 - alpha) * image + alpha * heatmap)``.
    """
    heat = heatmaps(maps, cmap, percentile, reduce).astype(np.float64)
    out = (1.0 - alpha) * images + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def stimulus_pixels(x: torch.Tensor, transform: Any) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 pictures of a ``(B, 3, H, W)`` network input, as
    :func:`dnnbrain.viz.to_uint8_image` shows it (denormalised by ``transform``)."""
    return np.stack([viz.to_uint8_image(x[i], transform) for i in range(len(x))])
