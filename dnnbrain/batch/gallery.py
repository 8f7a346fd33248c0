"""``index.html``: an offline gallery of a run's maps.

One section per target, one table per unit: a row per stimulus (its picture as the
network saw it, in ``stimuli/``; its label, predicted class and the unit's activation), a
column per method (the map, and for ``'predicted'`` the unit it explains, with class
names); the page's width is used; the run's evaluation is linked when there is one. Links
are relative, there is no script and no external resource, so the folder can be moved or
zipped and still opens in a browser.
"""
from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

import numpy as np

from .. import viz
from ..dnn.classes import class_names, class_of, stimulus_classes
from ..io.maps import atomic_write, save_png
from ..io.stim import Stimulus
from ..viz import network_view
from .pictures import colour_table
from .plan import map_stem, unit_text

INDEX_NAME = "index.html"
#: Image endings a browser shows (stimuli without a network view are copied as they are).
WEB_FORMATS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
#: Marks around the evaluation links, so a later evaluation can fill them in.
EVAL_START, EVAL_END = "<!--evaluation-->", "<!--/evaluation-->"
#: Marks around the link to the unit reports of the ``probe:`` section.
PROBE_START, PROBE_END = "<!--probe-->", "<!--/probe-->"
_STYLE = """
body{font-family:sans-serif;margin:1em 1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em;width:100%;table-layout:fixed}
th,td{border:1px solid #ccc;padding:4px;text-align:center;font-size:12px;vertical-align:top}
td img{width:100%;max-width:320px;height:auto;image-rendering:pixelated;display:block;
margin:auto}
.meta{color:#555;font-size:13px}
.eval img{height:220px;margin:4px}
.key img{width:128px;height:12px;vertical-align:middle;border:1px solid #999}
"""


def _href(rel: str) -> str:
    return html.escape(quote(rel), quote=True)


def stimulus_pictures(out: Path, stim: Stimulus, transform: Any = None) -> Dict[str, str]:
    """Put each stimulus in ``stimuli/`` (skipped when present) and return stimID ->
    relative path. With ``transform`` (``dnn.test_transform``) a PNG of the stimulus as
    the network saw it (its resize, crop and channels: the geometry of its maps, alpha
    dropped); without, a copy of the file when a browser shows its format, else a PNG."""
    rels = {}
    for sid, path in stim:
        ext = path.suffix.lower()
        keep = transform is None and ext in WEB_FORMATS
        rel = f"stimuli/{map_stem(sid)}{ext if keep else '.png'}"
        if not (out / rel).is_file():
            if keep:
                atomic_write(out / rel, lambda tmp, src=path: shutil.copyfile(src, tmp))
            else:
                save_png(out / rel, network_view(path, transform))
        rels[sid] = rel
    return rels


def write_network_views(out: Path, ids: Sequence[str], x: Any, transform: Any) -> int:
    """Write the ``stimuli/`` pictures that :func:`stimulus_pictures` gives (with
    ``transform``) from a batch's network input, so that the gallery need not read and
    transform the stimuli again; pictures already present are kept.

    Parameters
    ----------
    out : pathlib.Path
        The output folder.
    ids : sequence of str
        The stimulus ids of the rows of ``x``.
    x : torch.Tensor
        ``(B, C, H, W)`` network input (``transform.batch`` of the stimuli), on the CPU.
    transform : ImageTransform
        ``dnn.test_transform``.

    Returns
    -------
    int
        Pictures written.
    """
    written = 0
    for sid, xi in zip(ids, x):
        path = out / f"stimuli/{map_stem(sid)}.png"
        if not path.is_file():
            save_png(path, network_view(xi, transform))
            written += 1
    return written


def _unit_name(dnn: Any, layer: str, unit: str, names: Optional[Dict[int, str]]) -> str:
    """``'unit 2 (square)'``: the class on the output layer, when known."""
    cls = class_of(dnn, layer, int(unit), names) if dnn is not None and unit.isdigit() \
        else None
    return f"unit {unit}" + (f" ({cls})" if cls else "")


def _cell(row: Mapping[str, str], save: Sequence[str], unit: str) -> str:
    pic = next((row[k] for k in ("png", "overlay") if k in save), None)
    raw = next((row[k] for k in ("npy", "nifti") if k in save), None)
    inner = (f'<img src="{_href(pic)}" alt="{html.escape(row["method"])}">' if pic else
             html.escape(Path(raw or "").name))
    if raw is not None:
        inner = f'<a href="{_href(raw)}">{inner}</a>'
    extra = ""
    if pic is not None and "overlay" in save and pic != row["overlay"]:
        extra = f' · <a href="{_href(row["overlay"])}">overlay</a>'
    return (f"<td>{inner}{html.escape(row['method'])}"
            f"{'<br>' + html.escape(unit) if unit else ''}{extra}</td>")


