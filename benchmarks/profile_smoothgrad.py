"""Where SmoothGrad's time goes: dnnbrain's ``backprop_smooth`` against the same noisy
batch pushed through a hand-written forward + ``torch.autograd.grad`` (the floor).

Run: ``python benchmarks/profile_smoothgrad.py [--net vit_b_16] [--samples 16]
[--threads 2] [--rows 12]``. Prints each side's wall time and its ``torch.profiler``
table (self CPU by operation): when both tables hold the same operations in the same
shares, the time is the model's own and nothing is left for dnnbrain to remove.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dnnbrain.dnn.algo import VanillaSaliencyImage
from harness import load_net
from suite import NETS

SIGMA = 0.15


def main(argv=None) -> int:
    """Profile both sides once (after one warm-up call each) and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="vit_b_16", choices=list(NETS))
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=12)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dnn, _ = load_net(a.net, torch.device("cpu"))
    layer, unit, _ = NETS[a.net].cls
    side = dnn.img_size if isinstance(dnn.img_size, int) else dnn.img_size[0]
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    span = float(x.max() - x.min())
    obj = VanillaSaliencyImage(dnn, layer, unit)
    obj.batch_size = a.samples

    def ours():
        return obj.backprop_smooth(x, a.samples, SIGMA, seed=0, preprocessed=True)

    def bare():
        noise = torch.randn((a.samples,) + x.shape[1:],
                            generator=torch.Generator().manual_seed(0))
        xs = (x + SIGMA * span * noise).requires_grad_(True)
        out = dnn.model(xs)[:, unit - 1].sum()
        return torch.autograd.grad(out, xs)[0].mean(0)

    for fn in (ours, bare):
        fn()
    for name, fn in (("dnnbrain", ours), ("bare forward+backward", bare)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            fn()
            t = time.perf_counter() - t
        print(f"== {name}: {t:.2f} s ({a.net}, {a.samples} samples, {a.threads} threads)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
