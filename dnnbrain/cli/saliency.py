"""``dnn_saliency``: saliency maps of units of a layer for a set of stimuli.

DNNBrain's options (``-net -layer -chn -stim -meth -mode -cmap -vmin -vmax -show -out``)
plus every registered method, ``-param key=value`` for its parameters, ``-weights``
(or ``-random-weights`` with ``-seed``), ``-device``, ``-batch-size``, ``-reduce``,
``-force`` and ``-q``/``-v``. Writes into ``-out``:

* ``<meth>_<layer>.png``: DNNBrain's figure grid, one file per layer: stimuli (as the
  network saw them) in the first row, one row per unit, every map panel titled with the
  method, layer, unit and class name, a colorbar stating the scaling; more than ``-ncol``
  stimuli wrap into blocks of rows of the same figure. Past
  :data:`MAX_FIGURE_STIMULI` stimuli the figure splits into
  ``<meth>_<layer>_stim<first>-<last>.png`` (stimuli counted from 1).
* ``npy/<stim>_<layer>_chn<unit>.npy``: each raw map, ``<unit>`` the unit it explains
  (for ``-chn predicted`` the unit chosen for that stimulus); ``<stim>`` is the stimID
  without its ending, folders kept (``cats/a.png`` -> ``npy/cats/a_...``).
* ``manifest.csv``: one row per map: file, stimulus, method, layer, requested unit,
  unit, class name.

and prints one line saying what it computed and where (nothing with ``-q``). Every
option is checked before any map is computed or any file is written.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..batch.checks import input_shape, method_param_names
from ..batch.plan import map_stem
from ..dnn.algo.registry import make_method, method_names
from ..dnn.algo.target import check_unit_base
from ..dnn.classes import class_names, class_of, unit_label
from ..io.images import image_size
from ..io.maps import atomic_write, save_npy
from .common import (add_batch_size_arg, add_layer_arg, add_network_args, add_output_args,
                     add_stim_arg, add_verbosity, check_network_args, check_out,
                     load_stimuli, network_from_args, parse_params, run_command, summary)

log = logging.getLogger(__name__)
PROG = "dnn_saliency"
#: Most stimuli one figure file holds (more split into ``_stim<first>-<last>`` files).
MAX_FIGURE_STIMULI = 64
MANIFEST_COLUMNS = ("file", "stimulus", "method", "layer", "requested_unit", "unit",
                    "class")


def _unit(text: str):
    if text in ("predicted", "label"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`-chn` values must be ints (from 1, or from 0 "
                                         f"with -unit-base 0), 'predicted' or 'label', got "
                                         f"{text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_network_args(p, timm="timm:<model> for any timm model (pip install timm)")
    add_layer_arg(p, "target layer name (or dotted module path)")
    p.add_argument("-chn", required=True, nargs="+", type=_unit, metavar="CHN",
                   help="target unit(s), counted from 1 (or -unit-base), 'predicted', or "
                        "'label' (each stimulus's class: its .stim.csv label + 1)")
    p.add_argument("-unit-base", dest="unit_base", type=int, default=1, metavar="B",
                   help="how -chn numbers count: 1 (default) or 0 (class indices from 0, "
                        "as Slideflow/PyHealth); files name the unit from 1")
    add_stim_arg(p)
    p.add_argument("-meth", default="guided", choices=method_names(), metavar="METH",
                   help=f"saliency method, one of {method_names()} (default: guided)")
    p.add_argument("-param", action="append", metavar="KEY=VALUE",
                   help="method parameter, repeatable (e.g. -param steps=64)")
    p.add_argument("-mode", default="RGB", choices=["RGB", "gray"],
                   help="show maps as RGB images or grayscale |map| (default: RGB)")
    p.add_argument("-cmap", default=None,
                   help="matplotlib colormap of colormapped maps (default: by sign, "
                        "RdBu_r centred on zero for signed maps, inferno for non-negative "
                        "ones and -mode gray)")
    p.add_argument("-vmin", type=float, help="lower colour limit")
    p.add_argument("-vmax", type=float, help="upper colour limit")
    p.add_argument("-reduce", default="mean", choices=["mean", "max"],
                   help="how a conv channel becomes one number (default: mean)")
    add_batch_size_arg(p, None, "rows per forward/backward pass (default: 32, or as many "
                                "as fit in -param memory_budget=512MiB)")
    p.add_argument("-ncol", type=int, default=8,
                   help="stimuli per row of the figure; more wrap into further rows "
                        "(default: 8)")
    p.add_argument("-show", action="store_true", help="also show the figures")
    add_output_args(p)
    add_verbosity(p)
    return p


def write_manifest(path: Path, records: List[dict]) -> Path:
    """Write ``manifest.csv`` (:data:`MANIFEST_COLUMNS`): these maps' rows after the rows
    of an earlier run into the same ``-out`` (``-force``) whose files they do not replace."""
    new = {r["file"] for r in records}
    old: List[dict] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS:
                old = [r for r in reader if r["file"] not in new]
    text = io.StringIO()
    writer = csv.DictWriter(text, MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(old + records)
    return atomic_write(path, lambda tmp: tmp.write_text(text.getvalue(), encoding="utf-8"))


def map_names(stim_ids: List[str]) -> List[str]:
    """Output name of each stimulus' maps: its stimID without the file ending, its folders
    kept (``a/b.png`` -> ``a/b``, as ``dnn_saliency_batch`` names them); ValueError naming
    the stimuli when two would still share a name (``a.png`` and ``a.jpg``)."""
    names = [map_stem(s) for s in stim_ids]
    seen: dict = {}
    for sid, name in zip(stim_ids, names):
        seen.setdefault(name, []).append(sid)
    dups = [ids for ids in seen.values() if len(ids) > 1]
    if dups:
        raise ValueError(f"`-stim` holds stimuli whose maps would share a file name (the "
                         f"stimID without its ending): {dups[:5]}; rename or remove one "
                         "of each")
    return names


def figure(part, maps: np.ndarray, units: list, titles: list, args: argparse.Namespace,
           dnn, names_of):
    """The figure of one file: stimuli as the network saw them, one row per unit."""
    from ..figures import saliency_grid
    labels = stimulus_titles(part, names_of)
    return saliency_grid(part.paths, np.swapaxes(maps, 0, 1),
                         row_titles=[f"{args.layer} {'unit ' if isinstance(u, int) else ''}"
                                     f"{u}" for u in units],
                         col_titles=labels, cmap=args.cmap, vmin=args.vmin,
                         vmax=args.vmax, mode=args.mode, transform=dnn.test_transform,
                         panel_titles=titles, ncol=args.ncol,
                         title=f"{args.meth} saliency, {dnn.name} layer {args.layer}")


def stimulus_titles(stim, names_of) -> List[str]:
    """Each stimulus's title: its name, and its class when the stimulus file has a label
    (``label`` 0-based: unit ``label + 1``)."""
    labels = stim.labels
    out = []
    for i, sid in enumerate(stim.ids):
        title = Path(sid).stem
        if labels is not None:
            unit = int(labels[i]) + 1
            name = (names_of or {}).get(unit)
            title += f"\nlabel: {name} (unit {unit})" if name else f"\nlabel: unit {unit}"
        out.append(title)
    return out


def _run(args: argparse.Namespace) -> int:
    from .. import viz
    out = Path(args.out)
    # every option is checked before any map is computed or any file is written
    if args.ncol < 1:
        raise ValueError(f"`-ncol` must be >= 1, got {args.ncol}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"`-batch-size` must be >= 1, got {args.batch_size}")
    viz.check_figure_options("gray" if args.cmap is None else args.cmap, args.vmin, args.vmax, args.mode)
    check_out(out, args.force)
    stim = load_stimuli(args.stim)
    names = map_names(stim.ids)
    for path in stim.paths:
        image_size(path)  # readable, within the pixel limit (header only)
    seed = check_network_args(args, hint=" (a method's noise: -param seed=N)")
    check_unit_base(args.unit_base, "-unit-base")
    params = parse_params(args.param)
    allowed = method_param_names(args.meth, params)
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise ValueError(f"`-param` {unknown[0]!r} is not a parameter of method "
                         f"{args.meth!r}; valid parameters are {allowed}")
    dnn = network_from_args(args, seed)
    labels = None
    if "label" in args.chn:
        if stim.labels is None:
            what = f"'{args.stim[0]}'" if len(args.stim) == 1 else "the image files"
            raise ValueError(f"`-chn label` needs a 'label' column (class indices from 0) in "
                             f"the stimuli: {what} has columns {list(stim.data)}")
        labels = stim.labels
    method = make_method(dnn, args.meth, args.layer, args.chn, args.reduce, args.batch_size,
                         unit_base=args.unit_base, **params)
    shape = input_shape(dnn)
    if shape is not None:  # the method's checks that need the input size
        method.check_input(shape)
    (out / "npy").mkdir(parents=True, exist_ok=True)
    units = [u if isinstance(u, str) else u + 1 - args.unit_base for u in args.chn]
    names_of = class_names(dnn, stim)
    figures, records = [], []
    for start in range(0, len(stim), MAX_FIGURE_STIMULI):
        rows = list(range(start, min(start + MAX_FIGURE_STIMULI, len(stim))))
        part = stim[rows]
        with (method.labelled(part.labels, unit_base=0) if labels is not None
              else contextlib.nullcontext()):
            maps = method.backprop(part.paths)  # (N, U, ...): -chn is always a list
        resolved = method.resolved_units  # (N, U): 'predicted' -> the unit it chose
        titles = [[""] * len(rows) for _ in units]
        for i, row in enumerate(rows):
            for k, asked in enumerate(units):
                unit = resolved[i][k]
                rel = f"npy/{names[row]}_{args.layer}_chn{unit}.npy"
                save_npy(out / rel, maps[i, k])
                records.append({"file": rel, "stimulus": stim.ids[row], "method": args.meth,
                                "layer": args.layer, "requested_unit": str(asked),
                                "unit": str(unit), "class": class_of(
                                    dnn, args.layer, unit, names_of) or ""})
                titles[k][i] = f"{args.meth}\n" + unit_label(dnn, args.layer, unit, asked,
                                                              names_of)
        split = len(stim) > MAX_FIGURE_STIMULI
        suffix = f"_stim{rows[0] + 1:03d}-{rows[-1] + 1:03d}" if split else ""
        fname = out / f"{args.meth}_{args.layer}{suffix}.png"
        fig = figure(part=part, maps=maps, units=units, titles=titles,
                     args=args, dnn=dnn, names_of=names_of)
        atomic_write(fname, fig.savefig)
        figures.append(fname)
        log.info("wrote %s", fname)
    write_manifest(out / "manifest.csv", records)
    n_maps = len(records)
    chosen = sorted({int(r["unit"]) for r in records if r["requested_unit"] == "predicted"})
    picked = f"; predicted -> unit{'s' if len(chosen) != 1 else ''} " \
        f"{', '.join(map(str, chosen))}" if chosen else ""
    shown = figures[0].name if len(figures) == 1 else f"{len(figures)} figures"
    summary(args, f"{PROG}: {n_maps} {args.meth} map{'s' if n_maps != 1 else ''} of layer "
                  f"{args.layer} ({len(stim)} stimuli x {len(units)} unit"
                  f"{'s' if len(units) != 1 else ''}{picked}) -> {out}/ ({shown}, "
                  "manifest.csv, npy/)")
    if args.show:  # the saved figures, in pyplot windows
        import matplotlib.pyplot as plt
        for fname in figures:
            plt.figure(fname.stem).gca().imshow(plt.imread(fname))
            plt.axis("off")
        plt.show()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_saliency``; returns the exit status."""
    return run_command(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