def evaluation_links(out: Path, eval_dir: Optional[Path] = None) -> str:
    """The index's evaluation block: links to ``eval_dir`` (default ``out/eval``) and its
    plots when it holds ``metrics.json``, else an empty block."""
    ev = out / "eval" if eval_dir is None else Path(eval_dir)
    if not (ev / "metrics.json").is_file():
        return f"{EVAL_START}{EVAL_END}"
    try:
        rel = ev.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        rel = ev.resolve().as_uri()
    files = [f for f in ("table.md", "table.csv", "metrics.json") if (ev / f).is_file()]
    plots = sorted(p.name for p in ev.glob("*.png"))
    links = " · ".join(f'<a href="{_href(f"{rel}/{f}")}">{html.escape(f)}</a>'
                       for f in files)
    pics = "".join(f'<a href="{_href(f"{rel}/{f}")}"><img src="{_href(f"{rel}/{f}")}" '
                   f'alt="{html.escape(f)}"></a>' for f in plots)
    return (f'{EVAL_START}<section class="eval" id="evaluation"><h2>Evaluation '
            f'(<code>{html.escape(rel)}/</code>)</h2><p>{links}</p>'
            f"<p>{pics}</p></section>{EVAL_END}")


def probe_links(out: Path, config: Mapping[str, Any]) -> str:
    """The index's block linking the unit reports (``probe.dir``/index.html) once they
    exist, else an empty block."""
    section = config.get("probe")
    rel = None if section is None else f"{section['dir']}/{INDEX_NAME}"
    if rel is None or not (Path(out) / rel).is_file():
        return f"{PROBE_START}{PROBE_END}"
    units = ", ".join(str(u) for u in section["units"])
    return (f'{PROBE_START}<section id="probe"><h2>Unit reports</h2><p><a href="{_href(rel)}">'
            f"{html.escape(section['layer'])} units {html.escape(units)}</a>: response "
            f"distributions, top and bottom {section['k']} stimuli with saliency and "
            f"receptive fields, feature visualisations</p></section>{PROBE_END}")


def colour_legend(out: Path, outputs: Mapping[str, Any]) -> str:
    """The index's colour key: a colorbar strip per colormap the pictures use
    (``outputs.colormap``; ``'auto'``: the sequential and the diverging one), written to
    ``out/colorbar_<cmap>.png``, with what its ends mean."""
    cmap, pct = outputs["colormap"], outputs.get("percentile")
    top = "max" if pct is None else f"{pct:g}th percentile"
    keys = ([(viz.SEQUENTIAL, f"map min → its {top} (|map| for colour maps, CAMs as they are)"),
             (viz.DIVERGING, f"−a → 0 → +a for 2-D maps with negative values, a = their max "
                             f"|value|{'' if pct is None else f' ({top})'}")]
            if cmap == viz.AUTO else [(cmap, f"map min → its {top}")])
    items = []
    for name, text in keys:
        rel = f"colorbar_{name}.png"
        strip = np.repeat(colour_table(name)[None], 12, axis=0)
        save_png(out / rel, strip)
        items.append(f'<span class="key"><img src="{_href(rel)}" alt="{html.escape(name)}">'
                     f" {html.escape(name)}: {html.escape(text)}</span>")
    return f'<p class="meta">Colours, each picture on its own scale: {" · ".join(items)}</p>'


