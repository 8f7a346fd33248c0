"""Peak memory of Integrated Gradients under a row budget (dnnbrain's ``batch_size``) and
under a memory budget (``memory_budget``).

Run: ``python benchmarks/bench_memory.py [--images 16 ...] [--rows 32 64 256]
[--budgets 128MiB 256MiB ...] [--threads 2] [--device cpu] [--captum] [--json out.json]``.
ResNet-18 (random weights, 224 px), IG with
50 Gauss-Legendre steps and a zero baseline for ``fc`` unit 540, ``--images`` images:
``50 x images`` forward+backward rows, ``batch_size`` rows per pass. Each setting runs in a
fresh subprocess, so nothing earlier in the process inflates its figures:

* ``torch peak``: peak of torch's allocator above the level before the call (CPU: the
  allocation events of ``torch.profiler(profile_memory=True)``; CUDA:
  ``torch.cuda.max_memory_allocated``);
* ``RSS peak``: ``ru_maxrss`` after the call minus the resident set before it (CPU; the
  process's high-water mark, so it includes the allocator's and glibc's slack);
* ``s``: wall time of the call (the first: cold, under the profiler).

``batch`` is the row budget (dnnbrain ``batch_size``, captum ``internal_batch_size``),
``pass`` the rows of the largest pass it gives (see :func:`pass_rows`). With a bounded
engine the peak follows the rows of one pass, not the number of images: the table ends
with the per-row slope between the smallest and largest pass (per number of images), and
``--images 2 16`` shows the same budget giving the same peak.

``--captum`` adds captum's ``IntegratedGradients`` with ``internal_batch_size`` = the same
rows, for comparison.

``--budgets`` adds a second table: dnnbrain IG with ``memory_budget=<budget>`` and no
``batch_size``, one fresh subprocess per budget and ``--images`` value. ``rows/pass`` is
the rows per gradient pass the budget chose (what :meth:`SaliencyImage.rows_per_pass`
returned to the path code during the call), ``pass`` the largest pass that ran, and
``within`` says whether the torch peak stayed at or below the budget. The exit status is 1
when a peak exceeds its budget (or could not be measured), so the run serves as a check.
With ``--budgets`` the row-budget table runs only for the ``--rows`` given explicitly;
without it, ``--rows`` defaults to 32 64 256 as before.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple


def _rss_mib() -> Optional[float]:
    """Resident set size now (Linux /proc), MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def pass_rows(lib: str, budget: int, images: int, steps: int = 50) -> int:
    """Rows of the largest pass for a row ``budget``. dnnbrain's engine hands its path
    code whole images, ``max(1, budget // steps)`` at a time, and the path code cuts their
    rows into passes of at most ``budget``; captum puts ``budget // images`` steps of every
    image in a pass (one step when ``budget < images``)."""
    if lib == "dnnbrain":
        return min(budget, min(images, max(1, budget // steps)) * steps)
    return min(max(1, budget // images), steps) * images


def child(lib: str, images: int, setting: str, threads: int, device: str
          ) -> Dict[str, Any]:
    """One measurement, in this (fresh) process.

    Parameters
    ----------
    lib : {'dnnbrain', 'captum', 'budget'}
        The implementation; 'budget' is dnnbrain with ``memory_budget=setting``.
    images : int
        Images per call.
    setting : str
        The row budget (an int) or, for 'budget', the memory budget ('512MiB').
    threads : int
        Torch threads.
    device : str
        Torch device.

    Returns
    -------
    dict
        The figures of the call (MiB, seconds; for 'budget' also the rows per pass).
    """
    import torch
    from harness import load_net, make_inputs, profiled_run
    torch.set_num_threads(threads)
    dev = torch.device(device)
    dnn, _ = load_net("resnet18", dev)
    x = make_inputs(dnn, images, seed=0)
    chosen: List[Tuple[int, int]] = []  # (rows per pass, rows of the call) of each path
    if lib in ("dnnbrain", "budget"):
        from dnnbrain.dnn.algo.integrated import IntegratedGradients
        size = dict(memory_budget=setting) if lib == "budget" else dict(batch_size=int(setting))
        ig = IntegratedGradients(dnn, "fc", 540, steps=50, rule="gausslegendre",
                                 baseline=torch.zeros(x.shape[1:]), **size)
        rows_per_pass = ig.rows_per_pass

        def spy(xs: torch.Tensor, *a: Any, **kw: Any) -> int:
            """Record what the path code (gradient_sums: ``at_output``) is given."""
            rows = rows_per_pass(xs, *a, **kw)
            if "at_output" in kw:
                chosen.append((rows, len(xs) * 50))
            return rows
        ig.rows_per_pass = spy  # type: ignore[method-assign]

        def fn():
            return ig.backprop(x, preprocessed=True)
    else:
        from captum.attr import IntegratedGradients as CaptumIG
        cig = CaptumIG(dnn.model)

        def fn():
            return cig.attribute(x, baselines=0.0, target=539, n_steps=50,
                                 method="gausslegendre", internal_batch_size=int(setting)
                                 ).detach().cpu().numpy()
    rss0 = _rss_mib()
    # one profiled call gives both: the profiler's own buffers are a few MiB at most
    peak, seconds, _ = profiled_run(fn, dev)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    res = {"lib": lib, "images": images, "torch_peak_mib": peak,
           "rss_peak_mib": (maxrss - rss0) if rss0 is not None and dev.type == "cpu"
           else None, "s": seconds}
    if lib != "budget":
        return dict(res, rows=int(setting))
    from dnnbrain.dnn.algo.budget import parse_budget
    budget_mib = parse_budget(setting) / 2**20
    return dict(res, lib="dnnbrain", budget=setting, budget_mib=budget_mib,
                rows_per_pass=max(r for r, _ in chosen),
                pass_rows=max(min(r, n) for r, n in chosen),
                within=peak is not None and peak <= budget_mib)


def _spawn(args: argparse.Namespace, lib: str, setting: str, images: int) -> Dict[str, Any]:
    """:func:`child` in a fresh subprocess; its result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", lib, setting,
           "--images", str(images), "--threads", str(args.threads), "--device", args.device]
    env = dict(os.environ, KINETO_LOG_LEVEL="5")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    if done.returncode:
        raise SystemExit(f"{lib} images={images} {setting} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    """Run each setting in a subprocess and print the tables.

    Parameters
    ----------
    argv : list of str, optional
        The command line (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0, or 1 when a ``--budgets`` peak exceeds its budget or was not measured.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[16],
                   help="images per call; several values show the peak does not grow "
                        "with them")
    p.add_argument("--rows", type=int, nargs="+",
                   help="row budgets (dnnbrain batch_size) to compare; default 32 64 256, "
                        "none with --budgets")
    p.add_argument("--budgets", nargs="+", metavar="SIZE",
                   help="memory budgets (dnnbrain memory_budget, e.g. 512MiB) to check")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--captum", action="store_true", help="also captum, same row budgets")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", nargs=2, metavar=("LIB", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        res = child(args.child[0], args.images[0], args.child[1], args.threads, args.device)
        print(json.dumps(res))  # noqa: T201  (read by the parent)
        return 0
    if args.rows is None:
        args.rows = [] if args.budgets else [32, 64, 256]
    if args.budgets:
        from dnnbrain.dnn.algo.budget import parse_budget
        for b in args.budgets:
            try:
                parse_budget(b)
            except ValueError as err:
                p.error(str(err))
    results = [_spawn(args, lib, str(rows), images)
               for lib in ["dnnbrain"] + (["captum"] if args.captum else [])
               for images in args.images for rows in args.rows]
    budget_results = [_spawn(args, "budget", b, images)
                      for images in args.images for b in args.budgets or []]

    def f(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.0f}"
    head = (f"IG, ResNet-18, 224 px, 50 steps (rows = 50 x images), {args.threads} "
            f"threads, {args.device}")
    lines = []
    if results:
        lines += [head, f"{'library':9} {'images':>6} {'rows':>5} {'batch':>5} {'pass':>5} "
                        f"{'torch peak MiB':>14} {'RSS peak MiB':>12} {'s':>7}"]
    for r in results:
        r["pass_rows"] = pass_rows(r["lib"], r["rows"], r["images"])
        lines.append(f"{r['lib']:9} {r['images']:6d} {50 * r['images']:5d} {r['rows']:5d} "
                     f"{r['pass_rows']:5d} {f(r['torch_peak_mib']):>14} "
                     f"{f(r['rss_peak_mib']):>12} {r['s']:7.1f}")
    for lib in ("dnnbrain", "captum"):
        for images in args.images:
            rs = sorted((r for r in results if r["lib"] == lib and r["images"] == images
                         and r["torch_peak_mib"]), key=lambda r: r["pass_rows"])
            if len(rs) < 2 or rs[-1]["pass_rows"] == rs[0]["pass_rows"]:
                continue
            slope = ((rs[-1]["torch_peak_mib"] - rs[0]["torch_peak_mib"])
                     / (rs[-1]["pass_rows"] - rs[0]["pass_rows"]))
            lines.append(f"{lib}, {images} images: {slope:.1f} MiB per row of a pass; "
                         + ", ".join(f"batch {r['rows']} -> {r['torch_peak_mib']:.0f} MiB"
                                     for r in rs))
    if budget_results:
        lines += ["" if results else head, "dnnbrain memory_budget (no batch_size)",
                  f"{'budget MiB':>10} {'images':>6} {'rows/pass':>9} {'pass':>5} "
                  f"{'torch peak MiB':>14} {'RSS peak MiB':>12} {'within':>6} {'s':>7}"]
    for r in budget_results:
        ok = "yes" if r["within"] else "no" if r["torch_peak_mib"] is not None else "?"
        lines.append(f"{r['budget_mib']:10.0f} {r['images']:6d} {r['rows_per_pass']:9d} "
                     f"{r['pass_rows']:5d} {f(r['torch_peak_mib']):>14} "
                     f"{f(r['rss_peak_mib']):>12} {ok:>6} {r['s']:7.1f}")
    print("\n".join(lines))  # noqa: T201  (a benchmark's table is its output)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results,
                       "budget_results": budget_results}, fh, indent=1)
    return 0 if all(r["within"] for r in budget_results) else 1

if __name__ == "__main__":
    raise SystemExit(main())
