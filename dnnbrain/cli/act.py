"""``dnn_act``: activations of several layers for a set of stimuli, streamed to disk.

DNNBrain's options (``-net -layer -stim -pool -out``) plus ``-chn`` (a channel subset),
``-batch-size``, ``-shard k/n`` (or torchrun's / SLURM's variables:
:mod:`dnnbrain.batch.launch`), ``-force``, ``-weights``
(or ``-random-weights`` with ``-seed``), ``-device``, ``-h5`` (DNNBrain's ``.act.h5``,
needs h5py) and ``-q``/``-v``. Writes ``<out>/<layer>.npy`` (float32, one row per
stimulus) and ``<out>/manifest.json``; a killed run resumes where it stopped when run
again. Prints one line saying what it computed and where (nothing with ``-q``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ..probe.activations import DEFAULT_BATCH_SIZE, activations
from ..probe.actstore import export_h5
from ..probe.taps import POOLS
from .common import (add_batch_size_arg, add_layer_arg, add_network_args, add_output_args,
                     add_stim_arg, add_verbosity, check_network_args, load_stimuli,
                     network_from_args, run_command, summary)

log = logging.getLogger(__name__)
PROG = "dnn_act"


def _chn(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`-chn` values must be ints (from 1), got "
                                         f"{text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_network_args(p)
    add_layer_arg(p, "layer names or dotted module paths (name@first/@last/@k picks the "
                     "call of a module that runs more than once)", many=True)
    p.add_argument("-chn", nargs="+", type=_chn, metavar="CHN",
                   help="channels to keep (from 1; default: all), for every layer")
    add_stim_arg(p)
    p.add_argument("-pool", default="none", choices=list(POOLS),
                   help="pooling over space (default: none)")
    add_batch_size_arg(p, DEFAULT_BATCH_SIZE,
                       f"stimuli per forward pass (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("-shard", default=None, metavar="K/N",
                   help="compute shard K of N (default: torchrun's RANK/WORLD_SIZE, else "
                        "SLURM_PROCID/SLURM_NTASKS, else all)")
    p.add_argument("-h5", default=None, metavar="FILE.act.h5",
                   help="also write DNNBrain's .act.h5 once complete (needs h5py)")
    add_output_args(p, "replace activations made with other settings, or write into a "
                       "non-empty -out")
    p.add_argument("-no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    add_verbosity(p)
    return p


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.batch_size < 1:
        raise ValueError(f"`-batch-size` must be >= 1, got {args.batch_size}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"`-out` '{out}' is a file, not a folder")
    if args.h5 is not None and not args.h5.endswith(".act.h5"):
        raise ValueError(f"`-h5` must end with '.act.h5', got '{args.h5}'")
    if args.h5 is not None:
        try:
            import h5py  # noqa: F401
        except ImportError:
            raise ValueError("`-h5` needs h5py: pip install h5py") from None
    seed = check_network_args(args)
    stim = load_stimuli(args.stim)
    dnn = network_from_args(args, seed)
    store = activations(dnn, stim, list(args.layer), pool=args.pool, units=args.chn,
                        batch_size=args.batch_size, out=out, shard=args.shard,
                        force=args.force, progress=args.progress and not args.quiet)
    shapes = ", ".join(f"{k} {tuple(v[1:])}" for k, v in store.shapes.items())
    if not store.complete:
        done = sum(b - a for a, b in store.done)
        summary(args, f"{PROG}: shard done; {done} of {len(store.ids)} stimuli so far, "
                      f"layers {shapes} -> {out}/ (the last shard completes the store)")
        return 0
    extra = ""
    if args.h5 is not None:
        export_h5(store, args.h5)
        extra = f" and {args.h5}"
    summary(args, f"{PROG}: activations of {len(store)} layer"
                  f"{'s' if len(store) != 1 else ''} ({shapes}; pool {args.pool}) for "
                  f"{len(store.ids)} stimuli -> {out}/{extra}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_act``; returns the exit status."""
    return run_command(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
