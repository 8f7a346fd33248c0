"""Writing a work item's files (npy, png, overlay, nifti) and then its completion marker,
and the gallery's stimulus pictures of each batch, in background threads so that the next
item computes meanwhile."""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from .. import viz
from ..io.encode import npy_bytes, png_bytes
from ..io.maps import save_bytes, save_nifti, save_png
from .gallery import write_network_views
from .pictures import heatmaps, overlays, stimulus_pixels
from .plan import WorkItem
from .store import write_marker

log = logging.getLogger(__name__)
#: Maps whose pictures are made in one go (bounds the memory of a stack).
PICTURE_STACK = 16


def nifti_description(row: Mapping[str, str]) -> str:
    """NIfTI ``descrip`` of a map: method, layer, unit (and the request), reduction."""
    unit = row["unit"] + (" (predicted)" if row["requested_unit"] == "predicted" else "")
    return f"{row['method']} {row['layer']} unit {unit} {row['reduce']}"


def write_maps(out: Path, outputs: Mapping[str, Any], transform: Any,
               rows: Sequence[Mapping[str, str]], maps: np.ndarray, images: torch.Tensor,
               which: Optional[range] = None) -> None:
    """Write the files of the maps ``rows[r]`` for ``r`` in ``which`` (default all).

    Parameters
    ----------
    out : pathlib.Path
        The output folder.
    outputs : mapping
        The resolved ``outputs`` section (``save``, ``colormap``, ``percentile``, ``alpha``).
    transform : ImageTransform
        ``dnn.test_transform``, to show overlays on the image as the network saw it.
    rows : sequence of mapping
        An item's manifest rows, stimulus-major then unit: row ``i * U + j`` is
        ``maps[i, j]``; the file columns name the files.
    maps : numpy.ndarray
        ``(B, U, ...)`` float32 maps.
    images : torch.Tensor
        ``(B, 3, H, W)`` network input on the CPU.
    which : range or None
        The rows to write.
    """
    which = range(len(rows)) if which is None else which
    for lo in range(0, len(which), PICTURE_STACK):
        _write_stack(out, outputs, transform, rows, maps, images, which[lo:lo + PICTURE_STACK])


def _write_stack(out: Path, outputs: Mapping[str, Any], transform: Any,
                 rows: Sequence[Mapping[str, str]], maps: np.ndarray, images: torch.Tensor,
                 which: range) -> None:
    """:func:`write_maps` for a few rows: their pictures are made in one go."""
    save, cmap, pct = outputs["save"], outputs["colormap"], outputs["percentile"]
    red = outputs.get("reduce", "sumabs")
    at = [divmod(r, maps.shape[1]) for r in which]
    stack = np.stack([maps[i, j] for i, j in at])
    pngs = heatmaps(stack, cmap, pct, red) if "png" in save else None
    over = None
    if "overlay" in save and stack.shape[-2:] == tuple(images.shape[-2:]):
        pix = stimulus_pixels(images[[i for i, _ in at]], transform)
        over = overlays(pix, stack, outputs["alpha"], cmap, pct, red)
    for folder in {os.path.dirname(os.path.join(out, rows[r][kind])) for r in which
                   for kind in save}:
        os.makedirs(folder, exist_ok=True)  # once per folder, not per file
    for k, r in enumerate(which):
        row, m = rows[r], stack[k]
        for kind in save:
            path = out / row[kind]
            if kind == "npy":  # what save_npy / save_png write, without their checks
                save_bytes(path, npy_bytes(m), make_dirs=False)
            elif kind == "png":
                save_bytes(path, png_bytes(pngs[k]), make_dirs=False)
            elif kind == "overlay":
                save_png(path, over[k] if over is not None else viz.overlay(
                    images[at[k][0]], m, outputs["alpha"], cmap, pct, transform,
                    reduce=red))
            else:
                save_nifti(path, m, nifti_description(row))


