"""XRAI's batched call against single calls, cold (segmentation cache emptied first).

Run: ``python benchmarks/bench_xrai.py [--net shapenet|resnet18] [--n 8] [--repeats 4]
[--threads 1]``. With the settings of ``suite_pair.py`` (100 IG steps x black/white,
PAIR's IG nodes, dilation 5, ``batch_size=200``), the batched call on ``n`` images and
``n`` one-image calls alternate, each after ``SEGMENT_CACHE.clear()``; the maps are
asserted equal. Prints min and median wall seconds and the CPU seconds of each, then the
segmentation alone: the ``n`` images one by one in a loop against one job on a pool of
``--threads`` workers (when the installed dnnbrain has ``SegmentCache.start``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from harness import load_net, make_inputs
import numpy as np
import torch

from dnnbrain.dnn.algo import make_method
from dnnbrain.dnn.algo import xrai as xrai_mod
from dnnbrain.dnn.algo.integrated import pixel_affine

TARGETS = {"shapenet": ("fc2", 2), "resnet18": ("fc", 540)}
SCALES = (50, 100, 150, 250, 500, 1200)


def timed(fn):
    xrai_mod.SEGMENT_CACHE.clear()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="shapenet", choices=sorted(TARGETS))
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dnn, _ = load_net(args.net, torch.device("cpu"))
    x = make_inputs(dnn, args.n)
    m = make_method(dnn, "xrai", *TARGETS[args.net], steps=100, dilation_radius=5,
                    batch_size=200)
    m.alphas, m.weights = np.linspace(0.0, 1.0, 100), np.full(100, 0.01)   # PAIR's nodes
    m.backprop(x[:1], preprocessed=True)   # warm-up
    runs = {"batched": [], "singles": []}
    for _ in range(args.repeats):
        b, *bt = timed(lambda: m.backprop(x, preprocessed=True))
        s, *st = timed(lambda: np.concatenate([m.backprop(x[i:i + 1], preprocessed=True)
                                               for i in range(args.n)]))
        assert np.array_equal(b, s)
        runs["batched"].append(bt)
        runs["singles"].append(st)
    load = os.getloadavg()[0]
    print(f"{args.net} n={args.n} threads={args.threads} (load {load:.1f}, "
          f"dnnbrain {os.path.dirname(xrai_mod.__file__)})")
    for name, rs in runs.items():
        wall = [r[0] for r in rs]
        print(f"  {name:8s} wall min {min(wall):6.2f} s  median {statistics.median(wall):6.2f}"
              f" s  cpu min {min(r[1] for r in rs):6.2f} s")
    ratio = min(r[0] for r in runs["singles"]) / min(r[0] for r in runs["batched"])
    print(f"  singles / batched (min wall): {ratio:.2f}")
    cache_cls = xrai_mod.SegmentCache
    if not hasattr(cache_cls, "start"):
        return
    scale, shift = pixel_affine(dnn)
    images = [np.ascontiguousarray(q.permute(1, 2, 0).numpy())
              for q in ((x - shift) / scale).to(torch.float32)]
    loop, pool_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for q in images:
            xrai_mod.segment_masks(q, SCALES, 5)
        loop.append(time.perf_counter() - t0)
        with ThreadPoolExecutor(args.threads) as pool:
            t0 = time.perf_counter()
            cache_cls().start(images, SCALES, 5, pool).result()
            pool_t.append(time.perf_counter() - t0)
    print(f"  segmentation of {args.n} images: loop min {min(loop):.2f} s, one job on "
          f"{args.threads} threads min {min(pool_t):.2f} s")


if __name__ == "__main__":
    main()
