"""``dnn_topstim``: the stimuli that drive units of a layer most (and least).

DNNBrain's options (``-net -layer -chn -top -stim -out``) plus ``-reduce max|mean`` (how a
conv channel's map becomes one number; max by default, as in DNNBrain), ``-bottom`` (also
the least driving stimuli), ``-weights`` / ``-random-weights`` with ``-seed``, ``-device``,
``-batch-size``, ``-force`` and ``-q``/``-v``. For each channel ``c`` it writes
``{layer}_chn{c}_top{K}.stim.csv`` (DNNBrain's stimulus table: the selected rows with every
column of ``-stim``, plus ``value`` and, for a conv channel, the ``row``/``col`` of its
maximum (from 1), in descending order of value, ties by stimulus order) and
``{layer}_chn{c}_top{K}.png``, a montage of the stimuli cropped to the unit's receptive
field at that location; with ``-bottom`` the same as ``..._bottom{K}``, ascending. The
stimuli stream through the network (memory: units x K), so a set of any size fits.
Prints one line saying what it wrote and where (nothing with ``-q``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ..io.maps import atomic_write
from ..probe.actsource import as_source
from ..probe.montage import layer_field, unit_montage
from ..probe.taps import parse_layers
from ..probe.topstim import selection_table, top_stimuli
from .common import (add_batch_size_arg, add_layer_arg, add_network_args, add_output_args,
                     add_stim_arg, add_verbosity, check_network_args, check_out,
                     load_stimuli, network_from_args, run_command, summary)

log = logging.getLogger(__name__)
PROG = "dnn_topstim"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_network_args(p)
    add_layer_arg(p)
    p.add_argument("-chn", nargs="+", type=int, metavar="CHN",
                   help="channel(s), counted from 1 (default: every channel of the layer)")
    p.add_argument("-top", required=True, type=int, metavar="K",
                   help="how many stimuli per channel")
    add_stim_arg(p)
    p.add_argument("-reduce", default="max", choices=["max", "mean"],
                   help="how a conv channel's map becomes one number (default: max)")
    p.add_argument("-bottom", action="store_true",
                   help="also the K stimuli with the smallest values")
    add_batch_size_arg(p)
    add_output_args(p)
    add_verbosity(p)
    return p


def _check(args: argparse.Namespace) -> None:
    if args.top < 1:
        raise ValueError(f"`-top` must be >= 1, got {args.top}")
    if args.batch_size < 1:
        raise ValueError(f"`-batch-size` must be >= 1, got {args.batch_size}")
    if args.chn is not None:
        bad = [c for c in args.chn if c < 1]
        if bad:
            raise ValueError(f"`-chn` values count from 1, got {bad[0]}")
        if len(set(args.chn)) < len(args.chn):
            raise ValueError(f"`-chn` names a channel more than once: {args.chn}")


def _run(args: argparse.Namespace) -> int:
    _check(args)
    seed = check_network_args(args)
    out = Path(args.out)
    check_out(out, args.force)
    stim = load_stimuli(args.stim)
    if args.top > len(stim):
        raise ValueError(f"`-top` {args.top} is more than the {len(stim)} stimuli of -stim")
    dnn = network_from_args(args, seed)
    spec = parse_layers(dnn, args.layer, args.chn)[0]  # checks -layer and -chn first
    result = top_stimuli(dnn, stim, args.layer, units=args.chn, k=args.top,
                         reduce=args.reduce, bottom=args.bottom,
                         batch_size=args.batch_size, progress=args.verbose > 0)
    source = as_source(stim, dnn.test_transform)
    rf = layer_field(dnn, spec.layer, tuple(source.load(0, 1).shape[-2:]), spec.call)
    out.mkdir(parents=True, exist_ok=True)
    name = args.layer.replace("/", "_")
    written = 0
    for u, chn in enumerate(result.units):
        for which in ("top", "bottom") if args.bottom else ("top",):
            ranking = result.ranking(which)
            stem = out / f"{name}_chn{chn}_{which}{args.top}"
            selection_table(stim, result, u, which).write(f"{stem}.stim.csv")
            fig = unit_montage(dnn, source, ranking.index[u], ranking.value[u],
                               ranking.location[u] if ranking.location is not None
                               else None, rf, result.ids,
                               suptitle=f"{args.net} {args.layer} chn{chn}: {which} "
                                        f"{args.top} ({args.reduce})")
            atomic_write(Path(f"{stem}.png"), fig.savefig)
            written += 1
    units = len(result.units)
    summary(args, f"{PROG}: {'top and bottom' if args.bottom else 'top'} {args.top} of "
                  f"{len(stim)} stimuli for {units} channel{'s' if units != 1 else ''} of "
                  f"{args.layer} (reduce {args.reduce}) -> {out}/ ({written} .stim.csv, "
                  f"{written} .png)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_topstim``; returns the exit status."""
    return run_command(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
