"""ROAD's noisy linear imputation for a whole batch at once, on the images' device.

:func:`linear_impute_batch` solves every image and channel of a batch, in chunks, side by
side on a thread pool on a multi-threaded CPU: by default with the C solver on the CPU
(:mod:`~dnnbrain.metrics.imputation_c`, 2-3x faster) and with torch operations elsewhere
(:mod:`~dnnbrain.metrics.imputation_torch`, where the algorithm and its error bound are
described); both agree to float32 rounding. :func:`noisy_linear_impute_batch` adds
ROAD's seeded noise.
"""
from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import torch

from . import imputation_c, imputation_torch
from .imputation_torch import COARSE_SWEEPS, MAX_ITER, MIN_SIDE, OMEGA, RTOL

__all__ = ["linear_impute_batch", "noisy_linear_impute_batch"]

log = logging.getLogger(__name__)

#: Pixel values solved at once on a CPU by the torch solver (2^18 was the fastest of
#: 2^15 ... 2^20 at 64 and 224 px: smaller chunks pay torch's per-op overhead, larger
#: ones stream from memory) and on an accelerator.
CHUNK = {"cpu": 2 ** 18, "other": 2 ** 27}
#: Solvers of :func:`linear_impute_batch`.
BACKENDS = ("auto", "c", "torch")


@contextlib.contextmanager
def _one_thread_each(device: torch.device) -> Iterator[int]:
    """On the CPU, run the block with one torch intra-op thread and yield how many
    chunks to solve side by side (the caller's thread count): the solve's stencil passes
    are short and memory-bound, and an intra-op team synchronises at every one of them
    (2 threads made the solve 17x slower on a loaded 2-core machine), while chunks in
    Python threads (torch releases the GIL) never wait for each other. Elsewhere yield
    1. The caller's setting is restored afterwards."""
    before = torch.get_num_threads()
    if device.type != "cpu":
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def _solve_c(lib: Any, x: torch.Tensor, m: torch.Tensor, mask: torch.Tensor,
             tol: torch.Tensor, max_iter: int) -> Tuple[torch.Tensor, int]:
    """The same with the C solver; ``mask`` ``(M, H, W)`` holds the masks shared by the
    ``S / M`` channels of each image."""
    known, b = imputation_torch.rhs(x, m)
    u, iters = imputation_c.solve(lib, mask, b, tol, max_iter, MIN_SIDE, COARSE_SWEEPS,
                                  OMEGA)
    return known + u, int((iters < 0).sum())


def _library(backend: Any, device: torch.device) -> Any:
    """The C solver's library for ``backend`` on ``device``, or None for the torch one."""
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cpu"):
        return None
    if device.type != "cpu":
        raise ValueError(f"`backend` 'c' needs images on the CPU, got {device}; use 'auto' "
                         "or 'torch'")
    lib = imputation_c.library()
    if lib is None and backend == "c":
        raise OSError("`backend` 'c': the C solver could not be built (the log says why); "
                      "use 'auto' or 'torch'")
    return lib


