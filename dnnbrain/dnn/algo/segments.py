"""XRAI's image segmentation: Felzenszwalb segments at several scales as dilated masks,
cached per image, and run for many images at once on a pool of threads.

Segmentation is PAIR's recipe (``saliency.core.XRAI``): the image is min-max scaled to
-1..1 and resized to 224 x 224, segmented at each scale, and the labels are resized back.
skimage's resize and Felzenszwalb run in compiled code that releases the GIL, so the
``(image, scale)`` pieces of a batch run in parallel on threads (:class:`SegmentJob`);
every piece is the same computation as in the serial path, so the masks are identical.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import Executor, Future
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.segmentation import felzenszwalb
from skimage.transform import resize

from .checks import check_number

SEGMENT_SIZE = 224        # images are segmented at this size (PAIR), so scales mean the same
SEGMENT_SIGMA = 0.8       # Felzenszwalb pre-smoothing (PAIR)
SEGMENT_MIN_SIZE = 150    # smallest segment, in pixels at SEGMENT_SIZE (PAIR)
DILATION_AT_224 = 5       # mask dilation radius at 224 x 224 (PAIR)
Key = Tuple[Any, ...]


def _upsampled(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` pixels min-max scaled to -1..1 and resized to the segmentation size."""
    lo, hi = float(pixels.min()), float(pixels.max())
    im = (pixels - lo) / (hi - lo) * 2.0 - 1.0 if hi > lo else np.zeros_like(pixels)
    return resize(im, (SEGMENT_SIZE, SEGMENT_SIZE), order=3, mode="constant",
                  preserve_range=True, anti_aliasing=True)


def _radius(shape: Tuple[int, ...], dilation_radius: Optional[int]) -> int:
    h, w = shape[:2]
    if dilation_radius is None:
        return int(round(DILATION_AT_224 * np.sqrt(h * w) / SEGMENT_SIZE))
    return dilation_radius


def _scale_masks(im: np.ndarray, scale: float, shape: Tuple[int, int],
                 radius: int) -> np.ndarray:
    """The dilated masks of one scale's segments of the upsampled image ``im``."""
    seg = felzenszwalb(im, scale=scale, sigma=SEGMENT_SIGMA, min_size=SEGMENT_MIN_SIZE)
    seg = resize(seg, shape, order=0, mode="constant", preserve_range=True,
                 anti_aliasing=False).astype(np.int64)
    masks = seg[None] == np.unique(seg)[:, None, None]
    return _dilate(masks, radius) if radius > 0 else masks


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
    im, radius = _upsampled(pixels), _radius(pixels.shape, dilation_radius)
    return np.concatenate([_scale_masks(im, s, pixels.shape[:2], radius) for s in scales])


def image_key(pixels: np.ndarray, scales: Sequence[float],
              dilation_radius: Optional[int]) -> Key:
    """The cache key of ``(H, W, 3)`` pixels: a BLAKE2 digest of their bytes, their shape
    and dtype, and the segmentation settings."""
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.blake2b(pixels.tobytes(), digest_size=20).hexdigest()
    return (digest, pixels.shape, pixels.dtype.str, tuple(float(s) for s in scales),
            dilation_radius)


class SegmentJob:
    """The segmentation of a list of images, started at once and collected with
    :meth:`result` (from :meth:`SegmentCache.start`).

    Without a pool every image is segmented now, in the calling thread (one
    :func:`segment_masks` each). With one, each image is upsampled and each of its scales
    segmented as separate tasks on the pool, and :meth:`result` waits for them: the work
    overlaps whatever the caller does meanwhile (an accelerator's IG passes).
    """

    def __init__(self, cache: "SegmentCache", images: Sequence[np.ndarray],
                 scales: Sequence[float], dilation_radius: Optional[int],
                 pool: Optional[Executor]) -> None:
        self.keys = [image_key(p, scales, dilation_radius) for p in images]
        self._cache, self._done = cache, {}
        found: Dict[Key, np.ndarray] = {}
        todo: Dict[Key, np.ndarray] = {}
        for key, pixels in zip(self.keys, images):
            if key in found or key in todo:
                cache.count(hit=True)      # a repeat within the job: segmented once
                continue
            hit = cache.lookup(key)
            if hit is not None:
                found[key] = hit
            else:
                todo[key] = pixels
        self._found = found
        self._pending: Dict[Key, List[Future]] = {}
        if pool is None:
            for key, pixels in todo.items():
                self._done[key] = segment_masks(pixels, scales, dilation_radius)
            return
        # every resize first (FIFO: each is taken before its scales, and the workers do
        # not wait on one resize at a time), then the (image, scale) pieces
        ups = {key: pool.submit(_upsampled, pixels) for key, pixels in todo.items()}
        for key, pixels in todo.items():
            radius = _radius(pixels.shape, dilation_radius)
            self._pending[key] = [pool.submit(_from_upsampled, ups[key], s, pixels.shape[:2],
                                              radius) for s in scales]

    def result(self) -> Dict[Key, np.ndarray]:
        """``{key: masks}`` for every image of the job (read-only arrays), once ready;
        new masks go into the cache."""
        for key, parts in self._pending.items():
            self._done[key] = np.concatenate([f.result() for f in parts])
        self._pending = {}
        for key, masks in self._done.items():
            self._found[key] = self._cache.store(key, masks)
        self._done = {}
        return self._found


def _from_upsampled(up: "Future[np.ndarray]", scale: float, shape: Tuple[int, int],
                    radius: int) -> np.ndarray:
    # ``up`` was submitted before this task, so a worker has taken it already: waiting
    # here cannot starve the pool
    return _scale_masks(up.result(), scale, shape, radius)


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
        Look-ups answered from the cache (or by a repeat of the image in the same batch) /
        that ran the segmentation.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = check_number("max_bytes", max_bytes, 0, None, False, integer=True)
        self._entries: "OrderedDict[Key, np.ndarray]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def masks(self, pixels: np.ndarray, scales: Sequence[float],
              dilation_radius: Optional[int]) -> np.ndarray:
        """:func:`segment_masks` of ``(H, W, 3)`` ``pixels``, from the cache when the same
        image was segmented with the same settings."""
        job = self.start([pixels], scales, dilation_radius)
        return job.result()[job.keys[0]]

    def start(self, images: Sequence[np.ndarray], scales: Sequence[float],
              dilation_radius: Optional[int], pool: Optional[Executor] = None) -> SegmentJob:
        """Look every ``(H, W, 3)`` image up and start segmenting the others (on ``pool``'s
        threads when given); :meth:`SegmentJob.result` returns all their masks."""
        return SegmentJob(self, images, scales, dilation_radius, pool)

    def count(self, hit: bool) -> None:
        """Count one look-up answered without segmenting (``hit``) or not."""
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def lookup(self, key: Key) -> Optional[np.ndarray]:
        """The masks stored under ``key`` (now the most recently used), or None; counted."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return hit

    def store(self, key: Key, masks: np.ndarray) -> np.ndarray:
        """Keep ``masks`` (made read-only) under ``key`` within ``max_bytes``; returns them."""
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


#: The process-wide segmentation cache of :class:`~dnnbrain.dnn.algo.xrai.XRAI` (see
#: :class:`SegmentCache`): ``SEGMENT_CACHE.max_bytes = 0`` turns caching off,
#: ``SEGMENT_CACHE.clear()`` empties it.
SEGMENT_CACHE = SegmentCache()
