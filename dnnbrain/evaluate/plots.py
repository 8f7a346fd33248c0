"""Figures of an evaluation, drawn headless (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``, never pyplot) and written atomically as PNG.

Every figure has one row (or column) per target; each method keeps its colour in every
figure; a footnote says what the bars, error bars and curves are. Error bars are one
sample standard deviation over maps (``ddof=1``), the ``±`` of ``table.md`` and the
``_std`` columns of ``table.csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..io.maps import atomic_write
from .report import CHANCE_AT_AREA

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

DPI = 110
#: Footnote of the localisation figure (the same spread as the tables).
BAR_NOTE = ("bars: mean over maps; error bars: ± 1 sample std over maps (ddof=1), as "
            "table.md and table.csv report")
#: Footnote of the curve figures.
CURVE_NOTE = "curves: mean over maps; legend: method (mean AUC over maps)"
#: (aggregate metric, subplot title) of the localisation figure.
LOCALISATION_PANELS = (("proportional_energy", "proportional energy"),
                       ("average_saliency_focus", "average saliency focus"),
                       ("pointing_game", "pointing game"),
                       ("relevance_rank_accuracy", "relevance rank accuracy"))


def _figure(nrows: int, ncols: int, w: float = 3.3, h: float = 2.7
            ) -> Tuple["Figure", np.ndarray]:
    """A constrained-layout figure on an Agg canvas and its ``(nrows, ncols)`` axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: "Figure", path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _colours(result: Mapping[str, Any]) -> Dict[str, Any]:
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(result["methods"])}


def _by_target(result: Mapping[str, Any], has: Callable[[Mapping[str, Any]], bool]
               ) -> List[tuple]:
    """``[(target, [aggregate entries])]`` for targets with at least one entry passing
    ``has``."""
    out = []
    for t in result["targets"]:
        aggs = [a for a in result["aggregate"] if a["target"] == t["index"] and has(a)]
        if aggs:
            out.append((t, aggs))
    return out


def localisation_figure(result: Mapping[str, Any]) -> Optional["Figure"]:
    """Bars per method (mean, error bar = one sample std over maps, as in the tables) of
    the four localisation metrics, one row per target; dashed: the chance level of a
    random map."""
    rows = _by_target(result, lambda a: (a["metrics"].get("proportional_energy") or {})
                      .get("n", 0) > 0)
    if not rows:
        return None
    colours = _colours(result)
    fig, axes = _figure(len(rows), len(LOCALISATION_PANELS))
    for r, (t, aggs) in enumerate(rows):
        for c, (key, title) in enumerate(LOCALISATION_PANELS):
            ax = axes[r, c]
            stats = [a["metrics"][key] for a in aggs]
            means = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
            std = [s["std"] if s["std"] is not None else 0 for s in stats]
            pos = np.arange(len(aggs))
            ax.bar(pos, means, yerr=std, capsize=3,
                   color=[colours[a["method"]] for a in aggs])
            if key in CHANCE_AT_AREA and t.get("chance") is not None:
                ax.axhline(t["chance"], color="0.3", ls="--", lw=1, label="random map")
            ax.set_ylim(0, 1.05)
            ax.set_xticks(pos, [a["method"] for a in aggs], rotation=30, ha="right",
                          fontsize=8)
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(t["short"], fontsize=9)
            if r == 0 and c == 0 and t.get("chance") is not None:
                ax.legend(fontsize=7, loc="upper right")
    fig.supxlabel(BAR_NOTE, fontsize=8)
    return fig


