"""``dnn_saliency_batch``: run a YAML-described saliency experiment.

``dnn_saliency_batch RUN.yaml [-out DIR] [-force] [-dry-run] [-shard k/n] [-merge]
[-allow-code] [-q | -v]``.
The run config names the model, stimuli, targets, methods and outputs (see
``docs/batch.rst``); everything is validated before any work. A re-run resumes: maps
already complete are skipped. With ``-shard k/n``, under torchrun (``RANK`` /
``WORLD_SIZE``) or under SLURM's ``srun`` (``SLURM_PROCID`` / ``SLURM_NTASKS``) each process
computes its own slice of the work (:mod:`dnnbrain.batch.launch`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ..batch.merge import merge
from ..batch.runner import describe, run
from .common import add_verbosity, progress_flag, run_command, summary

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
                   help="compute shard k (from 0) of n; default: torchrun's RANK/WORLD_SIZE, "
                        "else SLURM_PROCID/SLURM_NTASKS, else all")
    p.add_argument("-merge", action="store_true",
                   help="merge the shards' manifest parts into manifest.csv and exit")
    p.add_argument("-workers", type=int, default=2, help="writer threads (default: 2)")
    p.add_argument("-allow-code", dest="allow_code", action="store_true",
                   help="let model.factory name your own Python code (module:function or "
                        "file.py:function): only for configs you trust; see docs/batch.rst")
    add_verbosity(p)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.merge:
        merged = merge(args.config, out=args.out, allow_code=args.allow_code)
        summary(args, f"{PROG}: merged the shards' manifests -> {merged}")
        return 0
    if args.workers < 0:
        raise ValueError(f"`-workers` must be >= 0, got {args.workers}")
    result = run(args.config, force=args.force, dry_run=args.dry_run, shard=args.shard,
                 out=args.out, workers=args.workers, allow_code=args.allow_code,
                 progress=progress_flag(args))
    if args.dry_run:
        todo = {it.key for it in result.todo}
        lines = [f"{'todo' if it.key in todo else 'done'} {describe(it, result.config)}"
                 for it in result.items]
        sys.stdout.write("\n".join(lines + [f"{len(todo)} of {len(result.items)} work items "
                                            f"to compute into {result.out_dir}"]) + "\n")
        return 0
    summary(args, run_summary(result))
    return 0


def run_summary(result) -> str:
    """The one line ``dnn_saliency_batch`` prints for a :class:`~dnnbrain.batch.RunResult`:
    maps computed and kept, maps/s of the whole run and of the maps alone
    (:attr:`~dnnbrain.batch.RunResult.run_maps_per_s`,
    :attr:`~dnnbrain.batch.RunResult.maps_per_s`), the folder, and what is in it."""
    out = result.out_dir
    done = len(result.items) - len(result.todo)
    what = [f.name for f in (result.manifest,) if f is not None]
    what += [n for n in ("index.html", "eval/") if (out / n.rstrip("/")).exists()]
    probe = (result.config.get("probe") or {}).get("dir")
    if probe is not None and (out / probe / "index.html").is_file():
        what.append(f"{probe}/ (unit reports)")
    shard = "" if result.shard is None else f" (shard {result.shard[0]}/{result.shard[1]})"
    rate = (f"; {result.run_maps_per_s:.1f} maps/s for the whole run, "
            f"{result.maps_per_s:.1f} for the maps alone" if result.maps else "")
    return (f"{PROG}: {result.maps} map{'s' if result.maps != 1 else ''} computed in "
            f"{result.wall_s:.1f} s ({len(result.todo)} work items, {done} already "
            f"complete{rate}){shard} -> {out}/ ({', '.join(what)})")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dnn_saliency_batch``; returns the exit status."""
    return run_command(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
