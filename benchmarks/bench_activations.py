"""Activation extraction speed and memory: dnnbrain vs a bare forward pass (and torchlens).

Run: ``python benchmarks/bench_activations.py [--n 2000] [--batch 64] [--size 224]
[--nets alexnet resnet18] [--pool mean] [--threads 2] [--device cpu] [--no-refs]
[--json out.json]``.

Four layers of AlexNet (``conv1_relu conv3_relu conv5_relu fc2_relu``) and ResNet-18
(``res1 res2 res3 res4``), random weights, over ``--n`` random preprocessed images
(``--size`` px, one ``(N, 3, H, W)`` tensor made before timing). Timed, one after the
other on the same tensor, round-robin over ``--repeats`` rounds (median):

* ``bare``: ``model(x[a:b])`` per batch under ``no_grad`` / eval, stopped by a hook at the
  deepest of the four layers, nothing kept: the floor. ``bare-cl``: the same with the
  batch made channels-last (what dnnbrain runs on the CPU for the named networks).
* ``dnnbrain``: :func:`dnnbrain.probe.activations` in memory (all four layers, every
  stimulus, ``--pool``); ``dnnbrain-store``: the same streamed to memory-mapped ``.npy``
  files (``sync=True``, in a temporary folder).
* ``torchlens`` (if it imports): ``torchlens.trace(model, x[a:b], save=module(...) | ...)``
  per batch, the four modules' outputs pooled like dnnbrain's.
  thingsvision is not run: its release pins torch/torchvision 2.0/0.15, numpy < 2 and
  TensorFlow < 2.16 (see docs/benchmarks.md).

Memory: the resident set (``/proc/self/statm``) sampled every 5 ms over a streamed run
(:func:`dnnbrain.probe.iter_activations`); ``growth`` is the largest per-batch peak after
the first batch minus the first batch's peak (the forward's own working set is in both),
against one batch (``batch x 3 x H x W x 4`` bytes of input).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dnnbrain.dnn.algo.forward import StopForward  # noqa: E402
from dnnbrain.dnn.fingerprint import seeded  # noqa: E402
from dnnbrain.dnn.models import build_network  # noqa: E402
from dnnbrain.probe import activations, iter_activations  # noqa: E402

LAYERS = {"alexnet": ["conv1_relu", "conv3_relu", "conv5_relu", "fc2_relu"],
          "resnet18": ["res1", "res2", "res3", "res4"]}
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssSampler:
    """Peak resident set in a background thread, every ``dt`` seconds."""

    def __init__(self, dt: float = 0.005) -> None:
        self.dt, self.peak, self._stop = dt, rss(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.dt)

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())


def bare(dnn, x, deepest, batch, channels_last=False):
    model = dnn.model
    module = dnn.layer2module(deepest)

    def stop(m, i, o):
        raise StopForward

    h = module.register_forward_hook(stop)
    try:
        with torch.no_grad():
            for a in range(0, len(x), batch):
                xb = x[a:a + batch].to(dnn.device)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                try:
                    model(xb)
                except StopForward:
                    pass
    finally:
        h.remove()


def torchlens_run(tl, dnn, x, layers, batch, pool):
    paths = [dnn.layer_path(l) for l in layers]
    sel = tl.module(paths[0])
    for p in paths[1:]:
        sel = sel | tl.module(p)
    outs = []
    with torch.no_grad():
        for a in range(0, len(x), batch):
            tr = tl.trace(dnn.model, x[a:a + batch].to(dnn.device), save=sel)
            res = []
            for p in paths:
                t = tr[p].out
                res.append(t if t.ndim == 2 or pool == "none" else
                           t.flatten(2).mean(-1) if pool == "mean" else t.flatten(2).amax(-1))
            outs.append(res)
    return outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--nets", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--pool", default="mean", choices=["none", "mean", "max"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-refs", dest="refs", action="store_false")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tl = None
    if args.refs:
        try:
            import torchlens as tl  # noqa: F811
        except ImportError:
            print("torchlens not importable: skipped (pip install torchlens)")
    rows = []
    for net in args.nets:
        with seeded(0):
            dnn = build_network(net, pretrained=False, device=torch.device(args.device))
        layers = LAYERS[net]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.n, 3, args.size, args.size, generator=g)
        runs = {"bare": lambda: bare(dnn, x, layers[-1], args.batch),
                "bare-cl": lambda: bare(dnn, x, layers[-1], args.batch, True),
                "dnnbrain": lambda: activations(dnn, x, layers, pool=args.pool,
                                                batch_size=args.batch, preprocessed=True)}
        tmp = tempfile.TemporaryDirectory()
        runs["dnnbrain-store"] = lambda: activations(
            dnn, x, layers, pool=args.pool, batch_size=args.batch, preprocessed=True,
            out=Path(tmp.name) / f"s{time.monotonic_ns()}")
        if tl is not None:
            runs["torchlens"] = lambda: torchlens_run(tl, dnn, x, layers, args.batch, args.pool)
        # warm-up and agreement on one batch
        small = x[:min(args.batch, 4)]
        ref = activations(dnn, small, layers, pool=args.pool, preprocessed=True)
        if tl is not None:
            got = torchlens_run(tl, dnn, small, layers, args.batch, args.pool)[0]
            diff = max(float((torch.as_tensor(ref[k]) - g.float()).abs().max())
                       for k, g in zip(layers, got))
            print(f"{net}: torchlens vs dnnbrain max |diff| {diff:.2e}")
        times = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        # resident memory over a streamed store run: each batch's peak against the first's
        peaks = []
        with RssSampler() as smp:
            for start, acts in iter_activations(dnn, x, layers, pool=args.pool,
                                                batch_size=args.batch, preprocessed=True):
                peaks.append(max(smp.peak, rss()))
                smp.peak = rss()
        growth = max(peaks[1:], default=peaks[0]) - peaks[0]
        one_batch = args.batch * 3 * args.size * args.size * 4
        tmp.cleanup()
        med = {k: statistics.median(v) for k, v in times.items()}
        floor = min(med["bare"], med["bare-cl"])
        for name, t in med.items():
            rows.append({"net": net, "impl": name, "n": args.n, "batch": args.batch,
                         "s": t, "img_per_s": args.n / t, "vs_bare": t / floor})
        rows.append({"net": net, "impl": "rss", "growth_mb": growth / 2**20,
                     "one_batch_mb": one_batch / 2**20, "flat": growth < one_batch})
    print(f"\n{'net':9} {'impl':15} {'s':>8} {'img/s':>8} {'x fastest bare':>14}")
    for r in rows:
        if r["impl"] == "rss":
            print(f"{r['net']:9} RSS growth {r['growth_mb']:.1f} MiB after the first batch "
                  f"(one batch {r['one_batch_mb']:.1f} MiB): "
                  f"{'flat' if r['flat'] else 'NOT flat'}")
        else:
            print(f"{r['net']:9} {r['impl']:15} {r['s']:8.2f} {r['img_per_s']:8.1f} "
                  f"{r['vs_bare']:14.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