def _fill(out: Path, start: str, end: str, block: str) -> Optional[Path]:
    """Replace the block between ``start`` and ``end`` of ``out/index.html``; None when
    the run has no index (or the index no such block)."""
    index = Path(out) / INDEX_NAME
    if not index.is_file():
        return None
    text = index.read_text(encoding="utf-8")
    a, b = text.find(start), text.find(end)
    if a < 0 or b < 0:
        return None
    text = text[:a] + block + text[b + len(end):]
    return atomic_write(index, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def link_evaluation(out: Path, eval_dir: Optional[Path] = None) -> Optional[Path]:
    """Fill the evaluation block of ``out/index.html`` (after ``dnn_saliency_eval``);
    None when the run has no index."""
    return _fill(out, EVAL_START, EVAL_END, evaluation_links(Path(out), eval_dir))


def link_probe(out: Path, config: Mapping[str, Any]) -> Optional[Path]:
    """Fill the unit-report block of ``out/index.html`` (after the ``probe:`` section
    ran); None when the run has no index."""
    return _fill(out, PROBE_START, PROBE_END, probe_links(Path(out), config))


def write_index(out: Path, config: Mapping[str, Any], rows: Sequence[Mapping[str, str]],
                stim: Stimulus, dnn: Any = None) -> Path:
    """Write ``out/index.html`` from the manifest ``rows`` (and the stimulus pictures).

    Parameters
    ----------
    out : pathlib.Path
        The output folder.
    config : mapping
        The resolved config.
    rows : sequence of mapping
        Manifest rows (every map of the run).
    stim : Stimulus
        The run's stimuli.
    dnn : DNN or None
        The run's network: stimuli shown as it saw them, its class names (or the
        stimulus file's ``label``/``class`` columns) on units of its output layer.

    Returns
    -------
    pathlib.Path
        The written file.

    Notes
    -----
    One table per target unit: a row per stimulus (its picture, label, predicted class
    and the unit's activation, which all methods share), a column per method (its map,
    and for ``'predicted'`` the unit it explains). The run's evaluation (``eval/``) is
    linked when present.
    """
    save = config["outputs"]["save"]
    pics = stimulus_pictures(out, stim, None if dnn is None else dnn.test_transform)
    names = class_names(dnn, stim) if dnn is not None else stimulus_classes(stim)
    labels = [m["label"] for m in config["methods"]]
    by_key: Dict[Tuple[str, str, str, str], Mapping[str, str]] = {
        (r["target"], r["requested_unit"], r["stimulus"], r["method"]): r for r in rows}
    pred = {r["stimulus"]: r["predicted_class"] for r in rows}
    true = dict(zip(stim.ids, stim.labels)) if stim.labels is not None else {}
    model = config["model"].get("name") or config["model"].get("factory")
    parts: List[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(config['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(config['title'])}</h1>",
        f'<p class="meta">model {html.escape(str(model))}; {len(stim)} stimuli (shown as '
        f"the network saw them); methods {html.escape(', '.join(labels))}; {len(rows)} "
        "maps, each picture scaled to its own range. "
        f'<a href="manifest.csv">manifest.csv</a> · '
        f'<a href="config.resolved.yaml">config.resolved.yaml</a></p>',
        colour_legend(out, config["outputs"]) if {"png", "overlay"} & set(save) else "",
        evaluation_links(out), probe_links(out, config),
        "<ul>" + "".join(f'<li><a href="#target{t}">targets[{t}]: {html.escape(tg["layer"])}'
                         f"</a></li>" for t, tg in enumerate(config["targets"])) + "</ul>"]
    for t, target in enumerate(config["targets"]):
        layer = target["layer"]
        units = ", ".join(unit_text(u) for u in target["units"])
        parts.append(f'<section id="target{t}"><h2>targets[{t}]: layer '
                     f"{html.escape(layer)}, units {html.escape(units)} (reduce "
                     f"{html.escape(target['reduce'])})</h2>")
        for u in target["units"]:
            asked = unit_text(u)
            head = (f"unit {asked}: each stimulus's own" if asked == "predicted"
                    else _unit_name(dnn, layer, asked, names))
            parts.append(f"<h3>{html.escape(layer)} {html.escape(head)}</h3><table><tr>"
                         "<th>stimulus</th>"
                         + "".join(f"<th>{html.escape(lb)}</th>" for lb in labels) + "</tr>")
            for sid in stim.ids:
                cells = [by_key.get((str(t), asked, sid, lb)) for lb in labels]
                first = next((c for c in cells if c), None)
                unit = _unit_name(dnn, layer, first["unit"], names) \
                    if first and asked == "predicted" else ""
                parts.append(f'<tr><td><img src="{_href(pics[sid])}" alt="{html.escape(sid)}">'
                             f"{html.escape(sid)}{_stim_text(sid, true, pred, names)}"
                             + (f"<br>{html.escape(layer)} {html.escape(unit or head)}: "
                                f"act {float(first['activation']):.3g}" if first else "")
                             + "</td>"
                             + "".join(_cell(c, save, unit) if c else "<td>missing</td>"
                                       for c in cells) + "</tr>")
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</body></html>")
    text = "\n".join(parts) + "\n"
    return atomic_write(out / INDEX_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _stim_text(sid: str, true: Mapping[str, Any], pred: Mapping[str, str],
               names: Optional[Dict[int, str]]) -> str:
    """``<br>label square<br>predicted square (unit 2)`` (what is known)."""
    text = ""
    if sid in true:
        unit = int(true[sid]) + 1
        text += f"<br>label {html.escape((names or {}).get(unit, f'unit {unit}'))}"
    if sid in pred and pred[sid].isdigit():
        unit = int(pred[sid])
        name = (names or {}).get(unit)
        text += "<br>predicted " + html.escape(f"{name} (unit {unit})" if name else
                                               f"unit {unit}")
    return text
