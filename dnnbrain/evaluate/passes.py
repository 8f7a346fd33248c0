"""The scoring passes of :func:`dnnbrain.evaluate.core.evaluate_run` over a run's maps:
localisation and faithfulness per chunk of stimuli (their network input built once), a
map identical to one already scored taking its results, and the cascading randomisation
check per (target, method).
"""
from __future__ import annotations

import copy
import hashlib
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ..metrics import saliency_magnitude
from . import compute
from .compute import Options
from .load import Run, network_input, parse_unit

log = logging.getLogger(__name__)

#: Stimuli whose network input is built at once (bounds memory on large runs).
CHUNK = 256
Key = Tuple[int, str]


def _localise(run: Run, sel: List[int], maps: List[np.ndarray], records: List[Dict],
              masks: Dict[Tuple[int, Tuple[int, ...]], Optional[np.ndarray]],
              opts: Options) -> None:
    """Localisation of the maps of manifest rows ``sel``; ground truth cached per
    (stimulus, map size), None for a stimulus without one."""
    for r, m in zip(sel, maps):
        i = run.index[run.rows[r]["stimulus"]]
        mag = saliency_magnitude(m, str(run.map_file(run.rows[r])))
        if (i, mag.shape) not in masks:
            masks[i, mag.shape] = run.ground_truth(i, mag.shape)
        gt = masks[i, mag.shape]
        records[r]["localisation"] = (None if gt is None else
                                      compute.localisation(mag, gt, opts.pointing_tolerance))


