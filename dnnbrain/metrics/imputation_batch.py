"""ROAD's noisy linear imputation for a whole batch at once, as tensor operations on the
images' device.

The system of :func:`~dnnbrain.metrics.imputation.noisy_linear_impute` for a removed set
:math:`R` is

.. math:: (A u)_p = d_p u_p - \\sum_{q \\in N(p) \\cap R} w_{pq} u_q
          = \\sum_{q \\in N(p) \\setminus R} w_{pq} x_q = b_p, \\qquad p \\in R

with :math:`d_p = \\sum_{q \\in N(p)} w_{pq}` (1 inside the image, less at its border):
a masked 3x3 stencil, symmetric positive definite (a discrete :math:`-\\nabla^2 / 3`),
applied to every image and channel of a batch at once by two separable ``[1, 2, 1]``
passes. It is solved per image and channel by conjugate gradients (Hestenes & Stiefel,
1952) preconditioned with one symmetric geometric multigrid V-cycle (damped Jacobi
smoothing; bilinear interpolation from 2x coarser grids and its exact transpose; on a
coarser grid a pixel is removed when its 2x2 finer pixels all are), in float32, about
10 iterations whatever the holes. A system stops when every removed pixel's residual is
at most ``rtol`` times its image's range, so the error is at most ``rtol`` times
:math:`\\lVert A^{-1} \\rVert_\\infty` (which grows with the holes) times the range;
with the default ``rtol = 1e-6`` the measured difference from the sparse direct solve
(:mod:`dnnbrain.metrics.imputation`) is below 2e-5 of the range
(``tests/test_imputation_batch.py``, ``benchmarks/bench_metrics.py --quantus``), float32
rounding included (``docs/metrics.rst``, *Tolerance*). On the CPU the same algorithm
runs in C by default (:mod:`~dnnbrain.metrics.imputation_c`, 2-3x faster; see
``backend``).
"""
from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from . import imputation_c

__all__ = ["linear_impute_batch", "noisy_linear_impute_batch"]

log = logging.getLogger(__name__)

#: Relative residual (of the image range) at which the fine-grid iterations stop.
RTOL = 1e-6
#: Floor of the denominators of the conjugate-gradient steps.
TINY = 1e-30
#: Conjugate-gradient iterations before giving up with a warning (about 10 suffice).
MAX_ITER = 200
#: Damping of the Jacobi smoother (the eigenvalues of D^-1 A lie in (0, 4/3]).
OMEGA = 1.0
#: Grids with a side below ``2 MIN_SIDE`` are the coarsest of the V-cycle.
MIN_SIDE = 4
#: Jacobi sweeps on the coarsest grid.
COARSE_SWEEPS = 4
#: Pixel values solved at once on a CPU (2^18 was the fastest of 2^15 ... 2^20 at 64 and
#: 224 px: smaller chunks pay torch's per-op overhead, larger ones stream from memory)
#: and on an accelerator.
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


def _smooth(u: torch.Tensor) -> torch.Tensor:
    """``[1, 2, 1] x [1, 2, 1]`` stencil of the last two axes, zero outside the image
    (integer weights: the sums round less than a pre-scaled stencil's, which matters in
    :func:`_apply`'s cancellation when nearly every pixel is removed)."""
    v = u * 2
    v[..., 1:] += u[..., :-1]
    v[..., :-1] += u[..., 1:]
    out = v * 2
    out[..., 1:, :] += v[..., :-1, :]
    out[..., :-1, :] += v[..., 1:, :]
    return out


def _apply(u: torch.Tensor, diag6: torch.Tensor, m6: torch.Tensor) -> torch.Tensor:
    """:math:`A u` for ``u`` zero outside the removed mask: with ``v`` the ``[1, 2, 1]``
    pass of the last axis, :func:`_smooth` is ``2 v + v_{up} + v_{down}`` and the
    8-neighbour weights are ``_smooth / 12`` minus the centre's 1/3, so :math:`A u =
    m \\odot (d u + u / 3 - S u / 12) = -m / 6 \\odot (v + (v_{up} + v_{down}) / 2 - 6
    (d + 1/3) u)`: ``diag6`` = :math:`6 (d + 1/3)` (8 inside the image, 6 or 4.5 at its
    border: exact in binary, like the halves, so the cancellation when nearly every pixel
    is removed rounds no more than integer weights would) and ``m6`` = :math:`-m / 6`."""
    v = u * 2
    v[..., 1:] += u[..., :-1]
    v[..., :-1] += u[..., 1:]
    out = torch.addcmul(v, diag6, u, value=-1)
    out[..., 1:, :].add_(v[..., :-1, :], alpha=0.5)
    out[..., :-1, :].add_(v[..., 1:, :], alpha=0.5)
    return out.mul_(m6)


