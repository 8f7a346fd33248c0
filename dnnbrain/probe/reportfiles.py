"""The files of the unit report (:mod:`dnnbrain.probe.report`): pictures with the
receptive field outlined, the response histogram, the selection tables, the summary's
receptive-field record."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from ..io.maps import atomic_write
from ..io.stim import Stimulus
from .receptive import ReceptiveField
from .topstim import TopStimuli, selection_table

__all__ = ["draw_box", "boxed", "histogram", "selection_file", "as_stimulus", "rf_record"]


def draw_box(image: np.ndarray, box: Sequence[int],
             colour: Tuple[int, int, int] = (0, 255, 0), width: int = 1) -> np.ndarray:
    """A copy of ``image`` (uint8 ``(H, W, 3)``) with the outline of ``box``
    ``(top, left, bottom, right)`` (bottom/right exclusive) drawn ``width`` pixels wide."""
    out = image.copy()
    top, left, bottom, right = (int(v) for v in box)
    w = max(1, int(width))
    out[top:min(top + w, bottom), left:right] = colour
    out[max(bottom - w, top):bottom, left:right] = colour
    out[top:bottom, left:min(left + w, right)] = colour
    out[top:bottom, max(right - w, left):right] = colour
    return out


def boxed(image: np.ndarray, box: Optional[Sequence[int]]) -> np.ndarray:
    """``image`` with the receptive field's box drawn (1 pixel per 64 of its side)."""
    if box is None:
        return image
    return draw_box(image, box, width=max(1, min(image.shape[:2]) // 64))


def histogram(path: Path, values: np.ndarray, marks: Mapping[str, float],
              title: str) -> Path:
    """Write the histogram of ``values`` ``(N,)`` (finite ones) with a dashed line at each
    of ``marks`` (label -> value) as a PNG at ``path``."""
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot(1, 1, 1)
    finite = values[np.isfinite(values)]
    ax.hist(finite, bins=int(np.clip(len(finite) // 3, 5, 50)), color="#4878a8")
    for (label, v), colour in zip(marks.items(), ("#d62728", "#2ca02c", "#9467bd")):
        ax.axvline(v, color=colour, linestyle="--", linewidth=1, label=f"{label} {v:.4g}")
    ax.set_xlabel("unit value")
    ax.set_ylabel("stimuli")
    ax.set_title(title, fontsize=9)
    if marks:
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.13, bottom=0.16, right=0.97, top=0.9)
    return atomic_write(path, fig.savefig)


def selection_file(path_stem: Path, stim: Optional[Stimulus], result: TopStimuli, u: int,
                   which: str) -> Path:
    """The selection of ``which`` as a ``.stim.csv`` (a stimulus table), else a ``.csv``."""
    if stim is not None:
        path = Path(f"{path_stem}.stim.csv")
        table = selection_table(stim, result, u, which)
        return atomic_write(path, lambda tmp: table.write(tmp))
    ranking = getattr(result, which)
    path = Path(f"{path_stem}.csv")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["stimID", "value"] + (["row", "col"] if ranking.location is not None
                                              else []))
            for j, row in enumerate(ranking.index[u]):
                loc = [] if ranking.location is None else list(ranking.location[u, j])
                w.writerow([result.ids[row], repr(float(ranking.value[u, j]))] + loc)
    return atomic_write(path, write)


def as_stimulus(stimuli: Any) -> Optional[Stimulus]:
    """The stimulus table of a Stimulus, a ``.stim.csv`` file or a folder; else None."""
    if isinstance(stimuli, Stimulus):
        return stimuli
    if isinstance(stimuli, (str, Path)) and Path(stimuli).is_dir():
        return Stimulus.from_folder(stimuli)
    if isinstance(stimuli, (str, Path)) and str(stimuli).endswith(".csv"):
        return Stimulus.read(stimuli)
    return None


def rf_record(rf: Optional[ReceptiveField]) -> Optional[Dict[str, Any]]:
    """``summary.json``'s receptive-field record (lists of numbers), None for None."""
    if rf is None:
        return None
    return {"size": list(rf.size), "jump": list(rf.jump), "start": list(rf.start),
            "grid": list(rf.grid), "input_size": list(rf.input_size),
            "spans_input": rf.spans_input}
