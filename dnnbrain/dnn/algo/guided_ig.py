"""Guided Integrated Gradients (Kapishnikov et al., 2021), PAIR's algorithm, batched."""
from __future__ import annotations

import logging
from typing import Any, List, Optional

import numpy as np
import torch

from ..models import DNN
from .budget import Budget
from .checks import check_number
from .integrated import _PathMethod, pixel_affine
from .target import Unit

log = logging.getLogger(__name__)
_GUIDED_MAX_ITER = 1000  # inner iterations of one Guided IG step (a guard; ~5 are typical)
_GRAIN = 32768  # at::internal::GRAIN_SIZE: smaller CPU elementwise ops run on one thread


class GuidedIG(_PathMethod):
    """Guided IG (Kapishnikov et al., 2021, "Guided integrated gradients"), PAIR's
    algorithm: at each step move the fraction of features with the smallest ``|grad|``
    toward the image, within ``max_dist`` of the straight line; ends at the image.

    Parameters
    ----------
    dnn, from_layer, from_chn, batch_size, memory_budget
        As :class:`SaliencyImage`; ``batch_size`` rows (or as many as fit in the budget)
        walk their paths together.
    steps : int
        Steps of the path; cost ``steps`` sequential forward + backward passes per batch.
    fraction : float
        Share of features (0, 1] moved at each inner iteration.
    max_dist : float
        How far (in alpha, 0..1) a feature may stray from the straight line; 0 is IG,
        1 unbounded.
    baseline, blur_sigma, seed
        As :class:`IntegratedGradients`.

    Notes
    -----
    The path is planned in pixel space (the network input mapped back through
    ``test_transform``'s normalisation), as PAIR's model functions take pixels: its L1
    distances and its ``|grad|`` ranking then weigh the channels alike whatever the
    normalisation's per-channel scale. Maps are in network-input space like every other
    method's (``dx * grad`` is the same in both). The bookkeeping is float64; the passes
    run in the input's dtype.

    The choice of features by ``|grad|`` rank makes the path jump where two features'
    ``|grad|`` nearly tie at the ``fraction`` quantile: a rounding difference of 1e-7 in the
    gradient (a batched pass against single-image passes, float32 against float64) can
    swap which one moves, and from then on the path, and the map, differ. On ShapeNet at
    200 steps, 7 of 8 images agree batched vs one by one to 2e-7 and one differs by 2e-1
    of its maximum from step 50 on; PAIR's own float32 and float64 runs differ by 4e-1.
    With the same rounding (one image at a time, as PAIR runs) dnnbrain and PAIR agree to
    1e-7.
    """

    rows_per_map = 1  # the path is sequential: one pass holds each row once

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, steps: int = 200,
                 fraction: float = 0.25, max_dist: float = 0.02, baseline: Any = "black",
                 blur_sigma: float = 10.0, seed: int = 0, memory_budget: Budget = None
                 ) -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        self.steps = check_number("steps", steps, 1, open_low=False, integer=True)
        self.fraction = check_number("fraction", fraction, 0, 1)
        self.max_dist = check_number("max_dist", max_dist, 0, 1, open_low=False)
        self._set_baseline(baseline, blur_sigma, seed)

    def _path(self, x: torch.Tensor, base: torch.Tensor, units: List[Unit]) -> torch.Tensor:
        # PAIR's bookkeeping, in pixel space (its model functions take pixels: the L1
        # distances and the |grad| ranking then weigh every channel alike whatever the
        # normalisation), in float64 (the L1 targets are matched to 1e-9, as in PAIR)
        scale, shift = (t.to(x) for t in pixel_affine(self.dnn))
        target_x = ((x - shift) / scale).flatten(1).double()
        start = ((base - shift) / scale).flatten(1).double()
        scale, shift = scale.expand_as(x[:1]).flatten(1), shift.expand_as(x[:1]).flatten(1)
        cur, attr = start.clone(), torch.zeros_like(start)
        # on the CPU, blocks of rows below torch's parallel grain size (32768 elements):
        # the ~20 small elementwise ops per iteration then run without a thread barrier
        # each (on a busy machine a barrier waits for a descheduled thread: 2 threads
        # were 5x slower than 1); one block on an accelerator
        block = len(x) if x.device.type != "cpu" else max(1, _GRAIN // target_x.shape[1])
        blocks = [slice(r, r + block) for r in range(0, len(x), block)]
        for step in range(self.steps):
            net_in = cur.to(x.dtype) * scale + shift       # as a pixel-space model function
            g_px = self.gradient(net_in.view_as(x), units)[0].flatten(1) * scale  # its grad
            for rows in blocks:
                new = self._step(step, cur[rows], start[rows], target_x[rows], g_px[rows])
                attr[rows] += (new - cur[rows]) * g_px[rows].double()  # g: fixed in a step
                cur[rows] = new
        return attr.view_as(x).to(x.dtype)

    def _step(self, step: int, cur: torch.Tensor, start: torch.Tensor, target_x: torch.Tensor,
              g_px: torch.Tensor) -> torch.Tensor:
        """One Guided IG step of rows at ``cur`` (``(B, F)`` float64 pixels) with pixel
        gradients ``g_px``: the new points."""
        diff = target_x - start
        alpha = (step + 1.0) / self.steps
        a_min, a_max = max(alpha - self.max_dist, 0.0), min(alpha + self.max_dist, 1.0)
        x_max = start + diff * a_max
        # features fallen behind the band jump to its lower edge; nothing falls behind
        # later in the step (features only move toward x_max), so this is done once
        moving = diff != 0
        where = torch.where(moving, (cur - start) / torch.where(moving, diff, 1.0), a_max)
        new = torch.where(where < a_min, start + diff * a_min, cur)
        l1 = (new - target_x).abs().sum(1)
        l1_target = diff.abs().sum(1) * (1.0 - alpha)
        active = ~torch.isclose(l1, l1_target, rtol=1e-9, atol=1e-9)
        g_abs = g_px.abs()  # the ranking in the passes' dtype: PAIR's exact values
        kth = int(np.floor(self.fraction * (diff.shape[1] - 1))) + 1  # quantile, 'lower'
        for _ in range(_GUIDED_MAX_ITER):
            if not bool(active.any()):  # one scalar per iteration: the loop's exit test
                return new
            # of the features not at the band's upper edge, those with the smallest |g|
            # (those at the edge, if chosen once all others are, have no room: no-op)
            g_sel = torch.where(new == x_max, torch.inf, g_abs)
            threshold = g_sel.kthvalue(kth, 1).values[:, None]
            chosen = (g_sel <= threshold) & active[:, None]
            gap = x_max - new
            room = torch.where(chosen, gap.abs(), 0.0).sum(1)
            gamma = torch.where(room > 0, (l1 - l1_target) / room.clamp_min(1e-300),
                                torch.inf)
            full = gamma > 1.0
            moved = torch.where(full[:, None], x_max,
                                torch.addcmul(new, gap, gamma.clamp(max=1.0)[:, None]))
            new = torch.where(chosen, moved, new)
            l1 = l1 - torch.where(full, room, 0.0)
            active &= full & ~torch.isclose(l1, l1_target, rtol=1e-9, atol=1e-9)
        log.warning("Guided IG step %d did not reach its L1 target in %d iterations",
                    step + 1, _GUIDED_MAX_ITER)
        return new