def _diag(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """``(H, W)``: in-image neighbour weight sum plus 1/3 (the centre of ``_smooth``),
    times 6 (:func:`_apply`'s ``diag6``)."""
    return _smooth(torch.ones(h, w, dtype=like.dtype, device=like.device)) / 2


def _up(c: torch.Tensor, dim: int) -> torch.Tensor:
    """Double axis ``dim`` (-1 or -2) of ``(S, K, L)`` by cell-centred linear
    interpolation, times 4: fine ``2I`` is ``3 c_I + c_{I-1}``, fine ``2I+1`` is
    ``3 c_I + c_{I+1}``, ``c`` repeated past the ends."""
    shape = list(c.shape)
    out = torch.empty(shape[:dim % 3 + 1] + [2] + shape[dim % 3 + 1:], dtype=c.dtype,
                      device=c.device)
    even, odd = out.select(dim % 3 + 1, 0), out.select(dim % 3 + 1, 1)
    t, n = c * 3, c.shape[dim]
    torch.add(t.narrow(dim, 1, n - 1), c.narrow(dim, 0, n - 1), out=even.narrow(dim, 1, n - 1))
    torch.add(t.narrow(dim, 0, 1), c.narrow(dim, 0, 1), out=even.narrow(dim, 0, 1))
    torch.add(t.narrow(dim, 0, n - 1), c.narrow(dim, 1, n - 1), out=odd.narrow(dim, 0, n - 1))
    torch.add(t.narrow(dim, n - 1, 1), c.narrow(dim, n - 1, 1), out=odd.narrow(dim, n - 1, 1))
    shape[dim] *= 2
    return out.reshape(shape)


def _down(f: torch.Tensor, dim: int) -> torch.Tensor:
    """The transpose of :func:`_up` on an even axis ``dim``: ``c_I = f_{2I-1} + 3 f_{2I}
    + 3 f_{2I+1} + f_{2I+2}``, the ends repeated."""
    even, odd = f.narrow(dim, 0, f.shape[dim] // 2 * 2).unflatten(
        dim, (-1, 2)).unbind(dim % 3 + 1)
    n = even.shape[dim]
    c = (even + odd).mul_(3)
    c.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1))
    c.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1))
    c.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1))
    c.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1))
    return c


def _prolong(c: torch.Tensor, h: int, w: int, scaled: bool = True) -> torch.Tensor:
    """Cell-centred bilinear interpolation of ``(S, K, L)`` to ``(S, h, w)``
    (``h <= 2K``, ``w <= 2L``): fine ``2I`` is ``3/4 c_I + 1/4 c_{I-1}``, fine ``2I+1``
    is ``3/4 c_I + 1/4 c_{I+1}`` per axis, ``c`` repeated past the ends (separable
    slices: 5x faster than ``F.interpolate`` on single-channel stacks); ``scaled=False``
    leaves out the factor 1/16 (for the caller to fold into its next pass)."""
    up = _up(_up(c, -1), -2)[:, :h, :w]
    return up.mul_(1 / 16) if scaled else up


def _restrict(f: torch.Tensor, k: int, l_: int, scaled: bool = True) -> torch.Tensor:
    """The exact transpose of :func:`_prolong` (``(S, h, w) -> (S, K, L)``), so the
    V-cycle is symmetric: per axis :math:`c_I = (f_{2I-1} + 3 f_{2I} + 3 f_{2I+1} +
    f_{2I+2}) / 4`, the ends repeated; ``scaled`` as in :func:`_prolong`."""
    if f.shape[-2:] != (2 * k, 2 * l_):
        f = F.pad(f, (0, 2 * l_ - f.shape[-1], 0, 2 * k - f.shape[-2]))
    c = _down(_down(f, -2), -1)  # rows first: the strided axis then has half the data
    return c.mul_(1 / 16) if scaled else c


