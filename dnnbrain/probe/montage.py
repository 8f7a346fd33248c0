"""Montages of a unit's selected stimuli, each cropped to the unit's receptive field.

A stimulus is shown as the network saw it (after ``dnn.test_transform``, undone to
pixels), cropped to the theoretical receptive field (:mod:`dnnbrain.probe.receptive`) of
the unit at its location: the location of a channel's maximum, a spatial unit's own
position; the whole image for a vector unit or a layer without a spatial field.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from ..viz import to_uint8_image
from .actsource import Source, as_source
from .receptive import ReceptiveField, theoretical_rf

__all__ = ["layer_field", "crop", "montage_figure", "unit_montage"]


def layer_field(dnn: Any, layer: str, input_size: Tuple[int, int],
                call: Any = "last") -> Optional[ReceptiveField]:
    """The layer's theoretical receptive field at ``input_size``, or None where it has
    none (a vector or token-attention layer): crops then show the whole image."""
    try:
        return theoretical_rf(dnn, layer, input_size=tuple(input_size),
                              call=call if call is not None else "last")
    except ValueError:
        return None


def crop(image: np.ndarray, rf: Optional[ReceptiveField],
         location: Optional[Sequence[int]]) -> np.ndarray:
    """``image`` ``(H, W, 3)`` cropped to ``rf``'s box at ``location`` ``(row, col)``
    (counted from 1); the whole image without a field or a location."""
    if rf is None or location is None:
        return image
    top, left, bottom, right = rf.box(int(location[0]) - 1, int(location[1]) - 1)
    return image[top:bottom, left:right]


def montage_figure(images: List[np.ndarray], titles: List[str], suptitle: str = "",
                   ncol: int = 8) -> Figure:
    """One panel per image (uint8 ``(h, w, 3)``), ``ncol`` a row, each titled."""
    n = len(images)
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    fig = Figure(figsize=(1.6 * ncol, 1.8 * nrow + (0.4 if suptitle else 0)))
    for i, (img, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def unit_montage(dnn: Any, stimuli: Any, index: Sequence[int], values: Sequence[float],
                 locations: Optional[Sequence[Sequence[int]]],
                 rf: Optional[ReceptiveField], ids: Sequence[str],
                 suptitle: str = "", ncol: int = 8) -> Figure:
    """The montage of one unit's selected stimuli.

    Parameters
    ----------
    dnn : DNN
        Its ``test_transform`` prepares (and undoes) each stimulus.
    stimuli : Source, Stimulus or anything :func:`~dnnbrain.probe.actsource.as_source` takes
        The whole stimulus set; only the rows ``index`` are read.
    index, values : sequences of length k
        Selected rows (from 0) and their values, best first.
    locations : (k, 2) ints from 1, or None
        Where each crop is centred (:func:`crop`).
    rf : ReceptiveField or None
    ids : sequence of str
        Every stimulus id (titles).
    suptitle : str
    ncol : int
        Panels a row.
    """
    source = stimuli if isinstance(stimuli, Source) else as_source(stimuli,
                                                                   dnn.test_transform)
    images, titles = [], []
    for j, row in enumerate(index):
        x = source.load(int(row), int(row) + 1)
        pix = to_uint8_image(x, transform=dnn.test_transform)
        loc = None if locations is None else locations[j]
        images.append(crop(pix, rf, loc))
        where = "" if loc is None else f" @({int(loc[0])},{int(loc[1])})"
        titles.append(f"{values[j]:.4g}{where}\n{ids[int(row)][-18:]}")
    return montage_figure(images, titles, suptitle, ncol)
