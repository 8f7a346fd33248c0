"""``dnn_act``: activations of several layers for a set of stimuli, streamed to disk.

DNNBrain's options (``-net -layer -stim -pool -out``) plus ``-chn`` (a channel subset),
``-batch-size``, ``-shard k/n`` (or torchrun's / SLURM's variables:
:mod:`dnnbrain.batch.launch`), ``-force``, ``-weights``
(or ``-random-weights`` with ``-seed``), ``-device`` and ``-h5`` (DNNBrain's ``.act.h5``,
needs h5py). Writes ``<out>/<layer>.npy`` (float32, one row per stimulus) and
``<out>/manifest.json``; a killed run resumes where it stopped when run again.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from ..dnn.fingerprint import seeded
from ..dnn.models import network_names
from ..probe.activations import DEFAULT_BATCH_SIZE, activations
from ..probe.actstore import export_h5
from ..probe.taps import POOLS
from .common import load_network, load_stimuli, run_main, setup_logging

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
    p.add_argument("-net", required=True, metavar="NET",
                   help=f"network name, one of {network_names()} (case-insensitive), or "
                        "timm:<model>")
    p.add_argument("-layer", required=True, nargs="+", metavar="LAYER",
                   help="layer names or dotted module paths (name@first/@last/@k picks the "
                        "call of a module that runs more than once)")
    p.add_argument("-chn", nargs="+", type=_chn, metavar="CHN",
                   help="channels to keep (from 1; default: all), for every layer")
    p.add_argument("-stim", required=True, nargs="+", metavar="STIM",
                   help="a .stim.csv file, a folder of images, or image files")
    p.add_argument("-pool", default="none", choices=list(POOLS),
                   help="pooling over space (default: none)")
    p.add_argument("-batch-size", dest="batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"stimuli per forward pass (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("-shard", default=None, metavar="K/N",
                   help="compute shard K of N (default: torchrun's RANK/WORLD_SIZE, else "
                        "SLURM_PROCID/SLURM_NTASKS, else all)")
    p.add_argument("-weights", help="weights file (default: offline search, see docs)")
    p.add_argument("-random-weights", dest="random_weights", action="store_true",
                   help="random weights (seeded by -seed) instead of trained ones")
    p.add_argument("-seed", type=int, default=None,
                   help="seed of the random weights of -random-weights (default: 0)")
    p.add_argument("-device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("-out", required=True, help="output folder")
    p.add_argument("-h5", default=None, metavar="FILE.act.h5",
                   help="also write DNNBrain's .act.h5 once complete (needs h5py)")
    p.add_argument("-force", action="store_true",
                   help="replace activations made with other settings, or write into a "
                        "non-empty -out")
    p.add_argument("-no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0)
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
    if args.random_weights and args.weights:
        raise ValueError("`-random-weights` and `-weights` exclude each other; pass one")
    if args.seed is not None and not args.random_weights:
        raise ValueError(f"`-seed` {args.seed} seeds only -random-weights, which is not given")
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise ValueError(f"`-seed` must be an integer >= 0, got {seed}")
    stim = load_stimuli(args.stim)
    with seeded(seed):
        try:
            dnn = load_network(args.net, args.weights, args.device,
                               pretrained=not args.random_weights)
        except FileNotFoundError as err:
            raise FileNotFoundError(str(err).replace("pass pretrained=False",
                                                     "pass -random-weights")) from None
    store = activations(dnn, stim, list(args.layer), pool=args.pool, units=args.chn,
                        batch_size=args.batch_size, out=out, shard=args.shard,
                        force=args.force, progress=args.progress)
    shapes = ", ".join(f"{k} {tuple(v[1:])}" for k, v in store.shapes.items())
    if not store.complete:
        done = sum(b - a for a, b in store.done)
        print(f"{PROG}: shard done; {done} of {len(store.ids)} stimuli so far, layers "
              f"{shapes} -> {out}/ (the last shard completes the store)")
        return 0
    extra = ""
    if args.h5 is not None:
        export_h5(store, args.h5)
        extra = f" and {args.h5}"
    print(f"{PROG}: activations of {len(store)} layer{'s' if len(store) != 1 else ''} "
          f"({shapes}; pool {args.pool}) for {len(store.ids)} stimuli -> {out}/{extra}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_act``; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_main(PROG, lambda: _run(args))
