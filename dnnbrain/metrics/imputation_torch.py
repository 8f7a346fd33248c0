"""The torch solver of ROAD's linear imputation: multigrid-preconditioned conjugate
gradients on the masked 3x3 stencil, as tensor operations on the images' device (what
:func:`~dnnbrain.metrics.imputation_batch.linear_impute_batch` runs off the CPU, and on
it with ``backend='torch'``; ``_impute.c`` is the same algorithm in C).

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
rounding included (``docs/metrics.rst``, *Tolerance*).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

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
         max_iter: int) -> Tuple[torch.Tensor, int]:
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


def rhs(x: torch.Tensor, m: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The known pixels and the right-hand sides of ``(S, H, W)`` systems.

    Parameters
    ----------
    x : torch.Tensor
        ``(S, H, W)`` float32 images (one channel each).
    m : torch.Tensor
        ``(S, H, W)`` float32 0/1, 1 on the removed pixels.

    Returns
    -------
    known, b : torch.Tensor
        ``(S, H, W)``: ``x`` with the removed pixels zeroed, and :math:`b` (zero outside
        the removed pixels).
    """
    known = x * (1 - m)
    return known, (_smooth(known) / 12 - known / 3) * m


def solve(x: torch.Tensor, m: torch.Tensor, tol: torch.Tensor,
          max_iter: int) -> Tuple[torch.Tensor, int]:
    """Fill the removed pixels of ``(S, H, W)`` images with torch operations.

    Parameters
    ----------
    x, m : torch.Tensor
        As in :func:`rhs`.
    tol : torch.Tensor
        ``(S,)``: a system stops once its largest residual is at most this.
    max_iter : int
        Conjugate-gradient iterations before a system is given up.

    Returns
    -------
    filled : torch.Tensor
        ``(S, H, W)`` float32, ``x`` with its removed pixels imputed.
    failed : int
        How many systems ``max_iter`` iterations did not solve.
    """
    known, b = rhs(x, m)
    u, failed = _pcg(torch.zeros_like(x), b, m, tol, max_iter)
    return known + u, failed
