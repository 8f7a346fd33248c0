"""XRAI: region attribution from Integrated Gradients and image segments.

Kapishnikov et al., 2019, "XRAI: Better attributions through regions". IG maps from a black
and a white baseline are averaged and reduced over channels by max; the image is cut into
Felzenszwalb segments at several scales; regions are then added greedily, each time the one
whose new pixels have the highest mean attribution. The map gives every pixel the gain of
the region that added it (PAIR's ``XRAI.GetMask``): higher is more important.

Segmentation (:mod:`~dnnbrain.dnn.algo.segments`) depends on the image only, so its masks
are kept in :data:`SEGMENT_CACHE`, a bounded cache keyed by the image's content and the
segmentation settings, shared by every :class:`XRAI` object of the process: maps of other
units, layers or networks of an image already segmented skip the segmentation. A call
segments its images on a pool of threads (skimage releases the GIL), a block of images
ahead of their IG passes; on an accelerator the next block is segmented while the current
one's passes run.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..models import DNN
from .budget import Budget
from .engine import SaliencyImage
from .checks import check_number, no_to_layer
from .integrated import approximation, path_integral, pixel_affine
from .passes import sums_pass
from .segments import SEGMENT_CACHE, SegmentCache, SegmentJob, image_key, segment_masks
from .target import Unit

__all__ = ["XRAI", "Segments", "rank_regions", "segment_masks", "SegmentCache",
           "SEGMENT_CACHE"]
log = logging.getLogger(__name__)
#: Images segmented ahead of their IG passes per segmentation worker thread.
IMAGES_PER_WORKER = 2


class Segments(NamedTuple):
    """XRAI regions of one map, most important first.

    Attributes
    ----------
    ranks : numpy.ndarray
        ``(H, W)`` int32: 1 for the pixels of the most important region, 2 for the next...
    gains : numpy.ndarray
        ``(K,)`` float32: mean attribution of each region's new pixels, by rank.
    remainder : bool
        The last region is what no candidate covered (PAIR ranks it last, whatever its
        mean); the others are in decreasing order of gain.
    """

    ranks: np.ndarray
    gains: np.ndarray
    remainder: bool


def rank_regions(attr: np.ndarray, masks: np.ndarray, area_threshold: float = 1.0,
                 min_pixel_diff: int = 50) -> Tuple[np.ndarray, Segments]:
    """XRAI's greedy region ranking (PAIR's 'full' algorithm) on one attribution map.

    Parameters
    ----------
    attr : numpy.ndarray
        ``(H, W)`` attribution.
    masks : numpy.ndarray
        ``(M, H, W)`` bool candidate regions (may overlap).
    area_threshold : float
        Stop once this fraction of the image is covered; the rest is one last region.
    min_pixel_diff : int
        Drop a candidate once it would add fewer new pixels than this.

    Returns
    -------
    heat : numpy.ndarray
        ``(H, W)`` float32: each pixel holds the gain (mean attribution of the new pixels)
        of the region that added it; uncovered pixels their own mean.
    segments : Segments
        The regions by rank.
    """
    a = attr.astype(np.float64).ravel()
    flat = masks.reshape(len(masks), -1)
    cols = np.ascontiguousarray(flat.T)          # (HW, M): pixel -> masks holding it
    count = flat.sum(1).astype(np.int64)         # new pixels each mask would add
    total = flat.astype(np.float64) @ a          # their attribution sum
    alive = np.ones(len(masks), dtype=bool)
    covered = np.zeros(a.size, dtype=bool)
    heat = np.full(a.size, -np.inf)
    trace: List[Tuple[np.ndarray, float]] = []
    n_covered = 0
    while n_covered / a.size <= area_threshold:
        alive &= count >= min_pixel_diff
        if not alive.any():
            break
        gain = np.where(alive, total / np.maximum(count, 1), -np.inf)
        best = int(np.argmax(gain))              # first of ties, as PAIR
        idx = np.flatnonzero(flat[best] & ~covered)
        heat[idx] = gain[best]
        trace.append((idx, float(gain[best])))
        covered[idx] = True
        n_covered += len(idx)
        alive[best] = False
        inside = cols[idx]                       # only the new pixels change the counts
        count -= inside.sum(0)
        total -= a[idx] @ inside
    ranks = np.zeros(a.size, dtype=np.int32)
    gains = []
    for rank, (idx, gain) in enumerate(sorted(trace, key=lambda t: -t[1]), start=1):
        ranks[idx] = rank
        gains.append(gain)
    remainder = not covered.all()
    if remainder:
        rest = float(a[~covered].mean())
        heat[~covered], ranks[~covered] = rest, len(gains) + 1
        gains.append(rest)
    shape = attr.shape
    return (heat.reshape(shape).astype(np.float32),
            Segments(ranks.reshape(shape), np.asarray(gains, dtype=np.float32), remainder))


class XRAI(SaliencyImage):
    """XRAI (Kapishnikov et al., 2019, "XRAI: Better attributions through regions").

    Parameters
    ----------
    dnn, from_layer, from_chn, batch_size, memory_budget
        As :class:`SaliencyImage`.
    steps : int
        IG steps per baseline (trapezoid rule); cost ``2 * steps`` forward + backward rows
        per map, plus one segmentation per image on the CPU (cached across calls and
        objects: :data:`SEGMENT_CACHE`).
    area_threshold : float
        Fraction of the image (0..1) ranked region by region; the rest is one region.
    min_pixel_diff : int
        Candidates adding fewer new pixels than this are dropped (PAIR: 50).
    segment_scales : sequence of float
        Felzenszwalb scales (PAIR's values), see :func:`segment_masks`.
    dilation_radius : int or None
        Mask dilation in pixels; None scales PAIR's 5 px at 224 x 224 with the image side.
    return_segments : bool
        Keep each map's :class:`Segments` in :attr:`last_segments`.
    segment_workers : int or None
        Threads that segment a call's images, ``(image, scale)`` pieces in parallel (the
        masks are the same as one by one); None: ``torch.get_num_threads()`` at call time.
        With more than one, or on an accelerator, a call segments its images a block of
        :data:`IMAGES_PER_WORKER` per worker ahead of their IG passes (on an accelerator,
        the next block while the current one's passes run), holding those blocks' masks.

    Attributes
    ----------
    last_segments : list of Segments
        With ``return_segments``: one per map of the last call, in output order (image,
        then unit).

    Notes
    -----
    ``backprop`` returns ``(H, W)`` float32 per image and unit; ``to_layer`` must be None.
    """

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, steps: int = 50,
                 area_threshold: float = 1.0,
                 min_pixel_diff: int = 50,
                 segment_scales: Sequence[float] = (50, 100, 150, 250, 500, 1200),
                 dilation_radius: Optional[int] = None, return_segments: bool = False,
                 segment_workers: Optional[int] = None, memory_budget: Budget = None) -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        self.alphas, self.weights = approximation("riemann_trapezoid", steps)
        self.area_threshold = check_number("area_threshold", area_threshold, 0, 1, False)
        self.min_pixel_diff = check_number("min_pixel_diff", min_pixel_diff, 1, None, False,
                                           integer=True)
        if dilation_radius is not None:
            dilation_radius = check_number("dilation_radius", dilation_radius, 0, None, False,
                                           integer=True)
        scales = (tuple(segment_scales) if isinstance(segment_scales, (list, tuple, np.ndarray))
                  else ())
        if not scales or not all(isinstance(s, (int, float, np.number)) and not
                                 isinstance(s, bool) and s > 0 for s in scales):
            raise ValueError("`segment_scales` must be a non-empty sequence of numbers > 0, "
                             f"got {segment_scales!r}")
        if segment_workers is not None:
            segment_workers = check_number("segment_workers", segment_workers, 1, None,
                                           False, integer=True)
        if not isinstance(return_segments, bool):
            raise ValueError(f"`return_segments` must be True or False, got {return_segments!r}")
        self.steps, self.rows_per_map = int(steps), 2 * int(steps)
        self.segment_scales, self.dilation_radius = scales, dilation_radius
        self.return_segments, self.segment_workers = return_segments, segment_workers
        self.last_segments: List[Segments] = []
        self._job: Optional[SegmentJob] = None   # this call's block, segmented ahead

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """:meth:`SaliencyImage.check_input`, and one row of the two IG paths' summed
        passes within ``memory_budget``."""
        super().check_input(shape)
        self._check_budget(self._probe(shape), images=2, **sums_pass(self))

    def _prepare(self, image: Any, preprocessed: bool) -> Tuple[torch.Tensor, bool]:
        self.last_segments = []  # every call starts afresh
        return super()._prepare(image, preprocessed)

    def _pixels(self, x: torch.Tensor) -> List[np.ndarray]:
        """``(H, W, 3)`` float32 CPU pixels of each preprocessed image of ``x``."""
        scale, shift = (t.to(x) for t in pixel_affine(self.dnn))
        pixels = ((x - shift) / scale).to("cpu", torch.float32)
        return [p.permute(1, 2, 0).numpy() for p in pixels]

    def _masks(self, pixels: np.ndarray) -> np.ndarray:
        """Segments of one ``(H, W, 3)`` image: segmented ahead by :meth:`_run`, or through
        :data:`SEGMENT_CACHE`."""
        if self._job is not None:   # waits for the block's segmentation to finish
            ready = self._job.result().get(image_key(pixels, self.segment_scales,
                                                     self.dilation_radius))
            if ready is not None:
                return ready
        return SEGMENT_CACHE.masks(pixels, self.segment_scales, self.dilation_radius)

    def _overlap(self, x: torch.Tensor) -> bool:
        """Segment the next block while this one's passes run: when they run elsewhere than
        on the CPU threads that segment."""
        return x.device.type != "cpu"

    def _run(self, x: torch.Tensor, fn, rows_factor: int = 1,
             net_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`SaliencyImage._run` a block of images at a time, each block segmented on
        a thread pool: before its passes on the CPU (the pool and the passes share its
        threads); on an accelerator while they run, and the next block's while they run."""
        workers = self.segment_workers or max(1, torch.get_num_threads())
        background = self._overlap(x)
        if rows_factor != 1 or net_input is not None or (workers == 1 and not background):
            return super()._run(x, fn, rows_factor, net_input)  # SmoothGrad: noisy copies
        block, outs, resolved = IMAGES_PER_WORKER * workers, [], []

        def start(b0: int):
            xb = x[b0:b0 + block]
            return SEGMENT_CACHE.start(self._pixels(xb), self.segment_scales,
                                       self.dilation_radius, pool) if len(xb) else None
        pool = ThreadPoolExecutor(workers, thread_name_prefix="xrai-segments")
        try:
            job = start(0)
            for b0 in range(0, len(x), block):
                if not background:
                    job.result()
                ahead = start(b0 + block) if background else None
                self._job = job
                outs.append(super()._run(x[b0:b0 + block], fn))
                resolved += self.resolved_units
                job = ahead if background else start(b0 + block)
        finally:
            self._job = None
            pool.shutdown(wait=True, cancel_futures=True)
        self.resolved_units = resolved
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, "XRAI")
        units = self.fixed_units(x, units)
        n = len(x)
        scale, shift = (t.to(x) for t in pixel_affine(self.dnn))
        both = torch.cat([x, x])
        bases = torch.cat([shift.expand_as(x), (scale + shift).expand_as(x)])
        grads = path_integral(self, both, bases, units + units, self.alphas, self.weights)
        attr = ((both - bases) * grads).unflatten(0, (2, n)).mean(0).amax(1)
        attr_cpu = attr.to("cpu", torch.float64).numpy()     # one copy per chunk
        pixels = self._pixels(x)
        maps = []
        for i in range(n):
            heat, segments = rank_regions(attr_cpu[i], self._masks(pixels[i]),
                                          self.area_threshold, self.min_pixel_diff)
            maps.append(heat)
            if self.return_segments:
                self.last_segments.append(segments)
        return torch.from_numpy(np.stack(maps)).to(x.device)
