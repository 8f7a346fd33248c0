"""The ``probe:`` section of a run config: unit reports (:mod:`dnnbrain.probe.report`)
inside the run folder, checked with the rest of the config before any work starts.

::

    probe:
      layer: conv4            # required
      units: [1, 2]           # required: channels (classes on the output layer), from 1
      k: 4                    # top and bottom stimuli per unit (default 8)
      methods: [vanilla, {name: gradcam}]   # default [vanilla]; as the run's `methods`
      reduce: max             # max (default) or mean
      featvis_steps: 256      # 0: no feature visualisation
      dir: probe              # inside the run folder (default 'probe')

The reports are written once the run's maps are complete (by the process that writes
``manifest.csv``) and linked from the run's ``index.html``; a re-run skips them when
nothing they depend on changed (``<dir>/probe.json`` records that).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Mapping, Optional, Sequence

from ..dnn.algo.target import REDUCE
from ..dnn.models import DNN
from ..io.maps import atomic_write
from ..probe.report import probe_units
from ..probe.taps import parse_layers
from . import checks
from .launch import runtime_device
from .schema import Problems, integer, is_int, key, mapping, string, type_name

log = logging.getLogger(__name__)

#: Keys of ``probe``.
PROBE_KEYS = ("layer", "units", "k", "methods", "reduce", "featvis_steps", "dir")
PROBE_DEFAULTS: Dict[str, Any] = {"k": 8, "methods": ["vanilla"], "reduce": "max",
                                  "featvis_steps": 256, "dir": "probe"}
#: What a finished report records, to be skipped by a re-run.
DONE_NAME = "probe.json"


def check_probe(p: Problems, value: Any, dnn: Optional[DNN], n_stimuli: Optional[int],
                seed: int, batch_size: int, taken: Sequence[str] = ()
                ) -> Optional[Dict[str, Any]]:
    """The checked ``probe`` section with its defaults (None when absent or null).

    Every problem is recorded in ``p`` with its key path (``probe.units[1]``); the layer,
    units and each method (at the probe's layer and units) are checked on ``dnn`` when it
    was built, ``k`` against the number of stimuli when known, ``dir`` against the
    folders the run itself writes (``taken``: the methods' labels, ``stimuli`` ...).
    """
    if value is None:
        return None
    d = mapping(p, "probe", value, PROBE_KEYS, required=("layer", "units"))
    if d is None:
        return None
    res: Dict[str, Any] = {"layer": string(p, "probe.layer", d.get("layer"))}
    units = d.get("units")
    units = [units] if is_int(units) else units
    if not (isinstance(units, list) and units and all(is_int(u) for u in units)):
        p.add("probe.units", f"must be a channel (int, from 1) or a non-empty list of them, "
                             f"got {type_name(d.get('units'))} {d.get('units')!r}")
        units = None
    elif len(set(units)) < len(units):
        p.add("probe.units", f"names a unit more than once: {units}")
        units = None
    res["units"] = units
    target_ok = dnn is not None and res["layer"] is not None and units is not None
    if target_ok:
        try:
            parse_layers(dnn, res["layer"], units)
        except ValueError as err:
            text = str(err)
            where = "probe.layer" if text.startswith("`layers`") else "probe.units"
            p.add(where, text.split("` ", 1)[1] if text.startswith("`") else text)
            target_ok = False
    k = integer(p, "probe.k", d.get("k", PROBE_DEFAULTS["k"]), 1)
    if k is not None and n_stimuli is not None and k > n_stimuli:
        p.add("probe.k", f"must be at most the number of stimuli ({n_stimuli}), got {k}")
    res["k"] = k
    res["reduce"] = string(p, "probe.reduce", d.get("reduce", PROBE_DEFAULTS["reduce"]),
                           list(REDUCE))
    res["featvis_steps"] = integer(p, "probe.featvis_steps",
                                   d.get("featvis_steps", PROBE_DEFAULTS["featvis_steps"]), 0)
    res["dir"] = _folder(p, d.get("dir", PROBE_DEFAULTS["dir"]))
    clash = [] if res["dir"] is None else [t for t in taken if _nested(res["dir"], t)]
    if clash:
        p.add("probe.dir", f"{res['dir']!r} is, holds or lies in {clash[0]!r}, which the run "
                           f"writes itself; choose a folder outside {sorted(set(taken))}")
        res["dir"] = None
    methods = d.get("methods", PROBE_DEFAULTS["methods"])
    if not isinstance(methods, list):
        p.add("probe.methods", f"must be a list of method names or {{name: ..., "
                               f"<parameter>: ...}} mappings, got {type_name(methods)}")
        res["methods"] = None
    else:
        target = [{"layer": res["layer"], "units": units, "reduce": res["reduce"]}]
        ok = target_ok and res["reduce"] is not None
        res["methods"] = [checks.method_entry(p, key("probe.methods", i), m, dnn, seed,
                                              batch_size, target if ok else None, "probe")
                          for i, m in enumerate(methods)]
        labels = [m["label"] for m in res["methods"] if m is not None]
        if len(set(labels)) < len(labels):
            p.add("probe.methods", f"two methods share a label: {labels}; give one a "
                                   "distinct `label`")
    return res


def _folder(p: Problems, value: Any) -> Optional[str]:
    """A relative folder inside the run folder (no ``..``, not absolute)."""
    if not isinstance(value, str) or not value.strip():
        p.add("probe.dir", f"must be a folder name inside the run folder, got "
                           f"{type_name(value)} {value!r}")
        return None
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or str(path) in ("", "."):
        p.add("probe.dir", f"must be a relative folder inside the run folder (no '..'), got "
                           f"{value!r}")
        return None
    return path.as_posix()


def _nested(a: str, b: str) -> bool:
    """Whether relative paths ``a`` and ``b`` are the same or one lies inside the other."""
    pa, pb = PurePosixPath(a).parts, PurePosixPath(b).parts
    n = min(len(pa), len(pb))
    return n > 0 and pa[:n] == pb[:n]


def _record(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """What the reports depend on: the section, the network, the stimuli, the seed."""
    return {"probe": cfg["probe"], "network": (cfg.get("network") or {}).get("fingerprint"),
            "stimuli": cfg["stimuli"], "seed": cfg["seed"], "batch_size": cfg["batch_size"]}


def run_probe(outdir: Path, config: Mapping[str, Any], dnn: DNN, stim: Any,
              progress: Optional[bool] = None) -> Optional[Path]:
    """Write the unit reports of ``config['probe']`` in ``outdir/<dir>`` (skipped when
    ``<dir>/probe.json`` records the same inputs); returns their ``index.html``, or None
    without a ``probe`` section."""
    section = config.get("probe")
    if section is None:
        return None
    where = Path(outdir) / section["dir"]
    record = json.loads(json.dumps(_record(config), default=str))
    done = where / DONE_NAME
    if (where / "index.html").is_file() and done.is_file():
        try:
            if json.loads(done.read_text(encoding="utf-8")) == record:
                log.info("probe: the unit reports in '%s' are up to date", where)
                return where / "index.html"
        except ValueError:
            pass
    rep = probe_units(dnn, stim, section["layer"], section["units"], where, k=section["k"],
                      methods=section["methods"], reduce=section["reduce"],
                      featvis_steps=section["featvis_steps"], seed=config["seed"],
                      batch_size=config["batch_size"],
                      device=runtime_device(config["model"]["device"]),
                      title=f"{config['title']}: {section['layer']} unit reports",
                      progress=bool(progress))
    text = json.dumps(record, indent=1, sort_keys=True)
    atomic_write(done, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return rep.index