def _curve_figure(result: Mapping[str, Any], keys: tuple, titles: tuple, xlabel: str,
                  x: np.ndarray) -> Optional["Figure"]:
    rows = _by_target(result, lambda a: all(a["curves"].get(k) for k in keys))
    if not rows:
        return None
    colours = _colours(result)
    fig, axes = _figure(len(rows), len(keys), w=3.8, h=2.8)
    for r, (t, aggs) in enumerate(rows):
        for c, (key, title) in enumerate(zip(keys, titles)):
            ax = axes[r, c]
            for a in aggs:
                auc = (a["metrics"].get(f"{key}_auc") or {}).get("mean")
                name = a["method"] if auc is None else f"{a['method']} ({auc:.3g})"
                ax.plot(x, a["curves"][key], marker="o", ms=2.5, lw=1.4,
                        color=colours[a["method"]], label=name)
            orig = aggs[0]["curves"].get("road_original")
            if orig is None and aggs[0]["curves"].get("deletion"):
                orig = aggs[0]["curves"]["deletion"][0]  # step 0: the unperturbed image
            if orig is not None:
                ax.axhline(orig, color="0.5", ls=":", lw=1)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.legend(fontsize=7, title="method (AUC)", title_fontsize=7)
            ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{t['short']}\nscore", fontsize=9)
    fig.supxlabel(CURVE_NOTE, fontsize=8)
    return fig


def road_figure(result: Mapping[str, Any]) -> Optional["Figure"]:
    """Mean ROAD curves (score vs % of pixels removed), MoRF left (lower is more
    faithful), LeRF right (higher is more faithful); dotted: the unperturbed score."""
    pct = np.asarray(result["settings"].get("road_percentages") or [], dtype=float) * 100
    return _curve_figure(result, ("road_morf", "road_lerf"),
                         ("ROAD MoRF (lower = better)", "ROAD LeRF (higher = better)"),
                         "% of pixels removed (most / least relevant first)",
                         pct)


def deletion_insertion_figure(result: Mapping[str, Any]) -> Optional["Figure"]:
    """Mean deletion (lower is better) and insertion (higher is better) curves."""
    frac = np.asarray(result["settings"].get("deletion_insertion_x") or [], dtype=float)
    return _curve_figure(result, ("deletion", "insertion"),
                         ("deletion (lower = better)", "insertion (higher = better)"),
                         "% of pixels deleted / inserted (most relevant first)",
                         frac * 100)


def randomisation_figure(result: Mapping[str, Any]) -> Optional["Figure"]:
    """Mean Spearman rank correlation of ``|map|`` with the trained network's map as layers
    are randomised from the top (cascading), one line per method, one panel per target.
    A method that explains the model falls towards 0."""
    cols = _by_target(result, lambda a: "randomisation" in a)
    if not cols:
        return None
    colours = _colours(result)
    fig, axes = _figure(1, len(cols), w=4.2, h=3.2)
    for c, (t, aggs) in enumerate(cols):
        ax = axes[0, c]
        names: List[str] = []
        for a in aggs:
            rnd = a["randomisation"]
            y = [np.nan if v is None else v for v in rnd["spearman_abs"]]
            ax.plot(np.arange(len(y)), y, marker="o", ms=3, color=colours[a["method"]],
                    label=a["method"])
            if len(rnd["layers"]) > len(names):
                names = ["trained"] + [f"+{n}" for n in rnd["layers"][1:]]
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(np.arange(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
        ax.set_title(t["short"], fontsize=10)
        ax.set_xlabel("layers randomised (cumulative, from the top)", fontsize=8)
        if c == 0:
            ax.set_ylabel("Spearman rank corr. of |map|", fontsize=9)
        ax.legend(fontsize=7)
    n = result["settings"].get("randomisation_images")
    fig.supxlabel(f"lines: mean over the first {n} stimuli per method (randomisation_images)",
                  fontsize=8)
    return fig


#: File name -> figure builder.
FIGURES = {"localisation.png": localisation_figure, "road.png": road_figure,
           "deletion_insertion.png": deletion_insertion_figure,
           "randomisation.png": randomisation_figure}


def write_plots(out: Path, result: Mapping[str, Any]) -> List[Path]:
    """Write every figure the results allow into ``out``; returns their paths."""
    written = []
    for name, build in FIGURES.items():
        fig = build(result)
        if fig is not None:
            written.append(_save(fig, out / name))
    return written
