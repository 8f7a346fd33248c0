"""``dnn_saliency_eval``: evaluate the maps of a ``dnn_saliency_batch`` run and compare
its methods.

``dnn_saliency_eval RUN_DIR [-metrics localisation road deletion_insertion randomisation]
[-out DIR] [-stim FILE] [-batch-size N] [-seed S] [-force] [-q | -v]``. Writes
``metrics.json``, ``table.csv``, ``table.md`` and PNG plots into ``RUN_DIR/eval`` (or
``-out``) and prints the Markdown table (methods as rows, metrics as columns, one table
per target) and a one-line summary on stdout (nothing
with ``-q``). See ``docs/evaluate.rst``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ..batch.gallery import link_evaluation
from ..evaluate import METRICS, evaluate_run
from ..metrics.faithfulness import ROAD_PERCENTAGES
from .common import add_verbosity, progress_flag, run_command, summary

log = logging.getLogger(__name__)
PROG = "dnn_saliency_eval"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of dnn_saliency_batch")
    p.add_argument("-metrics", nargs="+", default=list(METRICS), metavar="METRIC",
                   help=f"metric families, any of {list(METRICS)} (default: all)")
    p.add_argument("-out", metavar="DIR", help="output folder (default: RUN_DIR/eval)")
    p.add_argument("-stim", metavar="FILE",
                   help="stimuli overriding the run's (.stim.csv with ground truth, folder)")
    p.add_argument("-batch-size", dest="batch_size", type=int, default=32, metavar="N",
                   help="perturbed images per forward pass (default: 32)")
    p.add_argument("-seed", type=int, default=0, metavar="S",
                   help="seed of noise, tie-breaks and re-initialisations (default: 0)")
    p.add_argument("-road-percentages", dest="road_percentages", type=float, nargs="+",
                   default=list(ROAD_PERCENTAGES), metavar="P",
                   help="shares of pixels ROAD removes (default: 0.1 ... 0.9)")
    p.add_argument("-steps", dest="n_steps", type=int, default=32, metavar="N",
                   help="deletion/insertion steps (default: 32)")
    p.add_argument("-rand-images", dest="randomisation_images", type=int, default=4,
                   metavar="N",
                   help="stimuli per method in the randomisation check (default: 4)")
    p.add_argument("-tolerance", dest="pointing_tolerance", type=float, default=0.0,
                   metavar="PX",
                   help="pointing-game tolerance in map pixels (default: 0)")
    p.add_argument("-device", metavar="DEV",
                   help="cpu, cuda or cuda:N (default: the run's model.device)")
    p.add_argument("-no-plots", dest="plots", action="store_false", help="skip the PNGs")
    p.add_argument("-force", action="store_true", help="replace results already in -out")
    p.add_argument("-allow-code", dest="allow_code", action="store_true",
                   help="let the run's model.factory be your own Python code "
                        "(module:function or file.py:function); see docs/batch.rst")
    add_verbosity(p)
    return p


def _write_stdout(text: str) -> None:
    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(enc)
    except (UnicodeEncodeError, LookupError):
        text = text.replace("±", "+/-")
    sys.stdout.write(text)
    sys.stdout.flush()


def _run(args: argparse.Namespace) -> int:
    res = evaluate_run(args.run_dir, metrics=args.metrics, out_dir=args.out, stim=args.stim,
                       road_percentages=args.road_percentages, n_steps=args.n_steps,
                       randomisation_images=args.randomisation_images,
                       pointing_tolerance=args.pointing_tolerance,
                       batch_size=args.batch_size, seed=args.seed, device=args.device,
                       plots=args.plots, overwrite=args.force, progress=progress_flag(args),
                       allow_code=args.allow_code)
    for f in res["files"]:
        log.info("wrote %s", f)
    if not args.quiet:
        _write_stdout(res["table"])
    out = Path(res["files"][0]).parent
    link_evaluation(Path(args.run_dir), out)  # the run's index.html links to it
    n_plots = sum(f.endswith(".png") for f in res["files"])
    summary(args, f"{PROG}: {', '.join(res['settings']['metrics'])} of "
                  f"{res['run']['n_maps']} maps ({len(res['methods'])} method"
                  f"{'s' if len(res['methods']) != 1 else ''}) -> {out}/ (metrics.json, "
                  f"table.csv, table.md, {n_plots} plot{'s' if n_plots != 1 else ''})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_saliency_eval``; returns the exit status."""
    return run_command(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
