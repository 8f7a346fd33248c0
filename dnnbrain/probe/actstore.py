"""An activation store on disk: one ``.npy`` per layer, a manifest, resumable, shardable.

Folder layout::

    OUT/manifest.json             stimulus ids in order, layer shapes, dtype, pooling,
                                  units, batch size, the network's fingerprint, done rows
    OUT/<layer>.npy               float32 (N, ...), opened as a memory map
    OUT/.progress/part<k>of<n>.json   rows each process has finished (small, atomic)

Rows are written in place into the memory-mapped files, ``msync``-ed (``sync=True``), and
only then marked done in the process's own progress file (written atomically), so a run
killed at any moment leaves only finished rows marked; a resume recomputes the others,
batch by batch exactly as before, and the files come out byte-identical to an
uninterrupted run. Shard ``k`` of ``n`` (``'k/n'``, or from torchrun or SLURM, read as
the batch runner reads them: :func:`dnnbrain.batch.launch.parse_shard`) computes batches
``k, k + n, ...``; runs and shards are locked as the batch runner's
(:func:`dnnbrain.batch.lock.run_lock`), and creating and finalising the store happen
under an exclusive lock on the folder (:func:`dnnbrain.batch.lock.folder_lock`). The last
process to finish writes the manifest with every row done and ``complete: true``.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union

import numpy as np
import torch

from ..batch.lock import RunLockedError, folder_lock, run_lock
from ..batch.launch import parse_shard
from ..dnn.fingerprint import fingerprint
from ..io.maps import atomic_path, atomic_write

__all__ = ["FORMAT", "MANIFEST_NAME", "ActivationStore", "open_activations", "write_store",
           "export_h5"]

FORMAT = "dnnbrain.activations/1"
MANIFEST_NAME = "manifest.json"
PROGRESS_DIR = ".progress"
Ranges = List[List[int]]


def _merge(ranges: List[List[int]]) -> Ranges:
    """Sorted, merged ``[start, stop)`` row ranges."""
    out: Ranges = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([int(a), int(b)])
    return out


def _covered(ranges: Ranges, a: int, b: int) -> bool:
    return any(s <= a and b <= e for s, e in ranges)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"activation store file '{path}' cannot be read ({err}); remove the "
                         "folder or pass force") from None


def _write_json(path: Path, data: Mapping) -> None:
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _progress_files(out: Path) -> List[Path]:
    d = out / PROGRESS_DIR
    return sorted(d.glob("part*of*.json")) if d.is_dir() else []


def done_rows(out: Path, manifest: Mapping) -> Ranges:
    """Rows done: the manifest's plus every progress file's with the same digest."""
    ranges = [list(r) for r in manifest.get("done", [])]
    for f in _progress_files(out):
        part = _read_json(f)
        if part.get("digest") == manifest["digest"]:
            ranges += [list(r) for r in part.get("done", [])]
    return _merge(ranges)


def _header(ext: Any) -> Dict[str, Any]:
    """Everything the stored rows depend on (the manifest without its progress)."""
    shapes = ext.shapes()
    src = ext.source
    data_digest = None
    if isinstance(src.items, (np.ndarray, torch.Tensor)):
        arr = src.items.detach().cpu().numpy() if isinstance(src.items, torch.Tensor) \
            else np.asarray(src.items)
        data_digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    layers = {}
    for s in ext.specs:
        if "/" in s.key or "\\" in s.key or s.key.startswith("."):
            raise ValueError(f"`layers` {s.key!r} cannot name a file (no '/', '\\' or leading"
                             " '.')")
        layers[s.key] = {"file": f"{s.key}.npy", "shape": [ext.n, *shapes[s.key]],
                         "dtype": "float32", "layer": s.layer, "call": s.call,
                         "units": None if s.units is None else [list(u) if isinstance(u, tuple)
                                                                else u for u in s.units]}
    head = {"format": FORMAT,
            "network": {"name": ext.dnn.name, "fingerprint": fingerprint(ext.dnn.model)},
            "stimuli": list(src.ids), "n_stimuli": ext.n, "layers": layers,
            "pool": ext.pool, "batch_size": ext.batch_size,
            "input": {"transform": repr(src.transform), "preprocessed": src.preprocessed,
                      "data_sha256": data_digest}}
    head["digest"] = hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()
    return head


def _differs(old: Mapping, new: Mapping) -> List[str]:
    keys = [k for k in new if k not in ("digest", "done", "complete")]
    return [k for k in keys if old.get(k) != new.get(k)]


def _ours(name: str) -> bool:
    return name.startswith(".lock") or name == PROGRESS_DIR or name.startswith(".")


def _reset(out: Path, old: Mapping) -> None:
    for spec in old.get("layers", {}).values():
        (out / spec["file"]).unlink(missing_ok=True)
    shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)


def _create(out: Path, head: Dict[str, Any], force: bool) -> Dict[str, Any]:
    """Open the store at ``out`` for ``head`` (creating it, or checking it matches); runs
    under the folder lock."""
    path = out / MANIFEST_NAME
    if path.is_file():
        old = _read_json(path)
        diff = _differs(old, head) if old.get("format") == FORMAT else ["format"]
        if diff and not force:
            raise FileExistsError(f"`out` '{out}' holds activations made with other settings "
                                  f"(differing: {diff}); pass force (-force) to replace them,"
                                  " or choose another folder")
        if diff:
            _reset(out, old)
        else:
            manifest = old
    elif any(not _ours(f.name) for f in out.iterdir()) and not force:
        raise FileExistsError(f"`out` '{out}' is not empty and holds no activation store "
                              f"({MANIFEST_NAME}); pass force (-force) to write into it, or "
                              "choose an empty folder")
    if not path.is_file():
        manifest = dict(head, done=[], complete=False)
        _write_json(path, manifest)  # first: a run killed from here on is resumable
    for key, spec in manifest["layers"].items():
        f = out / spec["file"]
        ok = False
        if f.is_file():
            try:
                arr = np.load(f, mmap_mode="r")
                ok = list(arr.shape) == spec["shape"] and arr.dtype == np.float32
                del arr
            except (OSError, ValueError):
                ok = False
        if not ok:
            if done_rows(out, manifest):  # the rows it held are lost: compute them again
                shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
                manifest = dict(manifest, done=[], complete=False)
                _write_json(path, manifest)
            with atomic_path(f) as tmp:
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                          shape=tuple(spec["shape"])).flush()
    return manifest


def _sync_rows(mm: np.memmap, a: int, b: int) -> None:
    """``msync`` the bytes of rows ``[a, b)`` of a memory-mapped ``.npy``."""
    row = int(np.prod(mm.shape[1:], dtype=np.int64)) * mm.itemsize
    base = mm.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts in the mapping
    lo = base + a * row
    hi = base + b * row
    lo -= lo % mmap.PAGESIZE
    if hi > lo:
        mm._mmap.flush(lo, hi - lo)


def _finalise(out: Path) -> Dict[str, Any]:
    """Merge the progress into the manifest; mark it complete when every row is done."""
    path = out / MANIFEST_NAME
    manifest = _read_json(path)
    done = done_rows(out, manifest)
    complete = done == [[0, manifest["n_stimuli"]]]
    if done != manifest.get("done") or complete != manifest.get("complete"):
        manifest = dict(manifest, done=done, complete=complete)
        _write_json(path, manifest)
    if complete:
        shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    return manifest


def write_store(ext: Any, out: Union[str, os.PathLike], shard: Any = None,
                force: bool = False, sync: bool = True, progress: bool = False
                ) -> "ActivationStore":
    """Compute ``ext``'s rows that are not done yet (this shard's) into the store ``out``.

    Parameters
    ----------
    ext : dnnbrain.probe.activations.Extraction
        The checked extraction.
    out : str or os.PathLike
        The store's folder (created if missing).
    shard : 'k/n', (k, n) or None
        See :func:`dnnbrain.batch.launch.parse_shard` (None: torchrun's or SLURM's
        variables, else all).
    force : bool
        Replace a store made with other settings, or write into a folder with other files.
    sync : bool
        ``msync`` each batch's rows before marking them done.
    progress : bool
        A tqdm progress bar.

    Returns
    -------
    ActivationStore
        The store (``complete`` once every shard has finished).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"`out` '{out}' is a file, not a folder")
    sh = parse_shard(shard)
    head = _header(ext)
    try:
        with run_lock(out, sh):
            with folder_lock(out):
                manifest = _create(out, head, force)
            k, n = sh or (0, 1)
            mine_path = out / PROGRESS_DIR / f"part{k}of{n}.json"
            mine = _read_json(mine_path).get("done", []) if mine_path.is_file() else []
            if mine and _read_json(mine_path).get("digest") != manifest["digest"]:
                mine = []
            done = done_rows(out, manifest)
            todo = [b for b in range(k, ext.n_batches, n) if not _covered(done, *ext.rows(b))]
            if todo:
                files = {key: np.load(out / spec["file"], mmap_mode="r+")
                         for key, spec in manifest["layers"].items()}
                try:
                    for start, acts in ext.stream(todo, progress):
                        stop = start + len(next(iter(acts.values())))
                        for key, t in acts.items():
                            files[key][start:stop] = t.cpu().numpy()
                            if sync:
                                _sync_rows(files[key], start, stop)
                        mine = _merge(mine + [[start, stop]])
                        _write_json(mine_path, {"digest": manifest["digest"], "done": mine})
                finally:
                    files.clear()
            with folder_lock(out):
                _finalise(out)
    except RunLockedError:
        raise RunLockedError(f"`out` '{out}' is in use: another activation run (or the same "
                             "shard) holds it; wait for it to finish or choose another "
                             "folder") from None
    return ActivationStore(out)


