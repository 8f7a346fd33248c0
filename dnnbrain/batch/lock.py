"""One run per output folder at a time: ``flock`` locks, released when the process dies.

A run that is not sharded holds an exclusive lock on ``OUT/.lock``; shard ``k`` of ``n``
holds a shared lock on it plus an exclusive lock on ``OUT/.lock.shard<k>of<n>`` (removed
when the shard ends), so shards of one run compute side by side while a second run, or a
second copy of the same shard, is refused at once. ``-merge`` holds a shared lock on
``OUT/.lock`` too (:func:`merge_lock`), so it never merges while an unsharded run
rewrites the folder. The merge lock
(:mod:`dnnbrain.batch.merge`) is a ``flock`` on the folder itself, another file: the two
never wait on each other. Where ``fcntl`` is missing (Windows) runs are not locked (a
warning says so).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from .store import LOCK_NAME

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class RunLockedError(FileExistsError):
    """Another live run holds the output folder."""


def shard_lock_name(k: int, n: int) -> str:
    """File name of shard ``k`` of ``n``'s own lock."""
    return f"{LOCK_NAME}.shard{k}of{n}"


def _lock(path: Path, mode: int, what: str, out: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by another process
        os.close(fd)
        raise RunLockedError(f"`outputs.dir` '{out}' is in use: another run ({what}) holds "
                             f"its lock '{path.name}'; wait for it to finish or choose "
                             "another folder") from None
    try:  # the file we locked must still be the one at `path` (not removed meanwhile)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError
    except FileNotFoundError:
        os.close(fd)
        raise RunLockedError(f"`outputs.dir` '{out}' is in use: its lock '{path.name}' "
                             "changed while it was taken; try again") from None
    return fd


@contextlib.contextmanager
def run_lock(out: Path, shard: Optional[Tuple[int, int]]) -> Iterator[None]:
    """Hold the output folder ``out`` (created if missing) for one run or one shard.

    Parameters
    ----------
    out : pathlib.Path
        The output folder.
    shard : (int, int) or None
        ``(k, n)`` for shard ``k`` of ``n``; None for a run that is not sharded.

    Raises
    ------
    RunLockedError
        (a FileExistsError) at once, when another run holds the folder: any run or
        shard for an unsharded run; an unsharded run or the same shard for a shard.
    """
    if fcntl is None:
        log.warning("no fcntl here: '%s' is not locked against a second run", out)
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    fds: List[int] = []
    own: Optional[Path] = None
    try:
        if shard is None:
            fds.append(_lock(out / LOCK_NAME, fcntl.LOCK_EX, "a run or a shard", out))
        else:
            fds.append(_lock(out / LOCK_NAME, fcntl.LOCK_SH, "not sharded", out))
            own = out / shard_lock_name(*shard)
            fds.append(_lock(own, fcntl.LOCK_EX, f"shard {shard[0]}/{shard[1]}", out))
        yield
    finally:
        if own is not None and len(fds) == 2:
            own.unlink(missing_ok=True)  # still locked: a newcomer locks a new file
        for fd in reversed(fds):
            os.close(fd)


@contextlib.contextmanager
def merge_lock(out: Path) -> Iterator[None]:
    """A shared lock on the run folder ``out`` (it must exist) while its manifest parts are
    merged by hand: shards may still run, an unsharded run may not.

    Raises
    ------
    RunLockedError
        At once, when an unsharded run holds the folder.
    """
    if fcntl is None:
        yield
        return
    fd = _lock(out / LOCK_NAME, fcntl.LOCK_SH, "not sharded", out)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``out/.lock.folder`` (created, kept, empty; released
    when the process dies), for the short critical sections of merging or finalising;
    it waits for another process holding it. A file opened for writing, not the folder
    itself: NFS clients emulate ``flock`` with ``fcntl`` locks, whose exclusive kind
    needs a writable descriptor. Where ``fcntl`` is missing (Windows) it does not lock."""
    if fcntl is None:
        yield
        return
    fd = os.open(out / f"{LOCK_NAME}.folder", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
