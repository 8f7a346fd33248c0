"""The C solver of ROAD's linear imputation (``_impute.c``): built on first use with the
system's C compiler into a cache folder, called through :mod:`ctypes`.

It runs the same algorithm as :mod:`~dnnbrain.metrics.imputation_batch` (the same
stencil, V-cycle, stopping rule and float32 storage), one system after another with
every pass over a grid fused into one loop, which is what a memory-bound solve on a CPU
needs: 2-3x faster than torch's several operations per pass, at 64 and 224 px. No
Python or torch headers are involved: a plain C99 file, compiled once per machine and
source version in well under a second. Without a compiler the torch path is used (see
:func:`library`).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["library", "cache_dir", "solve"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_impute.c")
#: Compiler flags (portable: no ``-march=native``, so a cache shared by machines of one
#: architecture stays valid).
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC")
_F = ctypes.POINTER(ctypes.c_float)


def cache_dir() -> Path:
    """Folder of the compiled library: ``$DNNBRAIN_CACHE``, else
    ``$XDG_CACHE_HOME/dnnbrain``, else ``~/.cache/dnnbrain``."""
    if os.environ.get("DNNBRAIN_CACHE"):
        return Path(os.environ["DNNBRAIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dnnbrain"


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


@lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The compiled solver, building it first if needed; None (with one warning in the
    log) when there is no C compiler or the build fails, and then the torch path serves.

    The file is ``<cache_dir()>/impute-<hash>.so``, the hash covering the source, the
    flags, the compiler and the machine; it is written to a temporary name and renamed,
    so processes starting together (``torchrun``) never load a half-written file.
    """
    cc = _compiler()
    if cc is None:
        log.warning("ROAD imputation: no C compiler found (set CC); using the torch solver, "
                    "2-3x slower on a CPU")
        return None
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + repr((FLAGS, cc, platform.machine(), platform.system()))
                         .encode()).hexdigest()[:16]
    out = cache_dir() / f"impute-{key}.so"
    try:
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
            os.close(fd)
            try:
                subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True,
                               capture_output=True, timeout=120)
                os.replace(tmp, out)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            log.info("ROAD imputation: compiled the C solver to %s", out)
        lib = ctypes.CDLL(str(out))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        log.warning("ROAD imputation: building the C solver with %s failed (%s%s); using "
                    "the torch solver, 2-3x slower on a CPU", cc, err,
                    ": " + detail.decode(errors="replace").strip()[:200] if detail else "")
        return None
    fn = lib.dnb_impute
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int] * 4 + [_F, _F, _F, _F] + [ctypes.c_int] * 3 + [
        ctypes.c_float, ctypes.POINTER(ctypes.c_int)]
    return lib


def _ptr(t: torch.Tensor) -> "ctypes._Pointer":
    return ctypes.cast(t.data_ptr(), _F)


def solve(lib: ctypes.CDLL, mask: torch.Tensor, b: torch.Tensor, tol: torch.Tensor,
          max_iter: int, min_side: int, coarse_sweeps: int,
          omega: float) -> "tuple[torch.Tensor, np.ndarray]":
    """Solve ``(M * C, H, W)`` systems on CPU float32 tensors, ``C`` right-hand sides
    per mask of ``mask`` ``(M, H, W)`` (0/1), each from 0; ``tol`` ``(M * C,)``.

    Returns
    -------
    u : torch.Tensor
        ``(M * C, H, W)`` float32, the solution on the removed pixels, 0 elsewhere.
    iters : numpy.ndarray
        ``(M * C,)`` int32 iterations; ``-1`` for systems not converged.

    Raises
    ------
    ValueError
        When a tensor is not float32 on the CPU, or the shapes do not match (the C code
        reads raw memory, so nothing else is let through).
    """
    named = {"mask": mask, "b": b, "tol": tol}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"`{name}` must be a float32 CPU tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} on "
                             f"{getattr(t, 'device', '-')}")
    n_mask, h, w = mask.shape if mask.ndim == 3 else (0, 0, 0)
    c = b.shape[0] // n_mask if n_mask else 0
    if not n_mask or b.shape != (n_mask * c, h, w) or tol.shape != (len(b),):
        raise ValueError(f"shapes must be mask (M, H, W), b (M * C, H, W), tol (M * C,); "
                         f"got {tuple(mask.shape)}, {tuple(b.shape)}, {tuple(tol.shape)}")
    mask, b, tol = (t.contiguous() for t in (mask, b, tol))
    u = torch.empty(b.shape, dtype=torch.float32)  # every value written by the C code
    iters = np.zeros(b.shape[0], np.int32)
    failed = lib.dnb_impute(n_mask, c, h, w, _ptr(mask), _ptr(b), _ptr(u), _ptr(tol),
                            int(max_iter), int(min_side), int(coarse_sweeps), float(omega),
                            iters.ctypes.data_as(ctypes.POINTER(ctypes.c_int)))
    if failed < 0:
        raise MemoryError(f"ROAD imputation: the C solver ran out of memory on {n_mask} "
                          f"masks of {h}x{w}")
    return u, iters