class ActivationStore(Mapping):
    """A store on disk, read lazily: ``store[layer]`` is a read-only memory map.

    Parameters
    ----------
    out : str or os.PathLike
        The store's folder.

    Attributes
    ----------
    manifest : dict
        ``manifest.json`` as read.
    ids : list of str
        Stimulus ids, in row order.
    complete : bool
        Every row is done.
    done : list of [start, stop)
        Rows done (with the progress of shards still running).

    Examples
    --------
    >>> store = open_activations('acts/')                  # doctest: +SKIP
    >>> store['conv5'][:10].mean()                         # reads 10 rows only
    """

    def __init__(self, out: Union[str, os.PathLike]) -> None:
        self.out = Path(out)
        path = self.out / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"`out` '{self.out}' holds no activation store (no "
                                    f"{MANIFEST_NAME})")
        self.manifest = _read_json(path)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"'{path}' is not a {FORMAT} manifest")
        self.ids: List[str] = list(self.manifest["stimuli"])
        self.done = done_rows(self.out, self.manifest)
        self.complete = self.done == [[0, self.manifest["n_stimuli"]]]
        self._maps: Dict[str, np.memmap] = {}

    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """``{layer: (N, ...)}``."""
        return {k: tuple(v["shape"]) for k, v in self.manifest["layers"].items()}

    def __getitem__(self, layer: str) -> np.memmap:
        if layer not in self.manifest["layers"]:
            raise KeyError(f"layer {layer!r} is not in the store; it holds "
                           f"{list(self.manifest['layers'])}")
        if layer not in self._maps:
            self._maps[layer] = np.load(self.out / self.manifest["layers"][layer]["file"],
                                        mmap_mode="r")
        return self._maps[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest["layers"])

    def __len__(self) -> int:
        return len(self.manifest["layers"])

    def __repr__(self) -> str:
        return (f"ActivationStore('{self.out}', {len(self.ids)} stimuli, layers "
                f"{list(self)}, {'complete' if self.complete else 'incomplete'})")


