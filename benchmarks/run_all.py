"""The whole benchmark suite: dnnbrain side by side with captum and pytorch-grad-cam.

Run: ``python benchmarks/run_all.py [--device cpu|cuda] [--threads 2] [--repeats 3]
[--batch 16] [--quick] [--json out.json]``. For torchvision AlexNet and ResNet-18 (random
weights, 224 px) and the demo ShapeNet (64 px, shipped weights when present), every method
runs on the same inputs, the same target and the same thread count in every library; the
table gives median seconds, reference/dnnbrain (> 1: dnnbrain is faster), peak memory,
dnnbrain's efficiency (plain-autograd floor / its time) and the agreement of the maps.
See ``docs/benchmarks.md`` for what each column means and how settings are matched.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM progress bars
from harness import Floors, load_net, make_inputs, measure, measure_many  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import suite  # noqa: E402
import suite_pair  # noqa: E402

log = logging.getLogger("run_all")
NETS = ("alexnet", "resnet18", "shapenet", "vit_b_16")
#: On the CPU, images for the many-pass methods (IG, SmoothGrad, occlusion) / Score-CAM.
CPU_HEAVY = {"alexnet": 4, "resnet18": 2, "shapenet": 16, "vit_b_16": 2}
CPU_SCORECAM = {"alexnet": 0, "resnet18": 1, "shapenet": 16, "vit_b_16": 0}
QUICK_HEAVY = {"alexnet": 1, "resnet18": 1, "shapenet": 4, "vit_b_16": 1}
QUICK_SCORECAM = {"alexnet": 0, "resnet18": 0, "shapenet": 4, "vit_b_16": 0}
#: On the CPU, images for the PAIR-owned methods and the default-settings cells.
CPU_PAIR = {"alexnet": 0, "resnet18": 2, "shapenet": 8, "vit_b_16": 0}
QUICK_PAIR = {"alexnet": 0, "resnet18": 0, "shapenet": 0, "vit_b_16": 0}  # minutes: not in --quick


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per measurement (default 3)")
    p.add_argument("--batch", type=int, default=16, help="images per call (default 16)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (~30 s on 2 cores): 4 images, 1 for IG/SmoothGrad/"
                        "occlusion on the 224-px nets, no chunk search, one cold run per "
                        "measurement")
    p.add_argument("--json", help="also write the rows and the machine to this file")
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    p.add_argument("--methods", nargs="+", choices=suite.METHODS + suite_pair.METHODS,
                   default=list(suite.METHODS + suite_pair.METHODS))
    p.add_argument("--cap-s", type=float, default=None,
                   help="seconds of timed runs per measurement before fewer repeats are "
                        "taken (default 6 on the CPU, 20 on CUDA)")
    p.add_argument("--heavy-batch", type=int, default=None,
                   help="images for IG / SmoothGrad / occlusion (CPU default: alexnet 4, "
                        "resnet18 2, shapenet --batch; CUDA: --batch)")
    p.add_argument("--scorecam-batch", type=int, default=None,
                   help="images for Score-CAM (CPU default: resnet18 1, shapenet --batch, "
                        "alexnet skipped; CUDA: --batch)")
    p.add_argument("--pair-batch", type=int, default=None,
                   help="images for Blur IG / Guided IG / XRAI and the default-settings "
                        "cells (CPU default: shapenet 8, resnet18 2, others skipped; "
                        "CUDA: --batch)")
    return p


def _sizes(args: argparse.Namespace, net: str, cuda: bool) -> tuple:
    """(images for one-pass methods, for IG/SmoothGrad/occlusion, for Score-CAM, for the
    PAIR and default-settings cells)."""
    n = min(args.batch, 4) if args.quick else args.batch
    if cuda:
        heavy = scorecam = paired = n
    else:
        paired = min((QUICK_PAIR if args.quick else CPU_PAIR)[net], n)
        heavy = (QUICK_HEAVY if args.quick else CPU_HEAVY)[net]
        scorecam = (QUICK_SCORECAM if args.quick else CPU_SCORECAM)[net]
        heavy, scorecam = min(heavy, n), min(scorecam, n)
    if args.heavy_batch is not None:
        heavy = args.heavy_batch
    if args.scorecam_batch is not None:
        scorecam = args.scorecam_batch
    if args.pair_batch is not None:
        paired = args.pair_batch
    return n, heavy, scorecam, paired


def agreement(ours: Any, theirs: Any, minmax: bool) -> Optional[float]:
    """max |ours - theirs| / max |theirs| (after per-map min-max scaling if ``minmax``)."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape:
        return None
    if minmax:
        def scale(m):
            m = m - m.min(axis=(-2, -1), keepdims=True)
            return m / np.maximum(m.max(axis=(-2, -1), keepdims=True), 1e-12)
        a, b = scale(a), scale(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def run_cell(cell: suite.Cell, dnn, device: torch.device, floors: Floors,
             args: argparse.Namespace, cap: float) -> List[Dict[str, Any]]:
    """Measure one cell: search the reference's chunk, time everything, compare maps."""
    chunk, tried = cell.chunk, {}
    if cell.search and args.quick:
        chunk = min(50, cell.rows)
    elif cell.search:
        cands = sorted({min(k, cell.rows) for k in suite.CHUNKS})
        for k in cands:
            tried[k] = measure(cell.refs[0].make(k), device, 0, 0, memory=False).median
        chunk = min(tried, key=tried.get)
    log.info("%s %s %s: N=%d rows=%d chunk=%d", cell.net, cell.method, cell.target, cell.n,
             cell.rows, chunk)
    ours, *refs = measure_many([cell.ours.make(chunk)] + [r.make(chunk) for r in cell.refs],
                               device, args.repeats, cap)
    floor = None
    if cell.floor is not None:
        kind, module, wrt = cell.floor
        floor = floors.time(kind, dnn, module, cell.rows, chunk, wrt)
    rows = []
    for ref, theirs in zip(cell.refs, refs):
        agree = (agreement(ours.out, ref.compare(theirs.out), ref.minmax)
                 if ref.compare is not None else None)
        rows.append({
            "net": cell.net, "method": cell.method, "target": cell.target, "images": cell.n,
            "rows": cell.rows, "chunk": chunk, "reference": ref.lib,
            "ref_setting": ref.setting(chunk), "dnnbrain_setting": cell.ours.setting(chunk),
            "dnnbrain_s": ours.median, "ref_s": theirs.median,
            "ratio": theirs.median / ours.median,
            "dnnbrain_mib": ours.peak_mib, "ref_mib": theirs.peak_mib,
            "floor_s": floor, "floor_kind": cell.floor[0] if cell.floor else None,
            "efficiency": floor / ours.median if floor is not None else None,
            "ref_efficiency": floor / theirs.median if floor is not None else None,
            "agree": agree, "runs": [len(ours.runs), len(theirs.runs)],
            "dnnbrain_runs_s": ours.runs, "ref_runs_s": theirs.runs,
            "dnnbrain_cpu_s": ours.cpu_runs, "ref_cpu_s": theirs.cpu_runs,
            "searched_s": {str(k): v for k, v in tried.items()} or None, "note": cell.note})
    del ours, refs
    gc.collect()
    return rows


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(rows: List[Dict[str, Any]]) -> str:
    """The printed table."""
    head = (f"{'net':8} {'method':10} {'target':9} {'N':>3} {'rows':>5} {'chunk':>5} "
            f"{'reference':16} {'dnnbrain s':>10} {'ref s':>8} {'ref/dnn':>7} "
            f"{'dnn MiB':>8} {'ref MiB':>8} {'effic.':>7} {'agree':>7} {'runs':>5}  "
            "reference setting")
    lines = [head, "-" * len(head)]
    for r in rows:
        eff = _fmt(r["efficiency"], ".2f")
        if r["floor_kind"] == "fwd" and r["efficiency"] is not None:
            eff += "f"
        lines.append(
            f"{r['net']:8} {r['method']:10} {r['target']:9} {r['images']:3d} "
            f"{r['rows']:5d} {r['chunk']:5d} {r['reference']:16} {r['dnnbrain_s']:10.3f} "
            f"{r['ref_s']:8.3f} "
            f"{r['ratio']:7.2f} {_fmt(r['dnnbrain_mib'], '8.0f'):>8} "
            f"{_fmt(r['ref_mib'], '8.0f'):>8} {eff:>7} {_fmt(r['agree'], '7.0e'):>7} "
            f"{'%d/%d' % tuple(r['runs']):>5}  {r['ref_setting']}")
    return "\n".join(lines)


def machine(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Where the figures come from."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import captum
    from importlib.metadata import version
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": str(device), "python": platform.python_version(),
            "torch": torch.__version__, "captum": captum.__version__,
            "pytorch-grad-cam": version("grad-cam"), "saliency": _version("saliency"),
            "quick": args.quick,
            "repeats": args.repeats, "batch": args.batch,
            "loadavg_start": os.getloadavg()[0]}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def busy(info: Dict[str, Any], threads: int) -> bool:
    """Other work was running: a 1-minute load average above 1 before the suite, or above
    its own threads + 1 at the end."""
    return info["loadavg_start"] > 1.0 or info["loadavg_end"] > threads + 1.0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the suite, print the table, optionally write JSON."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    for lib in ("captum", "pytorch_grad_cam"):  # "required_grads has been set" & co.
        warnings.filterwarnings("ignore", category=UserWarning, module=lib)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    cap = args.cap_s if args.cap_s is not None else (20.0 if cuda else 6.0)
    repeats = 0 if args.quick else args.repeats  # quick: the profiled run is the timing
    args.repeats = repeats
    info = machine(args, device)
    if info["saliency"] is None and any(m in suite_pair.METHODS[:3] for m in args.methods):
        log.warning("PAIR saliency is not installed (pip install --no-deps saliency): its "
                    "rows are skipped")
        args.methods = [m for m in args.methods if m not in suite_pair.METHODS[:3]]
    t_start, cpu_start = time.perf_counter(), time.process_time()
    floors = Floors(device, repeats, cap)
    rows: List[Dict[str, Any]] = []
    weights: Dict[str, str] = {}
    skipped: List[str] = []
    for net in args.nets:
        dnn, weights[net] = load_net(net, device)
        n, heavy, scorecam, paired = _sizes(args, net, cuda)
        for method in args.methods:
            if (method == "scorecam" and not scorecam) or (
                    method in ("ig", "smoothgrad", "occlusion") and not heavy) or (
                    method in suite_pair.METHODS and not paired):
                skipped.append(f"{net} {method}")
        x = make_inputs(dnn, max(n, paired), seed=0)
        pair_cells = suite_pair.cells(suite._Ctx(dnn, net, x), args.methods, paired)
        for cell in suite.cells(dnn, net, x[:n], args.methods, heavy, scorecam) + pair_cells:
            rows += run_cell(cell, dnn, device, floors, args, cap)
        del dnn, x
        gc.collect()
    info.update({"weights": weights, "skipped": skipped,
                 "wall_s": time.perf_counter() - t_start,
                 "process_cpu_s": time.process_time() - cpu_start,
                 "loadavg_end": os.getloadavg()[0]})
    info["busy"] = busy(info, args.threads)
    out = [table(rows), "",
           f"{info['cpu']}, {info['threads']} threads, device {info['device']}"
           + (f" ({info['gpu']})" if cuda else "") + f"; torch {info['torch']}, captum "
           f"{info['captum']}, pytorch-grad-cam {info['pytorch-grad-cam']}, PAIR saliency "
           f"{info['saliency']}; weights: "
           + ", ".join(f"{k} {v}" for k, v in weights.items()),
           f"suite: {info['wall_s']:.0f} s wall, {info['process_cpu_s']:.0f} s CPU; load "
           f"average {info['loadavg_start']:.1f} at start, {info['loadavg_end']:.1f} at end"
           + (" (busy machine: timings are noisy)" if busy(info, args.threads) else "")]
    notes = sorted({f"{r['net']} {r['method']}: {r['note']}" for r in rows if r["note"]})
    if skipped:
        notes.append("skipped (too slow for this device/mode; --heavy-batch / "
                     "--scorecam-batch N runs them): " + ", ".join(skipped))
    if not cuda:
        notes.append("CPU defaults: IG, SmoothGrad and occlusion run on fewer images (N "
                     "column), Score-CAM on 1 ResNet-18 image and the ShapeNet batch only")
    out += ["notes:"] + [f"  {s}" for s in notes]
    print("\n".join(out))  # noqa: T201  (a benchmark's table is its output)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
