"""Streaming top-k memory: :func:`dnnbrain.probe.topstim.top_stimuli` over more and more
stimuli keeps the same resident memory.

Run: ``python benchmarks/bench_topstim.py [--net shapenet] [--layer conv4] [--n 500 2000
8000] [--k 10] [--batch 64] [--threads 2] [--json out.json]``.

``--n`` random RGB images (the network's input size) are written once as PNG files to a
temporary folder; each run ranks every channel of ``--layer`` over the first ``N`` of them
(loaded batch by batch from disk, ``reduce='max'``, with the bottom ``k`` too), each ``N``
in a fresh process so one run's allocations cannot hide another's. Reported per ``N``:
seconds, stimuli per second, and the resident set (``/proc/self/statm``, sampled every
5 ms) at its peak minus its level after the first batch. That growth stays flat as ``N``
grows (the running state is ``units x k``: values, stimulus indices and argmax locations),
against one batch of input (``batch x 3 x H x W x 4`` bytes) and all ``N`` inputs for
scale.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent


def _write_images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
            folder / f"stim{i:06d}.png", compress_level=1)


def _one(args: argparse.Namespace) -> dict:
    """One measurement in this process: ``args.n[0]`` stimuli of ``args.folder``."""
    import torch
    from bench_activations import RssSampler, rss
    from dnnbrain.dnn.models import build_network
    from dnnbrain.probe.topstim import top_stimuli

    torch.set_num_threads(args.threads)
    dnn = build_network(args.net, pretrained=args.net.lower() == "shapenet")
    n = args.n[0]
    paths = sorted(str(p) for p in Path(args.folder).glob("*.png"))[:n]
    top_stimuli(dnn, paths[:args.batch], args.layer, k=1, batch_size=args.batch)  # warm-up
    first = rss()
    with RssSampler() as mem:
        tic = time.perf_counter()
        res = top_stimuli(dnn, paths, args.layer, k=args.k, bottom=True,
                          batch_size=args.batch)
        sec = time.perf_counter() - tic
    units = int(res.top.index.shape[0])
    return {"n": n, "seconds": sec, "per_s": n / sec, "growth_mib": (mem.peak - first) / 2**20,
            "units": units, "k": args.k}


def main(argv=None) -> int:
    """Write the stimuli, run each N in a fresh process, print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="shapenet")
    p.add_argument("--layer", default="conv4")
    p.add_argument("--n", type=int, nargs="+", default=[500, 2000, 8000])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=None, help="image side (default: the net's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)  # child processes
    a = p.parse_args(argv)
    if a.folder is not None:
        print(json.dumps(_one(a)))
        return 0
    from dnnbrain.dnn.models import build_network
    size = a.size or int(np.atleast_1d(build_network(a.net, pretrained=False).img_size)[0])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _write_images(Path(tmp), max(a.n), size)
        for n in a.n:
            cmd = [sys.executable, str(HERE / "bench_topstim.py"), "--net", a.net, "--layer",
                   a.layer, "--n", str(n), "--k", str(a.k), "--batch", str(a.batch),
                   "--threads", str(a.threads), "--folder", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                return done.returncode
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    batch_mib = a.batch * 3 * size * size * 4 / 2**20
    print(f"{a.net} {a.layer}: {rows[0]['units']} units, top and bottom k = {a.k}, "
          f"batch {a.batch} ({batch_mib:.1f} MiB of input), {size} px")
    print(f"{'N':>7} {'s':>8} {'stim/s':>8} {'RSS growth MiB':>15} {'N inputs MiB':>13}")
    for r in rows:
        print(f"{r['n']:>7} {r['seconds']:>8.2f} {r['per_s']:>8.1f} {r['growth_mib']:>15.1f} "
              f"{r['n'] * batch_mib / a.batch:>13.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "batch_mib": batch_mib}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
