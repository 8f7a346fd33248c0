"""Batched passes shared by the many-row methods, on top of
:class:`~dnnbrain.dnn.algo.engine.SaliencyImage` (``method`` below: typed ``Any``, as the
engine builds on this module).

* :func:`gradient_sums`: a weighted sum of input gradients over many inputs of each
  image (Integrated Gradients' path points, SmoothGrad's noisy copies), summed at the
  network's affine stem and taken through the stem once per image;
* :func:`smooth_maps`: SmoothGrad of any method (through :func:`gradient_sums` where the
  maps are plain gradients and only their mean is asked for);
* :func:`perturbed_scores`: target scores of perturbed copies without gradients, shared
  across the units of one image (occlusion, Score-CAM).
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .checks import SMOOTH_MODES, check_noise
from .target import Unit, select

#: ``make(i, k0, k1, out)`` writes inputs ``k0 .. k1 - 1`` of row ``i`` into ``out``.
MakeRows = Callable[[int, int, int, torch.Tensor], torch.Tensor]


def gradient_sums(method: Any, x: torch.Tensor, units: Sequence[Unit],
                  per_row: int, make: MakeRows, weights: torch.Tensor,
                  relu_mode: Optional[str] = None) -> torch.Tensor:
    """``sum_k weights[k] * grad f_i(input_k of row i)`` for every row ``i`` of ``x``.

    Parameters
    ----------
    method : SaliencyImage
        Gives the target, the passes and the rows per pass
        (:meth:`~SaliencyImage.rows_per_pass`).
    x : torch.Tensor
        ``(B, C, H, W)`` rows on the device (the images the inputs derive from).
    units : sequence of units
        One per row, fixed (no ``'predicted'``).
    per_row : int
        Inputs ``K`` per row.
    make : callable
        ``make(i, k0, k1, out)`` writes inputs ``k0 .. k1-1`` of row ``i`` into ``out``
        (``(k1 - k0, C, H, W)``, in the layout of the passes), e.g. with
        ``torch.addcmul(..., out=out)``.
    weights : torch.Tensor
        ``(K,)`` weight of each input; it scales the target score, so the backward pass
        delivers weighted gradients with no extra multiplication.
    relu_mode : None, 'guided' or 'deconv'
        ReLU backward rule.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)`` weighted gradient sums.

    Notes
    -----
    Inputs ``(row, k)`` are laid out row-major and cut into passes of
    ``rows_per_pass`` inputs, so a pass holds whole or partial rows and no input is
    built twice. With an affine stem (:meth:`~SaliencyImage.summed_leaf`) the passes
    stop differentiating at the stem's output; the sums are taken there and the stem's
    backward runs once per row (:meth:`~SaliencyImage.stem_backward`): the same sums, by
    linearity, without a per-input backward through the first layer.
    """
    n, s = len(x), per_row
    stem = method.summed_leaf()
    chunk = method.rows_per_pass(x, units, images=n, **sums_pass(method))
    fmt = method._memory_format(x) or torch.contiguous_format
    total: Optional[torch.Tensor] = None
    for start in range(0, n * s, chunk):
        stop = min(start + chunk, n * s)
        buf = torch.empty((stop - start,) + tuple(x.shape[1:]), dtype=x.dtype,
                          device=x.device, memory_format=fmt)
        spans = []  # (row, k0, k1, offset in the pass)
        for i in range(start // s, (stop - 1) // s + 1):
            k0, k1 = max(start - i * s, 0), min(stop - i * s, s)
            spans.append((i, k0, k1, i * s + k0 - start))
            make(i, k0, k1, buf[spans[-1][3]:spans[-1][3] + k1 - k0])
        rows: List[Unit] = [units[i] for i, k0, k1, _ in spans for _ in range(k1 - k0)]
        ks = torch.cat([torch.arange(k0, k1, device=x.device) for _, k0, k1, _ in spans])
        grad = method.gradient(buf, rows, None, relu_mode, stem, weights=weights[ks],
                               keep_values=False)[0]
        if total is None:
            total = torch.empty((n,) + tuple(grad.shape[1:]), dtype=grad.dtype,
                                device=grad.device, memory_format=_layout_of(grad)).zero_()
        for i, k0, k1, off in spans:
            total[i] += _sum_rows(grad[off:off + k1 - k0])
        del buf, grad  # before the next pass allocates its own
    assert total is not None  # n * s >= 1 inputs ran
    return total if stem is None else method.stem_backward(x, total)


def sums_pass(method: Any) -> dict:
    """How :func:`gradient_sums` asks :meth:`~SaliencyImage.rows_per_pass` for its rows
    (leaf: the affine stem, no values kept); the input checks ask the same."""
    return {"at_output": method.summed_leaf(), "keep_values": False}


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.ndim == 4 and not t.is_contiguous() and \
        t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _sum_rows(g: torch.Tensor) -> torch.Tensor:
    """``g.sum(0)``, read in memory order: a channels-last sum over rows is 20x faster
    as the sum of a dense ``(rows, H*W*C)`` matrix."""
    if _layout_of(g) == torch.channels_last:
        n, c, h, w = g.shape
        return g.permute(0, 2, 3, 1).reshape(n, -1).sum(0).view(h, w, c).permute(2, 0, 1)
    return g.reshape(len(g), -1).sum(0).view(g.shape[1:])


def smooth_maps(method: Any, image: Any, n_iter: int, sigma_multiplier: float,
                to_layer: Optional[str], seed: Optional[int], mode: str,
                preprocessed: bool) -> np.ndarray:
    """:meth:`SaliencyImage.backprop_smooth` (see there for the parameters).

    The mean of plain gradient maps (vanilla, guided, deconv: methods that keep the
    base ``_attribute``) is a weighted gradient sum, :func:`gradient_sums`; any other map
    is computed per noisy copy and reduced.
    """
    n_iter, sigma_multiplier = check_noise(n_iter, sigma_multiplier, "n_iter")
    if mode not in SMOOTH_MODES:
        raise ValueError(f"`mode` must be one of {list(SMOOTH_MODES)}, got {mode!r}")
    x, batch = method._prepare(image, preprocessed)
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else
                                        int(torch.randint(2**31, (1,)).item()))
    # One noise pattern per sample, shared by every image: maps do not depend on batch
    # composition, so a batch equals the images one by one.
    noise = method._layout(torch.randn((n_iter,) + tuple(x.shape[1:]), generator=gen)
                           .to(method.dnn.device))
    summed = _summed(method, mode, to_layer)
    mean = torch.full((n_iter,), 1.0 / n_iter, dtype=x.dtype, device=x.device)

    def smooth(xb: torch.Tensor, ub: List[Unit]) -> torch.Tensor:
        ub = method.fixed_units(xb, ub)  # 'predicted' on the clean image, not each copy
        span = (xb.flatten(1).amax(1) - xb.flatten(1).amin(1)) * sigma_multiplier
        if summed:
            def make(i: int, k0: int, k1: int, out: torch.Tensor) -> torch.Tensor:
                return torch.addcmul(xb[i], noise[k0:k1], span[i], out=out)
            return gradient_sums(method, xb, ub, n_iter, make, mean, method.relu_mode)
        noisy = xb[:, None] + noise[None] * span.view(-1, 1, *[1] * (xb.ndim - 1))
        rows, urows = noisy.flatten(0, 1), [u for u in ub for _ in range(n_iter)]
        step = max(1, method.rows_per_pass(rows, urows, to_layer, images=len(xb))
                   // method.rows_per_map)
        maps = torch.cat([method._attribute(rows[i:i + step], urows[i:i + step], to_layer)
                          for i in range(0, len(rows), step)])
        maps = maps.unflatten(0, (len(xb), n_iter))
        if mode == "mean":
            return maps.mean(1)
        if mode == "squared":
            return (maps * maps).mean(1)
        return maps.var(1, unbiased=False)

    out = method._run(x, smooth, rows_factor=n_iter)
    return method._shape(out, batch)


def _summed(method: Any, mode: str, to_layer: Optional[str]) -> bool:
    """SmoothGrad of ``method`` is a :func:`gradient_sums` (mean of plain gradients)."""
    return mode == "mean" and to_layer is None and method.plain_gradient


def check_smooth_input(method: Any, shape: Tuple[int, ...], mode: str,
                       to_layer: Optional[str] = None) -> None:
    """:meth:`SaliencyImage.check_input` for SmoothGrad of ``method``: the method's own
    checks, and one row of the passes :func:`smooth_maps` runs within its
    ``memory_budget``."""
    method.check_input(shape)
    x = method._probe(shape)
    if _summed(method, mode, to_layer):
        method._check_budget(x, images=1, **sums_pass(method))
    else:
        method._check_budget(x, to_layer=to_layer, images=1)


#: Bytes one no-grad pass of :func:`perturbed_scores` may take without a ``memory_budget``.
FORWARD_BYTES = 256 * 2**20
#: Perturbed copies per pass and CPU thread when ``batch_size`` is not given: more rows per
#: pass spread the threads' synchronisation over more work (on a busy machine each op's
#: barrier can wait for a descheduled thread), fewer stay in the CPU's caches.
CPU_ROWS_PER_THREAD = 128
#: ... on an accelerator, where a pass of a few rows leaves the device idle.
DEVICE_ROWS = 1024


def forward_rows(method: Any, x: torch.Tensor) -> int:
    """Perturbed copies per no-grad pass of :func:`perturbed_scores`.

    ``batch_size`` when it was given; otherwise :data:`CPU_ROWS_PER_THREAD` per torch CPU
    thread on the CPU (ShapeNet occlusion on a busy 2-core machine: 32 rows per pass were
    the fastest on one thread, 256-512 on two; 128 per thread is 2x captum's time on one
    thread and at least its speed on two), :data:`DEVICE_ROWS` on an accelerator. Either
    way at most what fits in the ``memory_budget`` (or :data:`FORWARD_BYTES` when none was
    given), counting per row two of the largest layer outputs of the pass (a layer's input
    and output are alive together) and two input copies; the sizes are measured once per
    input shape by a one-row forward pass.
    """
    if method._capped and method.memory_budget is None:
        return method.batch_size
    key = ("forward", tuple(x.shape[1:]), x.dtype, x.device, method.layer, method.call)
    per_row = method._costs.get(key)
    if per_row is None:
        row_bytes = x[:1].numel() * x.element_size()
        sizes = [row_bytes]

        def seen(module: Any, inputs: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel() * out.element_size())

        handles = [m.register_forward_hook(seen) for m in method.dnn.model.modules()]
        try:
            method.layer_output(x[:1], method.layer)
        finally:
            for h in handles:
                h.remove()
        per_row = method._costs[key] = 2 * max(sizes) + 2 * row_bytes
    rows = method.batch_size if method._capped else (
        CPU_ROWS_PER_THREAD * torch.get_num_threads() if x.device.type == "cpu"
        else DEVICE_ROWS)
    budget = method.memory_budget if method.memory_budget is not None else FORWARD_BYTES
    return max(1, min(rows, budget // per_row))


def perturbed_scores(method: Any, x: torch.Tensor, units: Sequence[Unit],
                     n_items: int, make: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> torch.Tensor:
    """Target scores of perturbed copies, without gradients, shared across units.

    Parameters
    ----------
    method : SaliencyImage
        Gives the target and the rows per pass (:func:`forward_rows`).
    x : torch.Tensor
        ``(B, 3, H, W)`` rows; consecutive rows holding the same image (its units)
        share every forward pass.
    units : sequence of units
        One per row, 'predicted' already fixed.
    n_items : int
        Perturbations per image (occlusion windows, Score-CAM channels ...).
    make : callable
        ``make(row, item)`` -> the perturbed inputs ``(K, 3, H, W)`` for the pairs
        ``(x[row[q]], item[q])``; ``row`` indexes only the first row of each image.

    Returns
    -------
    torch.Tensor
        ``(B, n_items)`` score of each row's unit for each perturbation of its image;
        :func:`forward_rows` perturbed copies per forward pass.
    """
    b, chunk = len(x), forward_rows(method, x)
    first = [0] + [i for i in range(1, b) if not torch.equal(x[i], x[i - 1])]
    owner = torch.zeros(b, dtype=torch.long)
    owner[first[1:]] = 1
    owner = owner.cumsum(0).tolist()
    slots = [[r for r in range(b) if owner[r] == g] for g in range(len(first))]
    first_t, total = torch.tensor(first, device=x.device), len(first) * n_items
    scores = torch.empty(b, n_items, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for i in range(0, total, chunk):
            # indices are made on the host: no device-to-host sync inside the loop
            k = torch.arange(i, min(i + chunk, total))
            img_cpu = k // n_items
            img_l, img, item = img_cpu.tolist(), img_cpu.to(x.device), (k % n_items).to(x.device)
            xm = make(first_t[img], item)
            out = method.layer_output(xm, method.layer)
            lay = method.target_layout(out, xm)
            for j in range(max(len(s) for s in slots)):  # j-th unit of each image
                rows = [slots[g][min(j, len(slots[g]) - 1)] for g in img_l]
                got = select(out, [units[r] for r in rows], method.layer, method.reduce, lay)
                keep = torch.tensor([j < len(slots[g]) for g in img_l], device=x.device)
                rows_t = torch.tensor(rows, device=x.device)
                scores[rows_t[keep], item[keep]] = got[keep].to(scores.dtype)
    return scores
