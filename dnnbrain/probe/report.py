"""The unit report: one unit's whole portrait, as files and an offline HTML page.

>>> from dnnbrain.dnn.models import ShapeNet
>>> from dnnbrain.io.stim import demo_stimulus_file
>>> from dnnbrain.probe.report import probe_units
>>> rep = probe_units(ShapeNet(), demo_stimulus_file(), 'conv4', [1, 2], 'out/probe',
...                   k=4, methods=['vanilla', 'gradcam'], featvis_steps=64)
>>> rep.index                                       # links every unit's page
PosixPath('out/probe/index.html')

For each unit (a channel of a conv or linear layer, counted from 1; a class on the output
layer) the report holds, in ``<out>/<layer>_chn<c>/``:

* ``responses.npy``: the unit's value for every stimulus (float32 ``(N,)``, the
  stimulus order) and ``histogram.png``, their distribution;
* ``top.stim.csv`` / ``bottom.stim.csv``: the ``k`` stimuli that drive it most / least
  (:func:`~dnnbrain.probe.topstim.top_stimuli`; DNNBrain's stimulus table with a
  ``value`` column and, for a conv channel, the ``row``/``col`` of its maximum, counted
  from 1; a plain ``top.csv`` when the stimuli are arrays or images without files);
* ``top_<i>.png`` (``i`` from 1): each selected stimulus as the network saw it, with the
  unit's theoretical receptive field (:func:`~dnnbrain.probe.receptive.theoretical_rf`)
  drawn at the location of its maximum; ``top_<i>_<method>.png``: the method's saliency
  map of the same unit over it (:func:`dnnbrain.saliency`), the field drawn too;
  ``top_<method>.npy``: the raw maps ``(k, ...)`` (the same for ``bottom``);
* ``featvis.png``: the feature visualisation (:func:`~dnnbrain.probe.featvis.visualise`);
* ``summary.json``: unit, layer, receptive field (size, jump, start, grid), the top and
  bottom values, and the feature visualisation's activation;
* ``report.html``: the page showing all of it.

The stimuli go through the network once, for all units together (streamed: memory is
``units x k`` for the selections plus ``units x N`` scalars for the distributions).
"""
from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..dnn.algo.checks import METHOD_LABEL_RE as _LABEL_RE
from ..dnn.algo.registry import get_method, make_method
from ..dnn.algo.target import check_reduce
from ..dnn.classes import class_of
from ..dnn.models import DNN
from ..io.maps import atomic_write, save_npy, save_png
from ..io.stim import Stimulus
from ..viz import overlay, to_uint8_image
from .activations import DEFAULT_BATCH_SIZE, _on_device
from .actsource import as_source
from .featvis import visualise
from .montage import layer_field
from .receptive import ReceptiveField
from .reportfiles import as_stimulus, boxed, histogram, rf_record, selection_file
from .reportpage import write_index_page, write_unit_page
from .taps import parse_layers
from .topstim import TopStimuli, top_stimuli

__all__ = ["UnitReport", "ProbeReport", "probe_units", "unit_folder"]
log = logging.getLogger(__name__)
WHICH = ("top", "bottom")


@dataclass(frozen=True)
class UnitReport:
    """One unit's report.

    Attributes
    ----------
    unit : int
        The unit (from 1).
    folder : pathlib.Path
        Its folder.
    page : pathlib.Path
        Its ``report.html``.
    summary : dict
        What ``summary.json`` holds.
    """

    unit: int
    folder: Path
    page: Path
    summary: Dict[str, Any]


@dataclass(frozen=True)
class ProbeReport:
    """What :func:`probe_units` wrote.

    Attributes
    ----------
    out : pathlib.Path
        The output folder.
    index : pathlib.Path
        ``index.html`` linking every unit's page.
    layer : str
    units : list of UnitReport
    rf : ReceptiveField or None
        The layer's theoretical receptive field (None for a layer without a spatial map).
    files : int
        Files written.
    """

    out: Path
    index: Path
    layer: str
    units: List[UnitReport]
    rf: Optional[ReceptiveField]
    files: int


