"""Atomic file writes: the data go to a hidden temporary file in the destination folder,
which then replaces the destination with :func:`os.replace`.

A reader (or a resumed batch run) therefore sees either the old file or the complete new
one, never a partial file, and a failed write leaves neither a temporary file nor a
damaged destination behind. :mod:`dnnbrain.io.maps` re-exports these names.
"""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

__all__ = ["atomic_path", "atomic_write", "save_bytes", "existing_part"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def _temp_name(name: str) -> str:
    """Hidden, unique temporary file name for ``name``, ending as it does (``.nii.gz``)."""
    ends = name[-7:] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[1]
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp{ends}"


def _naming(err: OSError, dest: str) -> Optional[OSError]:
    """An OSError like ``err`` naming ``dest`` when ``err`` names no file (else None)."""
    if err.errno is not None and err.filename is None:
        return OSError(err.errno, err.strerror or os.strerror(err.errno), dest)
    return None


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Context manager giving a temporary path that replaces ``path`` on success.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its folder is created if missing.

    Yields
    ------
    pathlib.Path
        Hidden temporary file in the same folder, ending like ``path`` (so writers that
        choose a format from the name, such as nibabel or PIL, behave the same). Write it
        inside the ``with`` block; on a clean exit it atomically replaces ``path``.

    Raises
    ------
    FileNotFoundError
        If the block ends without having created the temporary file.

    Notes
    -----
    If the block raises (``KeyboardInterrupt`` included), the temporary file is removed,
    ``path`` is left untouched and the exception propagates; an operating-system error
    that names no file (a full disk) is raised again naming ``path``. Data are not ``fsync``-ed: the
    guarantee is against crashed or interrupted processes, not power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(_temp_name(path.name))
    done = False
    try:
        try:
            yield tmp
        except OSError as err:
            named = _naming(err, str(path))
            if named is None:
                raise
            raise named from err
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            raise FileNotFoundError(f"the write for '{path}' created no file at '{tmp}'") \
                from None
        done = True
        logger.debug("wrote %s", path)
    finally:
        if not done:
            with contextlib.suppress(OSError):
                tmp.unlink()


def existing_part(folder: PathLike) -> Optional[Path]:
    """``folder`` itself or its nearest parent that exists (None: none does). An output
    folder can be made there only when that is a folder, not a file."""
    folder = Path(folder).absolute()
    return next((q for q in (folder, *folder.parents) if q.exists()), None)


def atomic_write(path: PathLike, write_fn: Callable[[Path], Any]) -> Path:
    """Call ``write_fn(tmp)`` on a temporary path, then atomically move it to ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination; its folder is created if missing. An existing file is replaced
        only once ``write_fn`` has returned.
    write_fn : callable
        ``write_fn(tmp: pathlib.Path)`` writes the complete file at ``tmp`` (same folder
        and ending as ``path``). Its return value is ignored.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    Exception
        Whatever ``write_fn`` raises, after the temporary file has been removed (``path``
        is then unchanged); FileNotFoundError if ``write_fn`` wrote nothing.

    Examples
    --------
    >>> atomic_write("out/table.txt", lambda p: p.write_text("done"))  # doctest: +SKIP
    """
    if not callable(write_fn):
        raise TypeError(f"`write_fn` must be callable, got {type(write_fn).__name__}")
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return Path(path)


def save_bytes(path: PathLike, data: bytes, make_dirs: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically, as :func:`atomic_path` does, in the fewest
    system calls: create the hidden temporary file, one ``write``, :func:`os.replace`.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.
    data : bytes
        The complete file.
    make_dirs : bool
        Create the folder if missing (False: the caller made it; a batch run writing
        thousands of files makes each folder once).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OSError
        Naming ``path`` when the system error names no file; the temporary file is
        removed and ``path`` left as it was.
    """
    dest = os.fspath(path)
    folder, name = os.path.split(dest)
    if make_dirs and folder:
        os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, _temp_name(name))
    made = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        made = True
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        made = False
    except OSError as err:
        named = _naming(err, dest)
        if named is None:
            raise
        raise named from err
    finally:
        if made:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return Path(dest)
