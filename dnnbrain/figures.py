"""Figures of saliency maps: DNNBrain's ``dnn_saliency`` grid, labelled for publication,
and PyHealth's labelled panel.

Every map panel can carry its own title (method, layer, unit, class name); the figure
carries a colorbar whose label states how the maps were scaled. Defaults by the maps'
sign: non-negative maps (CAMs, grayscale ``|map|``) get the sequential
:data:`dnnbrain.viz.SEQUENTIAL` from 0, signed maps the diverging
:data:`dnnbrain.viz.DIVERGING` centred on zero (limits ``+-1`` after scaling each map to
its own ``max |value|``). Stimuli are drawn as the network saw them when a
``transform`` is given (same resize and crop as their maps).

Headless: figures are :class:`matplotlib.figure.Figure` with an Agg canvas, never pyplot.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Hashable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from .dnn.base import is_batch, norm
from .viz import (_as_map, _get_cmap, _gray, check_figure_options, default_cmap,
                  network_view, overlay, to_uint8_image)

PathLike = Union[str, os.PathLike]
#: Panel title font size (points).
TITLE_SIZE = 7


def _clean(ax: Any) -> None:
    """Axes 'off' but keeping the y label (row titles)."""
    ax.set(xticks=[], yticks=[])
    ax.spines[:].set_visible(False)


def _stim_pixels(stim: Any, transform: Any) -> np.ndarray:
    """A stimulus as drawn: as the network saw it with ``transform``
    (:func:`dnnbrain.viz.network_view`), else as it is."""
    return network_view(stim, transform) if transform is not None else to_uint8_image(stim)


def grid_scaling(maps: Sequence[Sequence[np.ndarray]], mode: str, cmap: Any,
                 vmin: Optional[float], vmax: Optional[float],
                 percentile: float) -> Tuple[Any, float, float, str, bool]:
    """How :func:`saliency_grid` shows its maps: ``(cmap, vmin, vmax, label, scaled)``.

    ``scaled`` is True when each map is divided by its own ``max |value|`` first (no
    ``vmin``/``vmax`` given, colormapped 2-D maps); ``label`` is the colorbar's text.
    """
    flat = [m for row in maps for m in row]
    if mode == "gray":
        return (cmap or "inferno", 0.0 if vmin is None else vmin,
                1.0 if vmax is None else vmax,
                f"|map| summed over channels, each map scaled to its own {percentile:g}th "
                "percentile (clipped)", False)
    two_d = [m for m in flat if m.ndim == 2 or m.shape[-1] == 1]
    signed = any(float(m.min()) < 0 for m in two_d)
    cmap = cmap or default_cmap([m for m in two_d] or [np.zeros(1)])
    if vmin is None and vmax is None:
        lo = -1.0 if signed else 0.0
        return cmap, lo, 1.0, "map / max |map|: each map scaled to its own max |value|", True
    data = np.concatenate([m.ravel() for m in two_d]) if two_d else np.zeros(1)
    lo = float(data.min()) if vmin is None else float(vmin)
    hi = float(data.max()) if vmax is None else float(vmax)
    return cmap, lo, hi, f"map value (colour limits {lo:.3g} .. {hi:.3g}, all maps)", False


def saliency_grid(images: Any, maps: Any, row_titles: Optional[Sequence[str]] = None,
                  col_titles: Optional[Sequence[str]] = None,
                  cmap: Union[str, Colormap, None] = None, vmin: Optional[float] = None,
                  vmax: Optional[float] = None, mode: str = "RGB",
                  fname: Optional[PathLike] = None, percentile: float = 99,
                  transform: Any = None,
                  panel_titles: Optional[Sequence[Sequence[str]]] = None,
                  title: Optional[str] = None, ncol: Optional[int] = None,
                  colorbar: bool = True) -> Figure:
    """DNNBrain's ``dnn_saliency`` figure: stimuli in the first row, one row per unit.

    Parameters
    ----------
    images : sequence of images, (N, ...) array/tensor, or a Stimulus
        N stimuli: paths, PIL images or pixels (see :func:`dnnbrain.viz.to_uint8_image`);
        with ``transform`` arrays/tensors are network inputs.
    maps : array/tensor (U, N, ...) or list of U lists of N maps
        Map ``[u][n]`` is ``(H, W)``, ``(3, H, W)`` or ``(H, W, 3)``.
    row_titles, col_titles : sequence of U / N str or None
        Unit row labels (y label of each block's first panel) and titles above stimuli.
    cmap : str, Colormap or None
        Colormap of colormapped maps; None: by sign, :data:`dnnbrain.viz.DIVERGING`
        centred on zero when any 2-D map is negative, else :data:`dnnbrain.viz.SEQUENTIAL`
        (always sequential for ``mode='gray'``).
    vmin, vmax : float or None
        Colour limits in map units, shared by every map. Both None (default): each map is
        divided by its own ``max |value|`` and shown on ``[0, 1]`` (non-negative maps) or
        ``[-1, 1]`` (signed), zero at the colormap's centre; the colorbar says so.
    mode : {'RGB', 'gray'}
        'gray': :func:`dnnbrain.viz.grayscale` (``|map|`` summed over channels, each map
        clipped at its own ``percentile``). 'RGB': a 3-channel map shown as an RGB image,
        min-max scaled per map (no colormap); 2-D maps colormapped as above.
    fname : str, path or None
        Save the figure there (format from the extension: PNG, PDF, SVG...).
    percentile : float
        Clipping percentile for ``mode='gray'``.
    transform : ImageTransform or None
        ``dnn.test_transform``: stimuli drawn as the network saw them (resize, crop and
        channels of the network input, the geometry of their maps).
    panel_titles : U lists of N str, or None
        A title per map panel (e.g. method, layer, unit and class name).
    title : str or None
        Figure title.
    ncol : int or None
        Stimuli per block of rows: with more stimuli the grid wraps into blocks of
        ``ncol`` columns, one below the other, in one figure (None: one block).
    colorbar : bool
        Draw the colorbar of the colormapped panels (and, for RGB panels, a note).

    Returns
    -------
    matplotlib.figure.Figure
        ``(U + 1)`` rows of panels per block (unused panels of the last block hidden),
        plus a colorbar axes when ``colorbar``.
    """
    check_figure_options(cmap if cmap is not None else "gray", vmin, vmax, mode, percentile)
    percentile = float(percentile)
    images = getattr(images, "paths", images)  # a Stimulus contributes its files
    stims = list(images) if is_batch(images) else [images]
    rows = [[_as_map(m) for m in r] for r in maps]
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
    if panel_titles is not None and (len(panel_titles) != n_unit or any(
            len(t) != n_img for t in panel_titles)):
        raise ValueError(f"`panel_titles` must be {n_unit} lists of {n_img} str")
    if ncol is not None and (isinstance(ncol, bool) or not isinstance(ncol, int) or ncol < 1):
        raise ValueError(f"`ncol` must be a positive int or None, got {ncol!r}")
    cols = n_img if ncol is None else min(ncol, n_img)
    blocks = math.ceil(n_img / cols)
    cm, lo, hi, label, scaled = grid_scaling(rows, mode, cmap, vmin, vmax, percentile)
    cm = _get_cmap(cm)
    lines = max((len(str(t).splitlines()) for r in (panel_titles or []) for t in r),
                default=0)
    fig = Figure(figsize=(1.9 * cols + (1.2 if colorbar else 0),
                          (1.9 + 0.13 * lines) * blocks * (n_unit + 1) + 0.3 * bool(title)),
                 layout="constrained")
    FigureCanvasAgg(fig)  # headless canvas, no pyplot
    axes = fig.subplots(blocks * (n_unit + 1), cols, squeeze=False)
    rgb_panels = False
    for i, stim in enumerate(stims):
        b, c = divmod(i, cols)
        ax = axes[b * (n_unit + 1), c]
        ax.imshow(_stim_pixels(stim, transform))
        _clean(ax)
        if col_titles is not None:
            ax.set_title(str(col_titles[i]), fontsize=TITLE_SIZE + 1)
        for u, r in enumerate(rows):
            ax = axes[b * (n_unit + 1) + u + 1, c]
            m = r[i]
            if mode == "gray":
                ax.imshow(_gray(m, percentile), cmap=cm, vmin=lo, vmax=hi)
            elif m.ndim == 3 and m.shape[-1] == 3:
                ax.imshow(norm(m))
                rgb_panels = True
            else:
                m2 = m.reshape(m.shape[:2])
                if scaled:
                    peak = float(np.abs(m2).max())
                    m2 = m2 / peak if peak > 0 else m2
                ax.imshow(m2, cmap=cm, vmin=lo, vmax=hi)
            _clean(ax)
            if panel_titles is not None:
                ax.set_title(str(panel_titles[u][i]), fontsize=TITLE_SIZE)
            if row_titles is not None and c == 0:
                ax.set_ylabel(str(row_titles[u]), fontsize=TITLE_SIZE + 1)
    for j in range(n_img, blocks * cols):  # the last block's empty columns
        b, c = divmod(j, cols)
        for r in range(n_unit + 1):
            axes[b * (n_unit + 1) + r, c].set_visible(False)
    if colorbar:
        mapped = mode == "gray" or any(m.ndim == 2 or m.shape[-1] == 1
                                       for r in rows for m in r)
        if mapped:
            cb = fig.colorbar(ScalarMappable(Normalize(lo, hi), cm), ax=axes, shrink=0.6,
                              aspect=30, pad=0.02)
            cb.set_label(label, fontsize=TITLE_SIZE)
        elif rgb_panels:
            cb = fig.colorbar(ScalarMappable(Normalize(0, 1), _get_cmap("gray")), ax=axes,
                              shrink=0.6, aspect=30, pad=0.02, ticks=[0, 1])
            cb.ax.set_yticklabels(["min", "max"], fontsize=TITLE_SIZE)
            cb.set_label("RGB: each channel of the map, min-max scaled per map (its own "
                         "range)", fontsize=TITLE_SIZE)
        cb.ax.tick_params(labelsize=TITLE_SIZE)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 2)
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


def labelled_panel(image: Any, map: Any, true_label: Any = None, pred_label: Any = None,
                   id2label: Optional[Dict[Hashable, Any]] = None, title: Optional[str] = None,
                   alpha: float = 0.3, cmap: Union[str, Colormap] = "hot",
                   fname: Optional[PathLike] = None, transform: Any = None) -> Figure:
    """PyHealth's ``visualize_saliency_map`` panel, headless: the image with the map
    overlaid and the title ``"True: X, Predicted: Y"``.

    Parameters
    ----------
    image, map, alpha, cmap, transform
        As in :func:`dnnbrain.viz.overlay` (PyHealth's defaults: ``alpha=0.3``,
        ``cmap='hot'``).
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


__all__ = ["saliency_grid", "grid_scaling", "labelled_panel", "TITLE_SIZE"]