def unit_folder(layer: str, unit: int) -> str:
    """The folder name of a unit's report: ``'<layer>_chn<unit>'``, characters other than
    letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', layer)}_chn{unit}"


def _check_units(units: Any) -> List[int]:
    if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        units = [units]
    if not isinstance(units, (list, tuple)) or not units or not all(
            isinstance(u, (int, np.integer)) and not isinstance(u, bool) for u in units):
        raise ValueError(f"`units` must be a channel (int, from 1) or a non-empty list of "
                         f"them, got {units!r}")
    if len(set(units)) < len(units):
        raise ValueError(f"`units` names a unit more than once: {list(units)}")
    return [int(u) for u in units]


def _check_methods(methods: Any) -> List[Dict[str, Any]]:
    """Names or ``{name, label?, <param>: ...}`` mappings -> mappings with a label."""
    if isinstance(methods, (str, Mapping)):
        methods = [methods]
    out, labels = [], set()
    for m in methods or []:
        m = {"name": m} if isinstance(m, str) else dict(m) if isinstance(m, Mapping) else m
        if not isinstance(m, dict):
            raise TypeError(f"`methods` entries must be method names or {{'name': ..., "
                            f"<param>: ...}} mappings, got {m!r}")
        get_method(m.get("name"))  # ValueError listing the registered names
        m.setdefault("label", m["name"])
        if not (isinstance(m["label"], str) and _LABEL_RE.fullmatch(m["label"])):
            raise ValueError(f"`methods` label must be letters, digits and _ . + - (it "
                             f"names files), starting with a letter or digit, got "
                             f"{m['label']!r}")
        if m["label"] in labels:
            raise ValueError(f"`methods` names {m['label']!r} twice; give one a distinct "
                             "'label'")
        labels.add(m["label"])
        out.append(m)
    return out


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    return int(value)


def _make_methods(dnn: DNN, methods: List[Dict[str, Any]], spec: Any, units: List[int],
                  reduce: str, seed: int, batch_size: int,
                  shape: Sequence[int]) -> Dict[str, Any]:
    """label -> the method object, aimed at the first unit and checked on inputs of
    ``shape`` ``(C, H, W)`` before any work (methods taking a ``seed`` get ``seed``)."""
    objs = {}
    for m in methods:
        params = {k: v for k, v in m.items() if k not in ("name", "label")}
        if "seed" not in params and "seed" in inspect.signature(
                get_method(m["name"]).__init__).parameters:
            params["seed"] = seed
        obj = make_method(dnn, m["name"], spec.layer, units[0], reduce, batch_size,
                          spec.call, **params)
        obj.check_input(tuple(shape))
        objs[m["label"]] = obj
    return objs


def probe_units(dnn: DNN, stimuli: Any, layer: str, units: Union[int, Sequence[int]],
                out: Union[str, Path], k: int = 8,
                methods: Sequence[Union[str, Mapping[str, Any]]] = ("vanilla",),
                reduce: str = "max", featvis_steps: int = 256, seed: int = 0,
                batch_size: int = DEFAULT_BATCH_SIZE, device: Any = None,
                preprocessed: bool = False, title: Optional[str] = None,
                progress: bool = False) -> ProbeReport:
    """Write the unit report of each of ``units`` of ``layer`` under ``out``.

    Parameters
    ----------
    dnn : DNN
        The network; used as it is and left as it was (no hook outlives the call, mode
        and parameters unchanged).
    stimuli : Stimulus, str, os.PathLike, list of images, or (N, 3, H, W) array/tensor
        Any stimulus set :func:`~dnnbrain.probe.activations.activations` takes.
    layer : str
        Layer name or dotted module path (optionally ``@<call>``) of a conv or linear
        layer (a token layer's patch grid counts as a map).
    units : int or list of int
        Channels, counted from 1 (classes on the output layer).
    out : str or os.PathLike
        Output folder (created). An earlier report of the same unit there is replaced,
        its top and bottom files included; folders of other units are left alone.
    k : int
        Top and bottom stimuli per unit, at most the number of stimuli.
    methods : sequence of str or mapping
        Saliency methods of :func:`dnnbrain.dnn.algo.registry.method_names`, each aimed at
        the same unit; a mapping gives a method's parameters
        (``{'name': 'smoothgrad', 'n_samples': 8}``) and optionally its ``label`` (file
        names). Methods taking a ``seed`` get ``seed`` unless they set their own. Empty:
        no saliency maps.
    reduce : {'max', 'mean'}
        How a conv channel's map becomes one number: for the ranking, the saliency target
        and the feature visualisation alike.
    featvis_steps : int
        Steps of the feature visualisation; 0: none.
    seed : int
        Seeds the feature visualisation and the stochastic methods.
    batch_size : int
        Stimuli per forward pass (and per saliency pass).
    device : str, torch.device or None
        Where to compute; None: the model's device (another device runs a copy).
    preprocessed : bool
        ``stimuli`` is an ``(N, 3, H, W)`` tensor of network input.
    title : str or None
        Heading of the index page (default: the network and the layer).
    progress : bool
        Progress bars.

    Returns
    -------
    ProbeReport

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        One line naming the bad parameter, its value and the valid choices; raised
        before anything is written.
    """
    if not isinstance(dnn, DNN):
        raise TypeError(f"`dnn` must be a dnnbrain DNN, got {type(dnn).__name__}")
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be one layer name (a str), got {layer!r}")
    units = _check_units(units)
    spec = parse_layers(dnn, layer, units)[0]  # the layer exists, the units are in range
    methods = _check_methods(methods)
    check_reduce(reduce)
    featvis_steps = _check_int("featvis_steps", featvis_steps, 0)
    seed = _check_int("seed", seed, 0)
    work = _on_device(dnn, device)
    source = as_source(stimuli, work.test_transform, preprocessed)
    stim = None if preprocessed else as_stimulus(stimuli)
    shape = tuple(source.load(0, 1).shape[1:])
    objs = _make_methods(work, methods, spec, units, reduce, seed, batch_size, shape)
    ranked = top_stimuli(work, stimuli, layer, units, k=k, reduce=reduce, bottom=True,
                         batch_size=batch_size, preprocessed=preprocessed, progress=progress,
                         keep_values=True)
    rf = layer_field(work, spec.layer, shape[-2:], spec.call)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_npy(out / "responses.npy", ranked.values.T)  # (N, U)
    reports, files = [], 1
    for u, unit in enumerate(ranked.units):
        rep, n = _one_unit(work, dnn, source, stim, ranked, u, unit, spec, rf, out, objs,
                           reduce, featvis_steps, seed, progress)
        reports.append(rep)
        files += n
    name = getattr(dnn, "name", type(dnn.model).__name__)
    index = write_index_page(out / "index.html", title or f"{name} {layer}: unit reports",
                             [(r.page.relative_to(out).as_posix(), r.summary)
                              for r in reports], len(source))
    log.info("probe_units: %d unit(s) of %s -> %s", len(reports), layer, out)
    return ProbeReport(out, index, layer, reports, rf, files + 1)


def _panel(folder: Path, which: str, ranking: Any, u: int, ids: Sequence[str],
           x: torch.Tensor, maps: Mapping[str, np.ndarray], rf: Optional[ReceptiveField],
           transform: Any, written: List[Path]) -> List[Dict[str, Any]]:
    """Write the pictures and raw maps of row ``u`` of ``ranking`` (the ``k`` network
    inputs ``x`` and each method's maps of them), appending the files to ``written``;
    returns the summary's rows."""
    k = len(x)
    boxes = ([None] * k if rf is None or ranking.location is None else
             [rf.box(int(r) - 1, int(c) - 1) for r, c in ranking.location[u]])
    for label, m in maps.items():
        written.append(save_npy(folder / f"{which}_{label}.npy", m))
    rows = []
    for j in range(k):
        pics = {"stimulus": f"{which}_{j + 1}.png"}
        written.append(save_png(folder / pics["stimulus"],
                                boxed(to_uint8_image(x[j], transform), boxes[j])))
        for label, m in maps.items():
            pics[label] = f"{which}_{j + 1}_{label}.png"
            heat = overlay(x[j], m[j], cmap="auto", transform=transform)
            written.append(save_png(folder / pics[label], boxed(heat, boxes[j])))
        loc = None if ranking.location is None else [int(v) for v in ranking.location[u, j]]
        rows.append({"stimulus": ids[int(ranking.index[u, j])],
                     "index": int(ranking.index[u, j]), "value": float(ranking.value[u, j]),
                     "location": loc, "box": None if boxes[j] is None else list(boxes[j]),
                     "pictures": pics})
    return rows


def _one_unit(work: DNN, dnn: DNN, source: Any, stim: Optional[Stimulus],
              ranked: TopStimuli, u: int, unit: int, spec: Any,
              rf: Optional[ReceptiveField], out: Path, objs: Mapping[str, Any],
              reduce: str, featvis_steps: int, seed: int, progress: bool):
    """Write one unit's files and page; returns its :class:`UnitReport` and the number of
    files written."""
    folder = out / unit_folder(ranked.layer, unit)
    folder.mkdir(exist_ok=True)
    for old in [*folder.glob("top*"), *folder.glob("bottom*")]:  # an earlier report's
        if old.is_file() and old.suffix in (".png", ".npy", ".csv"):
            old.unlink()
    written: List[Path] = [save_npy(folder / "responses.npy", ranked.values[u])]
    transform = work.test_transform
    panels: Dict[str, List[Dict[str, Any]]] = {}
    tables: Dict[str, str] = {}
    k = ranked.k
    # the top and bottom stimuli of the unit, in one saliency pass per method
    x_all = torch.cat([source.load(int(i), int(i) + 1) for w in WHICH
                       for i in getattr(ranked, w).index[u]])
    maps_all = {label: obj.set_layer(spec.layer, unit, reduce, spec.call)
                .backprop(x_all, preprocessed=True) for label, obj in objs.items()}
    for part, which in enumerate(WHICH):
        written.append(selection_file(folder / which, stim, ranked, u, which))
        tables[which] = written[-1].name
        rows = slice(part * k, (part + 1) * k)
        panels[which] = _panel(folder, which, getattr(ranked, which), u, ranked.ids,
                               x_all[rows], {lb: m[rows] for lb, m in maps_all.items()},
                               rf, transform, written)
    fv_act = None
    if featvis_steps > 0:
        vis = visualise(work, spec.layer, unit, n=1, steps=featvis_steps, reduce=reduce,
                        call=spec.call, seed=seed, progress=progress)
        written.append(save_png(folder / "featvis.png", vis.uint8()[0]))
        fv_act = float(vis.activation[0])
    marks = {"top k-th": float(ranked.top.value[u, -1]),
             "bottom k-th": float(ranked.bottom.value[u, -1])}
    if fv_act is not None:
        marks["featvis"] = fv_act
    written.append(histogram(folder / "histogram.png", ranked.values[u], marks,
                              f"{ranked.layer} chn{unit}: {len(ranked.ids)} stimuli "
                              f"(reduce {reduce})"))
    vals = ranked.values[u]
    summary = {
        "layer": ranked.layer, "unit": unit,
        "class": class_of(dnn, spec.layer, unit), "reduce": reduce,
        "n_stimuli": len(ranked.ids), "k": ranked.k,
        "receptive_field": rf_record(rf),
        "responses": {"mean": float(np.nanmean(vals)), "std": float(np.nanstd(vals)),
                      "min": float(np.nanmin(vals)), "max": float(np.nanmax(vals))},
        "top": panels["top"], "bottom": panels["bottom"],
        "methods": list(objs),
        "featvis": None if fv_act is None else {"file": "featvis.png", "steps": featvis_steps,
                                                "seed": seed, "activation": fv_act},
        "tables": tables,
    }
    text = json.dumps(summary, indent=2)
    written.append(atomic_write(folder / "summary.json",
                                lambda tmp: tmp.write_text(text + "\n", encoding="utf-8")))
    page = write_unit_page(folder / "report.html", summary)
    return UnitReport(unit, folder, page, summary), len(written) + 1