def _check(images: Any, removed: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or 0 in images.shape \
            or not images.is_floating_point():
        raise ValueError("`images` must be a non-empty float (N, C, H, W) tensor, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} "
                         f"{tuple(getattr(images, 'shape', ()))}")
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool or \
            tuple(removed.shape) != (images.shape[0],) + tuple(images.shape[2:]):
        raise ValueError(f"`removed` must be a bool (N, H, W) tensor matching `images` "
                         f"{(images.shape[0],) + tuple(images.shape[2:])}, got "
                         f"{getattr(removed, 'dtype', type(removed).__name__)} "
                         f"{tuple(getattr(removed, 'shape', ()))}")
    full = removed.flatten(1).all(1)
    if bool(full.any()):
        raise ValueError(f"`removed` covers every pixel of image(s) "
                         f"{full.nonzero()[:, 0].tolist()[:5]}: nothing is left to impute "
                         "from")
    return removed.to(images.device)


def linear_impute_batch(images: torch.Tensor, removed: torch.Tensor, rtol: float = RTOL,
                        max_iter: Optional[int] = None, backend: str = "auto") -> torch.Tensor:
    """Noise-free linear imputation of ROAD for every image of a batch, on its device.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` float images (not modified).
    removed : torch.Tensor
        ``(N, H, W)`` bool, True on the pixels to impute (all channels); every image
        keeps at least one pixel.
    rtol : float
        Stop when every removed pixel's residual is at most ``rtol`` times its image's
        (and channel's) range of known values (see the module notes for the error bound).
    max_iter : int or None
        Conjugate-gradient iterations on the full-size grid before giving up with a
        warning; None: :data:`MAX_ITER`.
    backend : {'auto', 'c', 'torch'}
        ``'c'``: the same algorithm in C (:mod:`~dnnbrain.metrics.imputation_c`, built on
        first use; CPU images only; 2-3x faster); ``'torch'``: torch operations on the
        images' device; ``'auto'`` (default): C for CPU images when a C compiler is
        available, torch otherwise. Both agree to about 1e-5 of the image range.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)`` images of ``images``' dtype and device, removed pixels imputed.

    Raises
    ------
    ValueError
        On ill-shaped inputs, an image whose every pixel is removed, an unknown
        ``backend`` or ``'c'`` for images off the CPU.
    OSError
        ``backend='c'`` when the C solver cannot be built.
    """
    m = _check(images, removed)
    lib = _library(backend, images.device)
    n, c, h, w = images.shape
    x = images.detach().to(torch.float32).reshape(n * c, h, w)
    mf = m.to(x.dtype)[:, None].expand(n, c, h, w).reshape(n * c, h, w)
    known = x.masked_fill(mf.bool(), float("inf"))
    lo = known.amin((1, 2))
    hi = x.masked_fill(mf.bool(), -float("inf")).amax((1, 2))
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    tol = float(rtol) * scale
    iters = max_iter if max_iter is not None else MAX_ITER
    if lib is None:
        step = max(1, CHUNK["cpu" if x.device.type == "cpu" else "other"] // (h * w))
    else:  # whole images (the C solver shares a mask across its channels)
        mask = m.to(torch.float32)
        step = c * max(1, -(-n // (4 * torch.get_num_threads())))

    def solve(i: int) -> Tuple[torch.Tensor, int]:
        with torch.no_grad():
            if lib is None:
                return imputation_torch.solve(x[i:i + step], mf[i:i + step], tol[i:i + step],
                                              iters)
            return _solve_c(lib, x[i:i + step], mf[i:i + step],
                            mask[i // c:(i + step) // c], tol[i:i + step], iters)
    starts = range(0, len(x), step)
    with _one_thread_each(x.device) as workers:
        if workers > 1 and len(starts) > 1:
            with ThreadPoolExecutor(min(workers, len(starts))) as pool:
                parts = list(pool.map(solve, starts))
        else:
            parts = [solve(i) for i in starts]
    failed = sum(f for _, f in parts)
    if failed:
        log.warning("linear imputation: %d systems not converged after %d iterations",
                    failed, iters)
    out = torch.cat([p for p, _ in parts])
    return out.reshape(n, c, h, w).to(images.dtype)


def noisy_linear_impute_batch(images: torch.Tensor, removed: torch.Tensor,
                              noise: float = 0.01,
                              seed: Union[int, Sequence[int]] = 0,
                              rtol: float = RTOL, backend: str = "auto") -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al., 2022, ICML) of a batch, on its device:
    :func:`linear_impute_batch` plus Gaussian noise of standard deviation ``noise`` on the
    removed pixels.

    Parameters
    ----------
    images, removed
        As in :func:`linear_impute_batch`.
    noise : float
        Standard deviation of the noise, in image units (0 gives the exact linear fill).
    seed : int or sequence of int
        One seed for the whole batch, or one per image (the noise of image ``i`` then
        depends on ``seed[i]`` only, so a batch equals its images one by one). Drawn with
        a ``torch.Generator`` on the images' device: the same seed gives the same noise
        on the same kind of device.
    rtol, backend
        As in :func:`linear_impute_batch`.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``, ``images``' dtype and device.
    """
    if not noise >= 0:
        raise ValueError(f"`noise` must be >= 0, got {noise!r}")
    out = linear_impute_batch(images, removed, rtol, backend=backend)
    if noise == 0:
        return out
    gen = torch.Generator(device=out.device)
    if isinstance(seed, int):
        eps = torch.randn(out.shape, generator=gen.manual_seed(seed), device=out.device,
                          dtype=out.dtype)
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != out.shape[0]:
            raise ValueError(f"`seed` must be an int or one int per image "
                             f"({out.shape[0]}), got {len(seeds)}")
        eps = torch.stack([torch.randn(out.shape[1:], generator=gen.manual_seed(s),
                                       device=out.device, dtype=out.dtype) for s in seeds])
    return torch.where(removed.to(out.device)[:, None], out + noise * eps, out)