def _per_map(run: Run, dnn: Any, groups: Dict[Key, List[int]], records: List[Dict],
             opts: Options, progress: Optional[bool]) -> Dict[str, List[float]]:
    """Localisation and faithfulness of every map: per chunk of stimuli (their network
    input built once), per (target, method), at most ``CHUNK`` maps a call. Returns the
    curves' x (``'deletion'``: the share of pixels at each step)."""
    faith = dnn is not None and bool({"road", "deletion_insertion"} & set(opts.metrics))
    loc = "localisation" in opts.metrics
    xs: Dict[str, List[float]] = {}
    if not (faith or loc):
        return xs
    stims = sorted({run.index[r["stimulus"]] for r in run.rows})
    masks: Dict[Tuple[int, Tuple[int, ...]], Optional[np.ndarray]] = {}
    seen: Dict[Tuple[Any, ...], int] = {}  # a map's unit and digest -> its first row
    bar = tqdm(total=len(run.rows), desc="evaluate", unit="map", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        for c0 in range(0, len(stims), CHUNK):
            pos = {s: k for k, s in enumerate(stims[c0:c0 + CHUNK])}
            x = network_input(dnn, run, list(pos)) if faith else None
            for (t, label), rows in groups.items():
                mine = [r for r in rows if run.index[run.rows[r]["stimulus"]] in pos]
                for p0 in range(0, len(mine), CHUNK):
                    sel = mine[p0:p0 + CHUNK]
                    maps = [run.load(run.rows[r]) for r in sel]
                    if loc:
                        _localise(run, sel, maps, records, masks, opts)
                    if faith:
                        xs.update(_faithfulness(run, dnn, t, label, sel, maps, x, pos,
                                                records, seen, opts))
                    bar.update(len(sel))
    finally:
        bar.close()
    names = sorted({run.stim.ids[i] for (i, _), gt in masks.items() if gt is None})
    if names:
        log.warning("%d stimuli have no ground truth (boxes or mask): localisation skipped "
                    "for their maps: %s%s", len(names), names[:5],
                    " ..." if len(names) > 5 else "")
    return xs


def _map_key(run: Run, r: int, t: int, m: np.ndarray) -> Tuple[Any, ...]:
    """What a map's faithfulness depends on: stimulus, layer, reduction, unit, call and
    the map's bytes (a digest)."""
    row = run.rows[r]
    digest = hashlib.blake2b(np.ascontiguousarray(m).tobytes(), digest_size=16).digest()
    return (row["stimulus"], row["layer"], row["reduce"], row["unit"], str(_call(run, t)),
            m.dtype.str, m.shape, digest)


def _faithfulness(run: Run, dnn: Any, t: int, label: str, sel: List[int],
                  maps: List[np.ndarray], x: torch.Tensor, pos: Dict[int, int],
                  records: List[Dict], seen: Dict[Tuple[Any, ...], int],
                  opts: Options) -> Dict[str, List[float]]:
    """ROAD and deletion/insertion of the maps of manifest rows ``sel`` (one target and
    method) into ``records``; a map identical to one already scored for the same unit
    (a ``predicted`` target's map of a class also listed) takes that map's results.
    Returns the curves' x."""
    keys = [_map_key(run, r, t, m) for r, m in zip(sel, maps)]
    new = [k for k, key in enumerate(keys) if key not in seen and keys.index(key) == k]
    xs: Dict[str, List[float]] = {}
    if new:
        rows = [sel[k] for k in new]
        xi = x[[pos[run.index[run.rows[r]["stimulus"]]] for r in rows]]
        units = [parse_unit(run.rows[r]["unit"]) for r in rows]
        row0 = run.rows[rows[0]]
        mag = compute.magnitudes([maps[k] for k in new], tuple(xi.shape[2:]),
                                 f"{label} on targets[{t}]")
        curves = compute.faithfulness(dnn, row0["layer"], row0["reduce"], units, xi, mag,
                                      opts, _call(run, t))
        for j, (k, r) in enumerate(zip(new, rows)):
            records[r].update(compute.curve_record(curves, j))
            seen[keys[k]] = r
        xs = {name: c.x.tolist() for name, c in curves.items()}
    for key, r in zip(keys, sel):
        if seen[key] != r:
            first = records[seen[key]]
            records[r].update({f: copy.deepcopy(first[f]) for f in ("road", "deletion_insertion")
                               if f in first})
    return xs


def _call(run: Run, t: int) -> Any:
    """The explained call of the run's ``targets[t]`` (None: the engine's default)."""
    targets = run.config.get("targets", [])
    return targets[t].get("call") if t < len(targets) else None


def _randomisation(run: Run, dnn: Any, groups: Dict[Key, List[int]], opts: Options,
                   progress: Optional[bool]) -> Dict[Key, Dict[str, Any]]:
    """The cascading randomisation check per (target, method) on the first
    ``randomisation_images`` stimuli; per stimulus the unit is its true class when the
    target is the network's output layer and lists it, else its first unit."""
    methods = {m["label"]: m for m in run.config.get("methods", [])}
    out: Dict[Key, Dict[str, Any]] = {}
    last = dnn.layers[-1] if dnn.layers else None
    for (t, label), rows in tqdm(groups.items(), desc="randomisation", unit="method",
                                 disable=None if progress is None else not progress):
        if label not in methods:
            log.warning("method %r is not in the run's config: randomisation skipped", label)
            continue
        by_stim: Dict[str, List[Any]] = {}
        for r in rows:
            by_stim.setdefault(run.rows[r]["stimulus"], []).append(
                parse_unit(run.rows[r]["unit"]))
        chosen = list(by_stim.items())[:opts.randomisation_images]
        idx, units = [], []
        for sid, us in chosen:
            i = run.index[sid]
            lab = None if run.stim.labels is None else int(run.stim.labels[i]) + 1
            units.append(lab if lab in us and run.rows[rows[0]]["layer"] == last else us[0])
            idx.append(i)
        row0 = run.rows[rows[0]]
        res = compute.randomisation(dnn, methods[label], row0["layer"], row0["reduce"],
                                    network_input(dnn, run, idx), units, opts, _call(run, t))
        res["stimuli"] = [sid for sid, _ in chosen]
        res["units"] = [list(u) if isinstance(u, tuple) else u for u in units]
        out[t, label] = res
    return out