def write_item(out: Path, outputs: Mapping[str, Any], transform: Any, item: WorkItem,
               rows: Sequence[Mapping[str, str]], maps: np.ndarray,
               images: torch.Tensor) -> None:
    """Write every file of ``item`` (see :func:`write_maps`), then its marker."""
    write_maps(out, outputs, transform, rows, maps, images)
    write_marker(out, item, rows)


class MapWriter:
    """A bounded pool of writer threads.

    Parameters
    ----------
    out : pathlib.Path
        The output folder.
    outputs : mapping
        The resolved ``outputs`` section.
    transform : ImageTransform
        The network's ``test_transform``.
    workers : int
        Writer threads (0: write in the calling thread).
    max_pending : int
        Chunks (an item is split into one chunk per thread) queued or being written
        before :meth:`submit` blocks; this bounds the maps held in memory.
    """

    def __init__(self, out: Path, outputs: Mapping[str, Any], transform: Any,
                 workers: int = 2, max_pending: int = 8) -> None:
        self.out, self.outputs, self.transform = out, outputs, transform
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, "dnnbrain-writer") if workers > 0 else None
        self._slots = threading.BoundedSemaphore(max(1, max_pending, workers))
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        #: Seconds spent writing files and markers, summed over the writer threads (it
        #: may exceed the wall time when they write side by side).
        self.seconds = 0.0
        viz.heatmap(np.zeros((2, 2), np.float32), outputs["colormap"])  # colormap ready

    def _done(self, fut: Future) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None and self._error is None:
            self._error = fut.exception()

    def check(self) -> None:
        """Re-raise the first error of a writer thread, if any."""
        if self._error is not None:
            raise self._error

    def _timed(self, fn: Any, *args: Any) -> None:
        """``fn(*args)``, its seconds added to :attr:`seconds`."""
        tic = time.perf_counter()
        fn(*args)
        with self._lock:
            self.seconds += time.perf_counter() - tic

    def _queue(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in a writer thread (in this one without threads), timed;
        blocks while ``max_pending`` jobs are in flight."""
        if self._pool is None:
            self._timed(fn, *args)
            return
        self._slots.acquire()
        self._pool.submit(self._timed, fn, *args).add_done_callback(self._done)

    def _chunk(self, item: WorkItem, rows: Sequence[Mapping[str, str]], maps: np.ndarray,
               images: torch.Tensor, which: range, state: dict) -> None:
        """Write some of an item's maps; the last chunk to finish writes the marker."""
        try:
            write_maps(self.out, self.outputs, self.transform, rows, maps, images, which)
        except BaseException:
            with self._lock:
                state["failed"] = True
            raise
        with self._lock:
            state["left"] -= 1
            last = state["left"] == 0 and not state["failed"]
        if last:
            write_marker(self.out, item, rows)

    def submit_views(self, ids: Sequence[str], images: torch.Tensor) -> None:
        """Queue the gallery's pictures of a stimulus batch
        (:func:`~dnnbrain.batch.gallery.write_network_views`)."""
        self.check()
        self._queue(write_network_views, self.out, ids, images, self.transform)

    def submit(self, item: WorkItem, rows: Sequence[Mapping[str, str]], maps: np.ndarray,
               images: torch.Tensor) -> None:
        """Queue ``item``'s files, split over the threads, then its marker (blocks while
        ``max_pending`` chunks are in flight)."""
        self.check()
        if self._pool is None:
            self._timed(write_item, self.out, self.outputs, self.transform, item, rows,
                        maps, images)
            return
        k = max(1, min(self.workers, len(rows)))
        bounds = [len(rows) * c // k for c in range(k + 1)]
        state = {"left": k, "failed": False}
        for c in range(k):
            self._queue(self._chunk, item, rows, maps, images,
                        range(bounds[c], bounds[c + 1]), state)

    def close(self, cancel: bool = False) -> None:
        """Wait for the queued writes (drop those not started with ``cancel``), then
        re-raise the first writer error."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None
        if not cancel:
            self.check()
