"""``dnn_saliency_batch``: run a YAML-described saliency experiment.

``dnn_saliency_batch RUN.yaml [-out DIR] [-force] [-dry-run] [-shard k/n] [-merge]
[-allow-code] [-v]``.
The run config names the model, stimuli, targets, methods and outputs (see
``docs/batch.rst``); everything is validated before any work. A re-run resumes: maps
already complete are skipped. Under torchrun (``RANK`` / ``WORLD_SIZE`` set) or with
``-shard k/n`` each process computes its own slice of the work.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ..batch.merge import merge
from ..batch.runner import describe, run
from .common import run_main, setup_logging

log = logging.getLogger(__name__)
PROG = "dnn_saliency_batch"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("config", metavar="RUN.yaml", help="the run config (YAML)")
    p.add_argument("-out", metavar="DIR", help="output folder (overrides outputs.dir)")
    p.add_argument("-force", action="store_true",
                   help="accept an output folder holding a run with a different config")
    p.add_argument("-dry-run", dest="dry_run", action="store_true",
                   help="list the work items (todo/done) without computing or writing")
    p.add_argument("-shard", metavar="k/n",
                   help="compute shard k (from 0) of n; default: RANK/WORLD_SIZE if set")
    p.add_argument("-merge", action="store_true",
                   help="merge the shards' manifest parts into manifest.csv and exit")
    p.add_argument("-workers", type=int, default=2, help="writer threads (default: 2)")
    p.add_argument("-allow-code", dest="allow_code", action="store_true",
                   help="let model.factory name your own Python code (module:function or "
                        "file.py:function): only for configs you trust; see docs/batch.rst")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: debug logging (a summary is logged by default)")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.merge:
        log.info("wrote %s", merge(args.config, out=args.out, allow_code=args.allow_code))
        return 0
    if args.workers < 0:
        raise ValueError(f"`-workers` must be >= 0, got {args.workers}")
    result = run(args.config, force=args.force, dry_run=args.dry_run, shard=args.shard,
                 out=args.out, workers=args.workers, allow_code=args.allow_code)
    if args.dry_run:
        todo = {it.key for it in result.todo}
        lines = [f"{'todo' if it.key in todo else 'done'} {describe(it, result.config)}"
                 for it in result.items]
        sys.stdout.write("\n".join(lines + [f"{len(todo)} of {len(result.items)} work items "
                                            f"to compute into {result.out_dir}"]) + "\n")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_saliency_batch``; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose + 1)
    return run_main(PROG, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
