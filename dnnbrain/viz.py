"""Saliency visualisation: PAIR's grayscale/diverging maps (Smilkov et al. 2017, SmoothGrad),
colormap heatmaps and overlays (Slideflow), DNNBrain's figure grid, PyHealth's labelled panel.

Headless: figures are :class:`matplotlib.figure.Figure` with an Agg canvas, never pyplot.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Dict, Hashable, Optional, Sequence, Union

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image

from dnnbrain.dnn.base import is_batch, load_image, norm, resize

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, os.PathLike]
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


def _colorize(m: np.ndarray, cmap: Union[str, Colormap], percentile: Optional[float],
              vmin: Optional[float], vmax: Optional[float]) -> np.ndarray:
    cm = _get_cmap(cmap)
    _check_limits(vmin, vmax)
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
        Any matplotlib colormap name (an unknown one raises ValueError).
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


def _clean(ax: Any) -> None:
    """Axes 'off' but keeping the y label (row titles)."""
    ax.set(xticks=[], yticks=[])
    ax.spines[:].set_visible(False)


def saliency_grid(images: Any, maps: Any, row_titles: Optional[Sequence[str]] = None,
                  col_titles: Optional[Sequence[str]] = None, cmap: str = "gray",
                  vmin: Optional[float] = None, vmax: Optional[float] = None,
                  mode: str = "RGB", fname: Optional[PathLike] = None,
                  percentile: float = 99, transform: Any = None) -> Figure:
    """DNNBrain's ``dnn_saliency`` figure: stimuli in the first row, one row per unit.

    Parameters
    ----------
    images : sequence of images, (N, ...) array/tensor, or a Stimulus
        N stimuli (see :func:`to_uint8_image`; network inputs with ``transform``).
    maps : array/tensor (U, N, ...) or list of U lists of N maps
        Map ``[u][n]`` is ``(H, W)``, ``(3, H, W)`` or ``(H, W, 3)``.
    row_titles, col_titles : sequence of U / N str or None
        Unit row labels (e.g. ``'fc3_540'``) and titles above the stimuli.
    cmap, vmin, vmax
        Colormap and ``imshow`` limits (None: autoscale) for colormapped maps.
    mode : {'RGB', 'gray'}
        'gray': :func:`grayscale` (at ``percentile``) with ``cmap``. 'RGB': a 3-channel map
        min-max normalised as an RGB image; 2-D maps use ``cmap``.
    fname : str, path or None
        Save the figure there (format from the extension: PNG, PDF, SVG...).
    percentile, transform
        Clipping percentile for ``mode='gray'``; see :func:`to_uint8_image`.

    Returns
    -------
    matplotlib.figure.Figure
        ``(U + 1) * N`` axes, row-major.
    """
    check_figure_options(cmap, vmin, vmax, mode, percentile)
    percentile = float(percentile)
    images = getattr(images, "paths", images)  # a Stimulus contributes its files
    stims = list(images) if is_batch(images) else [images]
    rows = [list(r) for r in maps]
    n_img, n_unit = len(stims), len(rows)
    if not n_img or not n_unit:
        raise ValueError(f"`images` and `maps` must not be empty, got {n_img} and {n_unit}")
    for u, r in enumerate(rows):
        if len(r) != n_img:
            raise ValueError(f"`maps` row {u} has {len(r)} maps, expected one per image "
                             f"({n_img}); `maps` is (U units, N images, ...)")
    for name, titles, n in (("row_titles", row_titles, n_unit),
                            ("col_titles", col_titles, n_img)):
        if titles is not None and len(titles) != n:
            raise ValueError(f"`{name}` must have {n} entries, got {len(titles)}")
    fig = Figure(figsize=(2.2 * n_img, 2.2 * (n_unit + 1)), layout="constrained")
    FigureCanvasAgg(fig)  # headless canvas, no pyplot
    axes = fig.subplots(n_unit + 1, n_img, squeeze=False)
    for i, stim in enumerate(stims):
        axes[0, i].imshow(to_uint8_image(stim, transform))
        _clean(axes[0, i])
        if col_titles is not None:
            axes[0, i].set_title(str(col_titles[i]))
    for u, r in enumerate(rows):
        for i, mp in enumerate(r):
            ax = axes[u + 1, i]
            m = _as_map(mp)
            if mode == "gray":
                ax.imshow(_gray(m, percentile), cmap=cmap, vmin=vmin, vmax=vmax)
            elif m.ndim == 3 and m.shape[-1] == 3:
                ax.imshow(norm(m))
            else:
                ax.imshow(m.reshape(m.shape[:2]), cmap=cmap, vmin=vmin, vmax=vmax)
            _clean(ax)
            if row_titles is not None and i == 0:
                ax.set_ylabel(str(row_titles[u]))
    if fname is not None:
        fig.savefig(fname)
    return fig


def _label(value: Any, id2label: Optional[Dict[Hashable, Any]], name: str) -> str:
    value = value.item() if isinstance(value, (torch.Tensor, np.ndarray)) else value
    if id2label is None:
        return str(value)
    if value not in id2label:
        raise ValueError(f"`{name}` {value!r} is not a key of `id2label` "
                         f"(keys: {list(id2label)[:10]})")
    return str(id2label[value])


def labelled_panel(image: Any, map: ArrayLike, true_label: Any = None, pred_label: Any = None,
                   id2label: Optional[Dict[Hashable, Any]] = None, title: Optional[str] = None,
                   alpha: float = 0.3, cmap: Union[str, Colormap] = "hot",
                   fname: Optional[PathLike] = None, transform: Any = None) -> Figure:
    """PyHealth's ``visualize_saliency_map`` panel, headless: the image with the map
    overlaid and the title ``"True: X, Predicted: Y"``.

    Parameters
    ----------
    image, map, alpha, cmap, transform
        As in :func:`overlay` (PyHealth's defaults: ``alpha=0.3``, ``cmap='hot'``).
    true_label, pred_label : int, str, 0-d tensor or None
        Labels shown in the title (looked up in ``id2label``, class index -> name, if given).
    title : str or None
        Prefix: ``"{title} - True: X, Predicted: Y"``.
    fname : str, path or None
        Save the figure there.

    Returns
    -------
    matplotlib.figure.Figure
        One axes.
    """
    pairs = [("True", true_label, "true_label"), ("Predicted", pred_label, "pred_label")]
    labels = ", ".join(f"{head}: {_label(v, id2label, name)}" for head, v, name in pairs
                       if v is not None)
    text = f"{title} - {labels}" if title and labels else (title or labels)
    fig = Figure(figsize=(6.0, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(overlay(image, map, alpha=alpha, cmap=cmap, transform=transform))
    ax.axis("off")
    ax.set_title(text)
    if fname is not None:
        fig.savefig(fname)
    return fig


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


__all__ = ["check_figure_options", "grayscale", "diverging", "heatmap", "overlay",
           "to_uint8_image", "saliency_grid", "labelled_panel", "save_image"]