class _Levels:
    """The grids of the multigrid preconditioner: per level :func:`_apply`'s ``m6`` and
    ``diag6``, the removed mask over 16 (the transfer operators' factor folded in) and the
    damped inverse of :math:`A`'s diagonal, all ``(S, H, W)`` but ``diag6`` ``(H, W)``.
    A coarse pixel is removed when its 2x2 pixels all are."""

    def __init__(self, m: torch.Tensor) -> None:
        self.m6, self.m16, self.diag6, self.dinv = [], [], [], []
        while True:
            h, w = m.shape[-2:]
            diag6 = _diag(h, w, m)
            self.m6.append(m / -6)
            self.m16.append(m / 16)
            self.diag6.append(diag6)
            self.dinv.append((6 * OMEGA) * m / (diag6 - 2))
            if min(h, w) < 2 * MIN_SIDE:
                break
            known = F.pad(1 - m, (0, w % 2, 0, h % 2))
            m = (F.avg_pool2d(known[:, None], 2)[:, 0] == 0).to(m.dtype)
            if not bool(m.any()):
                break

    def select(self, keep: torch.Tensor) -> None:
        """Keep the systems ``keep`` (bool ``(S,)``) only."""
        self.m6 = [m[keep] for m in self.m6]
        self.m16 = [m[keep] for m in self.m16]
        self.dinv = [d[keep] for d in self.dinv]

    def apply(self, u: torch.Tensor, level: int = 0) -> torch.Tensor:
        return _apply(u, self.diag6[level], self.m6[level])

    def vcycle(self, r: torch.Tensor, level: int = 0) -> torch.Tensor:
        """One symmetric V-cycle (damped Jacobi before and after the coarse correction):
        a symmetric positive-definite approximation of :math:`A^{-1} r`."""
        dinv = self.dinv[level]
        z = dinv * r
        if level + 1 < len(self.m6):
            h, w = r.shape[-2:]
            mc = self.m16[level + 1]
            # the V-cycle is linear: correct with minus the cycle of minus the residual
            neg_res = self.apply(z, level).sub_(r)
            zc = self.vcycle(_restrict(neg_res, *mc.shape[-2:], scaled=False)
                             .mul_(self.m16[level + 1]), level + 1)
            z = z.addcmul_(_prolong(zc, h, w, scaled=False), self.m16[level], value=-1)
        else:
            for _ in range(COARSE_SWEEPS):
                z = z.addcmul_(dinv, self.apply(z, level).sub_(r), value=-1)
        return z.addcmul_(dinv, self.apply(z, level).sub_(r), value=-1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(S,)`` inner products of ``(S, H, W)`` stacks."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def _pcg(u: torch.Tensor, b: torch.Tensor, m: torch.Tensor, tol: torch.Tensor,
         max_iter: int) -> "tuple[torch.Tensor, int]":
    """Multigrid-preconditioned conjugate gradients on ``(S, H, W)`` systems from ``u``;
    system ``s`` stops once ``max |r_s| <= tol[s]``, and leaves the working set. Returns
    the solutions and how many systems ``max_iter`` iterations did not solve."""
    lv = _Levels(m)
    out, failed = u.clone(), 0
    act = torch.arange(u.shape[0], device=u.device)
    r = b - lv.apply(u)
    z = lv.vcycle(r)
    p, rz = z, _dot(r, z)
    it = 0
    while act.numel():
        rf = r.flatten(1)  # amax and amin: 10x faster than aminmax along a dim
        done = torch.maximum(rf.amax(1), rf.amin(1).neg_()) <= tol[act]
        if it >= max_iter or bool(done.any()):
            out[act] = u
            if it >= max_iter:
                failed = int((~done).sum())
                break
            keep = ~done
            act, u, r, p, rz = act[keep], u[keep], r[keep], p[keep], rz[keep]
            lv.select(keep)
            if not act.numel():
                break
        ap = lv.apply(p)
        alpha = (rz / _dot(p, ap).clamp_min(TINY))[:, None, None]
        u = u.addcmul_(alpha, p)
        r = r.addcmul_(alpha, ap, value=-1)
        z = lv.vcycle(r)
        rz_new = _dot(r, z)
        p = z.addcmul_((rz_new / rz.clamp_min(TINY))[:, None, None], p)
        rz = rz_new
        it += 1
    return out, failed


def _rhs(x: torch.Tensor, m: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """The known pixels of ``(S, H, W)`` images ``x`` (mask ``m``, float 0/1) and the
    right-hand side :math:`b` of their systems."""
    known = x * (1 - m)
    return known, (_smooth(known) / 12 - known / 3) * m


def _solve(x: torch.Tensor, m: torch.Tensor, tol: torch.Tensor,
           max_iter: int) -> "tuple[torch.Tensor, int]":
    """Fill the removed pixels of ``(S, H, W)`` images ``x`` with torch operations; also
    return how many systems did not converge."""
    known, b = _rhs(x, m)
    u, failed = _pcg(torch.zeros_like(x), b, m, tol, max_iter)
    return known + u, failed


def _solve_c(lib: Any, x: torch.Tensor, m: torch.Tensor, mask: torch.Tensor,
             tol: torch.Tensor, max_iter: int) -> "tuple[torch.Tensor, int]":
    """The same with the C solver; ``mask`` ``(M, H, W)`` holds the masks shared by the
    ``S / M`` channels of each image."""
    known, b = _rhs(x, m)
    u, iters = imputation_c.solve(lib, mask, b, torch.zeros_like(x), tol, max_iter,
                                  MIN_SIDE, COARSE_SWEEPS, OMEGA)
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

    def solve(i: int) -> "tuple[torch.Tensor, int]":
        with torch.no_grad():
            if lib is None:
                return _solve(x[i:i + step], mf[i:i + step], tol[i:i + step], iters)
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
