"""``dnn_probe``: the unit report of channels of a layer (:mod:`dnnbrain.probe.report`).

DNNBrain's options (``-net -layer -chn -stim -top -out``) plus ``-meth`` (saliency methods
aimed at each unit, over its top and bottom stimuli), ``-reduce max|mean``,
``-featvis-steps`` (0: no feature visualisation), ``-seed`` (the feature visualisation,
stochastic methods and ``-random-weights``), ``-weights`` / ``-random-weights``,
``-device``, ``-batch-size``, ``-force``, ``-q`` / ``-v``. It writes ``-out/index.html``
linking one offline page per channel, ``-out/<layer>_chn<c>/report.html``, with every
file the page shows (npy, png, csv, json).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ..batch.checks import method_param_names
from ..dnn.algo.registry import method_names
from ..probe.report import probe_units
from ..probe.taps import parse_layers
from .common import (add_batch_size_arg, add_layer_arg, add_network_args, add_output_args,
                     add_stim_arg, add_verbosity, check_network_args, check_out,
                     load_stimuli, network_from_args, parse_params, progress_flag,
                     run_command, summary)

log = logging.getLogger(__name__)
PROG = "dnn_probe"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_network_args(p, seed_default=0,
                     seed_help="seed of the feature visualisation, stochastic methods and "
                               "-random-weights (default: 0)")
    add_layer_arg(p)
    p.add_argument("-chn", required=True, nargs="+", type=int, metavar="CHN",
                   help="channel(s) (classes on the output layer), counted from 1")
    add_stim_arg(p)
    p.add_argument("-top", type=int, default=8, metavar="K",
                   help="top and bottom stimuli per channel (default: 8)")
    p.add_argument("-meth", nargs="*", default=["vanilla"], metavar="METH",
                   help=f"saliency methods over the top and bottom stimuli, of "
                        f"{method_names()} (default: vanilla; none: -meth with no name)")
    p.add_argument("-param", nargs="+", metavar="KEY=VALUE",
                   help="a parameter of every -meth method that takes it (steps=32)")
    p.add_argument("-reduce", default="max", choices=["max", "mean"],
                   help="how a conv channel's map becomes one number (default: max)")
    p.add_argument("-featvis-steps", dest="featvis_steps", type=int, default=256,
                   help="steps of the feature visualisation (default: 256; 0: none)")
    add_batch_size_arg(p)
    add_output_args(p)
    add_verbosity(p)
    return p


def _methods(names: List[str], pairs: Optional[List[str]]) -> List[dict]:
    """``-meth`` and ``-param`` -> method entries; every parameter must fit some method."""
    params = parse_params(pairs)
    methods, used = [], set()
    for name in dict.fromkeys(names):
        if name not in method_names():
            raise ValueError(f"`-meth` must be among {method_names()}, got {name!r}")
        allowed = method_param_names(name, params)
        mine = {k: v for k, v in params.items() if k in allowed}
        used.update(mine)
        methods.append({"name": name, **mine})
    unused = [k for k in params if k not in used]
    if unused:
        raise ValueError(f"`-param` {unused[0]!r} is not a parameter of any -meth method "
                         f"{list(dict.fromkeys(names))}")
    return methods


def _check(args: argparse.Namespace) -> None:
    for opt, low in (("top", 1), ("batch_size", 1), ("featvis_steps", 0), ("seed", 0)):
        if getattr(args, opt) < low:
            raise ValueError(f"`-{opt.replace('_', '-')}` must be >= {low}, got "
                             f"{getattr(args, opt)}")
    bad = [c for c in args.chn if c < 1]
    if bad:
        raise ValueError(f"`-chn` values count from 1, got {bad[0]}")
    if len(set(args.chn)) < len(args.chn):
        raise ValueError(f"`-chn` names a channel more than once: {args.chn}")
    check_network_args(args, seed_only_weights=False)


def _run(args: argparse.Namespace) -> int:
    _check(args)
    methods = _methods(args.meth, args.param)
    out = Path(args.out)
    check_out(out, args.force)
    stim = load_stimuli(args.stim)
    if args.top > len(stim):
        raise ValueError(f"`-top` {args.top} is more than the {len(stim)} stimuli of -stim")
    dnn = network_from_args(args, args.seed)
    try:
        parse_layers(dnn, args.layer, args.chn)  # -layer and -chn, before any work
    except ValueError as err:
        raise ValueError(str(err).replace(f"`units of layer '{args.layer}'`", "`-chn`")
                         .replace("`layers`", "`-layer`")) from None
    rep = probe_units(dnn, stim, args.layer, args.chn, out, k=args.top, methods=methods,
                      reduce=args.reduce, featvis_steps=args.featvis_steps, seed=args.seed,
                      batch_size=args.batch_size, title=f"{args.net} {args.layer}",
                      progress=bool(progress_flag(args)))
    n = len(rep.units)
    meths = ", ".join(m["name"] for m in methods) or "no saliency"
    summary(args, f"{PROG}: unit reports of {n} channel{'s' if n != 1 else ''} of "
                  f"{args.layer} over {len(stim)} stimuli (top/bottom {args.top}, {meths}"
                  f"{', featvis' if args.featvis_steps else ''}) -> {rep.index} "
                  f"({rep.files} files)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_probe``; returns the exit status."""
    return run_command(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
