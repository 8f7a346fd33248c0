"""XRAI: region attribution from Integrated Gradients and image segments.

Kapishnikov et al., 2019, "XRAI: Better attributions through regions". IG maps from a black
and a white baseline are averaged and reduced over channels by max; the image is cut into
Felzenszwalb segments at several scales; regions are then added greedily, each time the one
whose new pixels have the highest mean attribution. The map gives every pixel the gain of
the region that added it (PAIR's ``XRAI.GetMask``): higher is more important.

Segmentation depends on the image only, so its masks are kept in :data:`SEGMENT_CACHE`, a
bounded cache keyed by the image's content and the segmentation settings, shared by every
:class:`XRAI` object of the process: maps of other units, layers or networks of an image
already segmented skip the segmentation.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from skimage.segmentation import felzenszwalb
from skimage.transform import resize

from ..models import DNN
from .budget import Budget
from .engine import SaliencyImage
from .checks import check_number, no_to_layer
from .integrated import approximation, path_integral, pixel_affine
from .passes import sums_pass
from .target import Unit

log = logging.getLogger(__name__)

SEGMENT_SIZE = 224        # images are segmented at this size (PAIR), so scales mean the same
SEGMENT_SIGMA = 0.8       # Felzenszwalb pre-smoothing (PAIR)
SEGMENT_MIN_SIZE = 150    # smallest segment, in pixels at SEGMENT_SIZE (PAIR)
DILATION_AT_224 = 5       # mask dilation radius at 224 x 224 (PAIR)


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


def segment_masks(pixels: np.ndarray, scales: Sequence[float] = (50, 100, 150, 250, 500, 1200),
                  dilation_radius: Optional[int] = None) -> np.ndarray:
    """Felzenszwalb segments at several scales as dilated boolean masks (PAIR's recipe).

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(H, W, 3)`` float image. It is min-max scaled to -1..1 and resized to 224 x 224
        for segmentation (so ``scales`` and the minimum segment size, 150 px there, are
        relative to the image area), and the labels are resized back.
    scales : sequence of float
        Felzenszwalb ``scale`` values (sigma 0.8).
    dilation_radius : int or None
        Disk radius the masks are dilated by; None: 5 px at 224 x 224, scaled with the side.

    Returns
    -------
    numpy.ndarray
        ``(M, H, W)`` bool, non-empty masks: scale by scale, label by label.
    """
    h, w = pixels.shape[:2]
    lo, hi = float(pixels.min()), float(pixels.max())
    im = (pixels - lo) / (hi - lo) * 2.0 - 1.0 if hi > lo else np.zeros_like(pixels)
    im = resize(im, (SEGMENT_SIZE, SEGMENT_SIZE), order=3, mode="constant",
                preserve_range=True, anti_aliasing=True)
    masks = []
    for scale in scales:
        seg = felzenszwalb(im, scale=scale, sigma=SEGMENT_SIGMA, min_size=SEGMENT_MIN_SIZE)
        seg = resize(seg, (h, w), order=0, mode="constant", preserve_range=True,
                     anti_aliasing=False).astype(np.int64)
        masks.append(seg[None] == np.unique(seg)[:, None, None])
    stack = np.concatenate(masks)
    if dilation_radius is None:
        dilation_radius = int(round(DILATION_AT_224 * np.sqrt(h * w) / SEGMENT_SIZE))
    return _dilate(stack, dilation_radius) if dilation_radius > 0 else stack


def _dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of each mask by ``skimage.morphology.disk(radius)``: pixels within
    Euclidean distance ``radius`` of the mask, computed inside its bounding box + radius."""
    out = np.zeros_like(masks)
    h, w = masks.shape[1:]
    for m, o in zip(masks, out):   # one loop per region, never per pixel
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        y0, y1 = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, h)
        x0, x1 = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, w)
        o[y0:y1, x0:x1] = distance_transform_edt(~m[y0:y1, x0:x1]) <= radius
    return out


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


class SegmentCache:
    """Least-recently-used cache of :func:`segment_masks` results, bounded in bytes.

    Keys are a BLAKE2 digest of the image's pixels (shape, dtype and bytes: identical
    content hits whatever object holds it) with the segmentation settings (scales,
    dilation radius), so one entry serves every unit, layer and network explained on that
    image. Cached masks are read-only arrays.

    Parameters
    ----------
    max_bytes : int
        Total size of the masks kept (default 256 MiB; an image's masks take
        ``masks.nbytes``: about 0.3 MB per segment at 224 x 224); the least recently used
        entries are dropped beyond it, and a single result larger than it is not kept.

    Attributes
    ----------
    hits, misses : int
        Look-ups answered from the cache / that ran the segmentation.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = check_number("max_bytes", max_bytes, 0, None, False, integer=True)
        self._entries: "OrderedDict[Tuple[Any, ...], np.ndarray]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def masks(self, pixels: np.ndarray, scales: Sequence[float],
              dilation_radius: Optional[int]) -> np.ndarray:
        """:func:`segment_masks` of ``(H, W, 3)`` ``pixels``, from the cache when the same
        image was segmented with the same settings."""
        pixels = np.ascontiguousarray(pixels)
        digest = hashlib.blake2b(pixels.tobytes(), digest_size=20).hexdigest()
        key = (digest, pixels.shape, pixels.dtype.str, tuple(float(s) for s in scales),
               dilation_radius)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        masks = segment_masks(pixels, scales, dilation_radius)
        masks.flags.writeable = False
        with self._lock:
            if masks.nbytes <= self.max_bytes and key not in self._entries:
                self._entries[key] = masks
                self._bytes += masks.nbytes
            while self._bytes > self.max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1].nbytes
        return masks

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


#: The process-wide segmentation cache of :class:`XRAI` (see :class:`SegmentCache`):
#: ``SEGMENT_CACHE.max_bytes = 0`` turns caching off, ``SEGMENT_CACHE.clear()`` empties it.
SEGMENT_CACHE = SegmentCache()


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
                 memory_budget: Budget = None) -> None:
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
        if not isinstance(return_segments, bool):
            raise ValueError(f"`return_segments` must be True or False, got {return_segments!r}")
        self.steps, self.rows_per_map = int(steps), 2 * int(steps)
        self.segment_scales, self.dilation_radius = scales, dilation_radius
        self.return_segments = return_segments
        self.last_segments: List[Segments] = []

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """:meth:`SaliencyImage.check_input`, and one row of the two IG paths' summed
        passes within ``memory_budget``."""
        super().check_input(shape)
        self._check_budget(self._probe(shape), images=2, **sums_pass(self))

    def _prepare(self, image: Any, preprocessed: bool) -> Tuple[torch.Tensor, bool]:
        self.last_segments = []  # every call starts afresh
        return super()._prepare(image, preprocessed)

    def _masks(self, pixels: torch.Tensor) -> np.ndarray:
        """Segments of one ``(3, H, W)`` CPU image, through :data:`SEGMENT_CACHE`."""
        return SEGMENT_CACHE.masks(pixels.permute(1, 2, 0).numpy(), self.segment_scales,
                                   self.dilation_radius)

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
        pixels = ((x - shift) / scale).to("cpu", torch.float32)
        maps = []
        for i in range(n):
            heat, segments = rank_regions(attr_cpu[i], self._masks(pixels[i]),
                                          self.area_threshold, self.min_pixel_diff)
            maps.append(heat)
            if self.return_segments:
                self.last_segments.append(segments)
        return torch.from_numpy(np.stack(maps)).to(x.device)
