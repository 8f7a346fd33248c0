"""Shared benchmark helpers: networks, inputs, timing, peak memory and autograd floors.

Used by ``bench_unit_saliency.py``, ``run_all.py`` and ``bench_memory.py`` (run them as
``python benchmarks/<script>.py``; this directory is then on ``sys.path``).

Timing protocol (:func:`measure`, :func:`measure_many`): one profiled run first (warm-up
and peak memory), then up to ``repeats`` timed runs, fewer when one run is slow (at most
``cap_s`` seconds of timed runs per implementation; a run longer than ``cap_s`` is timed
once: the profiled run itself, whose profiler overhead is far below 1% for such long runs).
Implementations that are compared run interleaved, round by round.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the level before the call;
on the CPU the peak of the cumulative sum of the allocation events that
``torch.profiler(profile_memory=True)`` records from torch's CPU allocator, above the level
before the call. Both count tensors only (not the Python heap, not numpy arrays), which is
what differs between implementations; process RSS is not used in-process because the
allocator and glibc keep freed pages, so it depends on what ran before.
"""
from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # before torch: no kineto chatter on stderr
import torch  # noqa: E402

from dnnbrain.dnn.models import DNN, build_network  # noqa: E402

log = logging.getLogger("benchmarks")


# ------------------------------------------------------------------------------ networks
def load_net(name: str, device: torch.device) -> Tuple[DNN, str]:
    """``build_network(name)`` on ``device``: the demo net ``shapenet`` with its shipped
    weights when present (random weights otherwise), torchvision nets with random weights.
    Returns the network and a note on its weights."""
    if name.lower() == "shapenet":
        try:
            return build_network(name, pretrained=True, device=device), "shipped weights"
        except (FileNotFoundError, ValueError) as err:
            log.warning("ShapeNet weights not available (%s); using random weights",
                        str(err).splitlines()[0][:120])
    dnn = build_network(name, pretrained=False, device=device)
    head = getattr(getattr(dnn.model, "heads", None), "head", None)
    if isinstance(head, torch.nn.Linear) and not head.weight.any():
        # torchvision initialises a ViT's head to zeros: every class gradient would be 0
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
        return dnn, "random weights (head re-drawn: N(0, 0.02))"
    return dnn, "random weights"


def make_inputs(dnn: DNN, n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, S, S)`` preprocessed inputs: uniform random pixels through
    ``dnn.test_transform.normalize``, on ``dnn.device``.

    Each image holds a 0 and a 1 pixel in every channel, so ``max - min`` is the same for
    every image: a SmoothGrad ``sigma_multiplier`` then is one captum ``stdevs`` exactly.
    """
    size = dnn.img_size
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, size, size, generator=gen)
    pixels[:, :, 0, 0], pixels[:, :, 0, 1] = 0.0, 1.0
    return dnn.test_transform.normalize(pixels).to(dnn.device)


# ------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    return statistics.median(timed_runs(fn, repeats, device))


def timed_runs(fn: Callable[[], object], repeats: int, device: torch.device,
               cpu: Optional[List[float]] = None) -> List[float]:
    """Wall times of ``repeats`` calls of ``fn`` (device synchronised around each); the
    process CPU seconds of each call are appended to ``cpu`` if given."""
    times: List[float] = []
    for _ in range(repeats):
        _sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return times


@contextlib.contextmanager
def _quiet_stderr():
    """Silence fd 2 (kineto prints a line at every profiler start/stop)."""
    try:
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def profiled_run(fn: Callable[[], Any], device: torch.device
                 ) -> Tuple[Optional[float], float, Any]:
    """One call of ``fn``: (peak MiB above the level before it or None, seconds, result)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, dt, out
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.__enter__()
    try:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
                  and e.device_type() == torch.autograd.DeviceType.CPU]
    except AttributeError:  # profiler internals moved: no memory figure
        return None, dt, out
    level = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        level += e.nbytes()
        peak = max(peak, level)
    return peak / 2**20, dt, out


@dataclass
class Measure:
    """Result of :func:`measure`: median seconds, the timed runs (wall and process CPU
    seconds), peak MiB, the output."""

    median: float
    runs: List[float] = field(default_factory=list)
    cpu_runs: List[float] = field(default_factory=list)
    peak_mib: Optional[float] = None
    out: Any = None


