"""``dnn_saliency_eval`` against the maps it evaluates: a batch run, then its evaluation.

Runs ``dnn_saliency_batch YAML -out OUT/run -force -q`` (the maps; default the demo run,
``docs/examples/demo_run.yaml``) and ``dnn_saliency_eval OUT/run -out OUT/eval -force -q``
(every metric family at its defaults) through their ``main`` functions, and prints the
wall time of each, their ratio, and the evaluation's phases, timed by wrapping the calls
of :mod:`dnnbrain.evaluate.compute` (ROAD, deletion/insertion, randomisation,
localisation) and the plots::

    python benchmarks/bench_eval.py [--yaml docs/examples/demo_run.yaml] [--out DIR]
                                    [--threads N] [--json out.json]

The evaluation's defaults (9 ROAD percentages x 2 orders, 32 deletion/insertion steps x
2 games, 4 randomisation images per method) ask for about 90 network forwards and 18
imputations per map; the maps of the demo run take about 5 forward-backward passes
each (see docs/benchmarks.md, *dnn_saliency_eval on the demo run*).
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

import dnnbrain.evaluate.compute as compute
import dnnbrain.evaluate.core as core
from dnnbrain.cli.saliency_batch import main as batch_main
from dnnbrain.cli.saliency_eval import main as eval_main

REPO = Path(__file__).resolve().parents[1]
#: (module, function, phase) wrapped while the evaluation runs.
PHASES = ((compute, "road", "ROAD"), (compute, "deletion_insertion", "deletion/insertion"),
          (compute, "randomisation", "randomisation"), (compute, "localisation", "localisation"),
          (core, "write_plots", "plots"))


def _timed(fn: Callable, totals: Dict[str, float], phase: str) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[phase] += time.perf_counter() - t0
    return wrapper


def run(yaml_file: Path, out: Path) -> Dict[str, float]:
    """Wall seconds of the batch run (``maps``), of its evaluation (``eval``) and of each
    phase of the evaluation."""
    t0 = time.perf_counter()
    if batch_main([str(yaml_file), "-out", str(out / "run"), "-force", "-q"]) != 0:
        raise SystemExit("bench_eval: dnn_saliency_batch failed")
    maps = time.perf_counter() - t0
    totals: Dict[str, float] = collections.defaultdict(float)
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in PHASES]
    try:
        for (mod, name, phase), (_, _, fn) in zip(PHASES, saved):
            setattr(mod, name, _timed(fn, totals, phase))
        t0 = time.perf_counter()
        rc = eval_main([str(out / "run"), "-out", str(out / "eval"), "-force", "-q"])
        ev = time.perf_counter() - t0
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    if rc != 0:
        raise SystemExit("bench_eval: dnn_saliency_eval failed")
    return {"maps": maps, "eval": ev, **totals}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the batch and its evaluation once and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--yaml", type=Path, default=REPO / "docs" / "examples" / "demo_run.yaml",
                   help="the batch run's YAML file (default: the demo run)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the run and its evaluation (default: a temporary one)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for both (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fig = run(args.yaml, args.out or Path(tmp))
    ratio = fig["eval"] / fig["maps"]
    print(f"{args.yaml.name}, {torch.get_num_threads()} torch thread(s)\n"  # noqa: T201
          f"  dnn_saliency_batch (the maps)  {fig['maps']:7.1f} s\n"
          f"  dnn_saliency_eval (defaults)   {fig['eval']:7.1f} s  ({ratio:.1f}x the maps)")
    for _, _, phase in PHASES:
        print(f"    {phase:27} {fig.get(phase, 0.0):7.1f} s")  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(dict(fig, ratio=ratio), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