def open_activations(out: Union[str, os.PathLike], complete: bool = True) -> ActivationStore:
    """Open a store lazily; with ``complete`` (default) a store with rows not done yet is
    a ValueError saying how many."""
    store = ActivationStore(out)
    if complete and not store.complete:
        n = store.manifest["n_stimuli"] - sum(b - a for a, b in store.done)
        raise ValueError(f"activation store '{store.out}' is incomplete: {n} of "
                         f"{len(store.ids)} rows are not done; run the same call again to "
                         "resume (or finish its shards)")
    return store


def export_h5(acts: Mapping[str, Any], fname: Union[str, os.PathLike],
              rows: int = 256) -> Path:
    """Write DNNBrain's ``.act.h5``: one dataset per layer, ``(n_stim, n_chn, n_row,
    n_col)`` float32 (pooled or unit-selected arrays get trailing axes of length 1, as
    DNNBrain's ``ActivationFile`` reads four axes), copied ``rows`` at a time (flat
    memory), written atomically. Needs h5py (``pip install h5py``).

    Parameters
    ----------
    acts : mapping of str to array
        An :class:`ActivationStore` or the dict :func:`~dnnbrain.probe.activations.activations`
        returns.
    fname : str or os.PathLike
        Ends with ``.act.h5``.
    """
    fname = Path(fname)
    if not fname.name.endswith(".act.h5"):
        raise ValueError(f"`h5` file name must end with '.act.h5', got '{fname}'")
    try:
        import h5py
    except ImportError:
        raise ValueError("the .act.h5 export needs h5py: pip install h5py") from None

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for layer, arr in acts.items():
                shape = tuple(arr.shape) + (1,) * max(0, 4 - arr.ndim)
                ds = f.create_dataset(layer, shape=shape, dtype="float32")
                for a in range(0, shape[0], rows):
                    ds[a:a + rows] = np.asarray(arr[a:a + rows], np.float32).reshape(
                        (-1,) + shape[1:])
            if isinstance(acts, ActivationStore):
                f.attrs["stimID"] = np.array(acts.ids, dtype=h5py.string_dtype())
    return atomic_write(fname, write)
