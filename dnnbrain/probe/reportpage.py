"""The HTML pages of the unit report (:mod:`dnnbrain.probe.report`).

Offline pages: no script, no external resource, every link relative, so the report's
folder can be moved or zipped and still opens in a browser.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

from ..io.maps import atomic_write

__all__ = ["write_unit_page", "write_index_page", "rf_text"]

_STYLE = """
body{font-family:sans-serif;margin:1em 1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:4px;text-align:center;font-size:12px;vertical-align:top}
td img{width:128px;height:auto;image-rendering:pixelated;display:block;margin:auto}
.meta{color:#555;font-size:13px}
.figs img{height:240px;margin:4px;image-rendering:pixelated}
"""


def _href(rel: str) -> str:
    return html.escape(quote(rel), quote=True)


def _e(v: Any) -> str:
    return html.escape(str(v))


def _page(title: str, body: Sequence[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
                      *body, "</body></html>"]) + "\n"


def _write(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def rf_text(rf: Optional[Mapping[str, Any]]) -> str:
    """``'size 11x11 px, jump (stride) 2x2 px, first centre (0, 0)'`` of a
    ``summary.json`` receptive-field record; ``'none (not a spatial map)'`` for None."""
    if rf is None:
        return "none (not a spatial map: every unit sees the whole input)"
    size, jump, start = rf["size"], rf["jump"], rf["start"]
    return (f"size {size[0]:g}x{size[1]:g} px, jump (stride) {jump[0]:g}x{jump[1]:g} px, "
            f"first centre ({start[0]:g}, {start[1]:g}), map {rf['grid'][0]}x{rf['grid'][1]}"
            f" at input {rf['input_size'][0]}x{rf['input_size'][1]}"
            + (" (spans the whole input)" if rf.get("spans_input") else ""))


def _unit_name(s: Mapping[str, Any]) -> str:
    return f"{s['layer']} chn{s['unit']}" + (f" ({s['class']})" if s.get("class") else "")


def _ranking(s: Mapping[str, Any], which: str) -> List[str]:
    rows = s[which]
    labels = list(s["methods"])
    loc_head = "<th>max at (row, col)</th>" if rows and rows[0]["location"] else ""
    parts = [f'<section id="{which}"><h2>{which.capitalize()} {len(rows)} stimuli '
             f'(<a href="{_href(s["tables"][which])}">{_e(s["tables"][which])}</a>'
             + "".join(f' · <a href="{_href(f"{which}_{lb}.npy")}">{_e(which)}_{_e(lb)}.npy'
                       "</a>" for lb in labels)
             + ")</h2><table><tr><th>rank</th><th>stimulus</th><th>value</th>" + loc_head
             + "<th>stimulus" + (" and receptive field" if rows and rows[0]["box"] else "")
             + "</th>" + "".join(f"<th>{_e(lb)}</th>" for lb in labels) + "</tr>"]
    for r, row in enumerate(rows, 1):
        pics = row["pictures"]
        loc = (f"<td>({row['location'][0]}, {row['location'][1]})</td>" if loc_head else "")
        parts.append(f"<tr><td>{r}</td><td>{_e(row['stimulus'])}</td>"
                     f"<td>{row['value']:.5g}</td>{loc}"
                     + "".join(f'<td><img src="{_href(pics[c])}" alt="{_e(c)}"></td>'
                               for c in ["stimulus"] + labels) + "</tr>")
    parts.append("</table></section>")
    return parts


def write_unit_page(path: Path, summary: Mapping[str, Any]) -> Path:
    """Write one unit's ``report.html`` (beside its files) from its ``summary.json``
    record; returns the path."""
    s = summary
    name = _unit_name(s)
    resp = s["responses"]
    fv = s.get("featvis")
    figs = ['<p class="figs"><a href="histogram.png"><img src="histogram.png" '
            'alt="response distribution"></a>']
    if fv is not None:
        figs.append(f'<a href="{_href(fv["file"])}"><img src="{_href(fv["file"])}" '
                    'alt="feature visualisation"></a>')
    figs.append("</p>")
    body = [f"<p><a href=\"../index.html\">all units</a></p><h1>{_e(name)}</h1>",
            f'<p class="meta">{s["n_stimuli"]} stimuli; values reduced over space by '
            f"{_e(s['reduce'])}: mean {resp['mean']:.4g}, sd {resp['std']:.4g}, min "
            f"{resp['min']:.4g}, max {resp['max']:.4g}. "
            '<a href="responses.npy">responses.npy</a> · '
            '<a href="summary.json">summary.json</a></p>',
            f"<p>Receptive field: {_e(rf_text(s['receptive_field']))}.</p>",
            "<h2>Response distribution" + (" and feature visualisation" if fv else "")
            + "</h2>", *figs]
    if fv is not None:
        best = s["top"][0]["value"]
        body.append(f'<p class="meta">Feature visualisation ({fv["steps"]} steps, seed '
                    f"{fv['seed']}): activation {fv['activation']:.5g} (best stimulus "
                    f"{best:.5g}).</p>")
    body += _ranking(s, "top") + _ranking(s, "bottom")
    return _write(path, _page(name, body))


def write_index_page(path: Path, title: str,
                     units: Sequence[Tuple[str, Mapping[str, Any]]], n_stimuli: int) -> Path:
    """Write ``index.html`` linking each unit's page (``(relative page path, summary)``
    pairs) with its receptive field, best value and feature visualisation."""
    rows: List[str] = []
    for rel, s in units:
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        fv = s.get("featvis")
        thumb = (f'<img src="{_href(folder + fv["file"])}" alt="featvis">' if fv else "")
        top = s["top"][0]["pictures"]["stimulus"]
        rows.append(f'<tr><td><a href="{_href(rel)}">{_e(_unit_name(s))}</a></td>'
                    f"<td>{s['top'][0]['value']:.5g}</td>"
                    f"<td>{'' if fv is None else format(fv['activation'], '.5g')}</td>"
                    f"<td>{_e(rf_text(s['receptive_field']))}</td>"
                    f'<td><a href="{_href(rel)}"><img src="{_href(folder + top)}" '
                    f'alt="best stimulus"></a></td><td>{thumb}</td></tr>')
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">{len(units)} unit(s) over {n_stimuli} stimuli. '
            '<a href="responses.npy">responses.npy</a> (stimuli x units)</p>',
            "<table><tr><th>unit</th><th>best value</th><th>featvis activation</th>"
            "<th>receptive field</th><th>best stimulus</th><th>featvis</th></tr>",
            *rows, "</table>"]
    return _write(path, _page(title, body))