def measure(fn: Callable[[], Any], device: torch.device, repeats: int = 3,
            cap_s: float = 10.0, memory: bool = True) -> Measure:
    """Profiled run (warm-up + peak memory), then ``min(repeats, cap_s // t)`` timed runs
    (``t``: the profiled run's time); when that is 0, the profiled run is the timing."""
    if memory:
        peak, t0, out = profiled_run(fn, device)
    else:
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        peak, t0 = None, time.perf_counter() - start
    n = min(repeats, int(cap_s // max(t0, 1e-9)))  # repeats=0: the first run is the timing
    cpu: List[float] = []
    runs = timed_runs(fn, n, device, cpu) if n > 0 else [t0]
    return Measure(statistics.median(runs), runs, cpu, peak, out)


def measure_many(fns: Sequence[Callable[[], Any]], device: torch.device, repeats: int = 3,
                 cap_s: float = 10.0) -> List[Measure]:
    """:func:`measure` for implementations that are compared: a profiled run of each, then
    timed runs interleaved round by round (``a b c a b c ...``), so a drift in the machine's
    load or a warm cache favours none of them. Implementation ``i`` takes part in the first
    ``min(repeats, cap_s // t_i)`` rounds."""
    first = [profiled_run(fn, device) for fn in fns]
    counts = [min(repeats, int(cap_s // max(t, 1e-9))) for _, t, _ in first]
    runs: List[List[float]] = [[] for _ in fns]
    cpu: List[List[float]] = [[] for _ in fns]
    for r in range(max(counts, default=0)):
        for i, fn in enumerate(fns):
            if r < counts[i]:
                runs[i] += timed_runs(fn, 1, device, cpu[i])
    out = []
    for i, (peak, t0, result) in enumerate(first):
        times = runs[i] or [t0]
        out.append(Measure(statistics.median(times), times, cpu[i], peak, result))
    return out


# ------------------------------------------------------------------------------ floors
class _Stop(Exception):
    pass


def bare_pass(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor,
              wrt: Optional[torch.nn.Module] = None) -> Callable[[], object]:
    """Plain-autograd floor: forward up to ``module`` (a bare stop hook), one backward of
    the sum of its first channel to the input, or to ``wrt``'s output (Grad-CAM: the CAM
    layer). The passes a gradient method needs at least."""
    def run():
        out: Dict[str, torch.Tensor] = {}

        def stop(m, i, o):
            out["o"] = o
            raise _Stop

        def grab(m, i, o):
            out["a"] = o

        handles = [module.register_forward_hook(stop)]
        if wrt is not None:
            handles.append(wrt.register_forward_hook(grab))
        try:
            xg = x.detach().requires_grad_(wrt is None)
            try:
                model(xg)
            except _Stop:
                pass
            leaf = xg if wrt is None else out["a"]
            return torch.autograd.grad(out["o"][:, 0].sum(), leaf)[0]
        finally:
            for h in handles:
                h.remove()
    return run


def bare_forward(model: torch.nn.Module, module: torch.nn.Module,
                 x: torch.Tensor) -> Callable[[], object]:
    """Forward-only floor: a no-grad forward stopped at ``module`` (occlusion,
    Score-CAM)."""
    def run():
        out: Dict[str, torch.Tensor] = {}

        def stop(m, i, o):
            out["o"] = o
            raise _Stop

        handle = module.register_forward_hook(stop)
        try:
            with torch.no_grad():
                try:
                    model(x)
                except _Stop:
                    pass
            return out["o"]
        finally:
            handle.remove()
    return run


class Floors:
    """Cached floor timings: ``rows`` rows in passes of ``chunk`` rows cost
    ``(rows // chunk) * t(chunk) + t(rows % chunk)``, each ``t`` measured once."""

    def __init__(self, device: torch.device, repeats: int, cap_s: float) -> None:
        self.device, self.repeats, self.cap_s = device, repeats, cap_s
        self._cache: Dict[tuple, float] = {}

    def _one(self, kind: str, dnn: DNN, module: str, rows: int,
             wrt: Optional[str]) -> float:
        key = (kind, id(dnn), module, rows, wrt)
        if key not in self._cache:
            model = dnn.model
            x = torch.randn((rows, 3, dnn.img_size, dnn.img_size), device=self.device)
            mod = model.get_submodule(module)
            fn = (bare_forward(model, mod, x) if kind == "fwd" else
                  bare_pass(model, mod, x, model.get_submodule(wrt) if wrt else None))
            self._cache[key] = measure(fn, self.device, self.repeats, self.cap_s,
                                       memory=False).median
        return self._cache[key]

    def time(self, kind: str, dnn: DNN, module: str, rows: int, chunk: int,
             wrt: Optional[str] = None) -> float:
        """Floor seconds of ``rows`` rows in passes of ``chunk`` rows (``kind``: 'grad' or
        'fwd')."""
        chunk = max(1, min(chunk, rows))
        total = (rows // chunk) * self._one(kind, dnn, module, chunk, wrt)
        if rows % chunk:
            total += self._one(kind, dnn, module, rows % chunk, wrt)
        return total
