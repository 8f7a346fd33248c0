"""Rows of one saliency call: (image, unit) pairs, chunked into passes.

A call on ``N`` images and ``U`` units has ``N * U`` rows, image-major. They go through
the method's passes in chunks sized by its ``batch_size`` or ``memory_budget``
(:meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.rows_per_pass`), with ``'label'`` units
replaced by each image's label and ``'predicted'`` units resolved on the clean input;
the chunks' maps are put back together as ``(N, U, ...)``. Used by
:class:`~dnnbrain.dnn.algo.engine.SaliencyImage` (``method`` below) only.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

from .passes import forward_rows
from .target import LABEL, Unit

RowFn = Callable[[torch.Tensor, List[Unit]], torch.Tensor]


def _label_rows(method: Any, n: int, rows: List[Unit]) -> List[Unit]:
    """``rows`` with ``'label'`` replaced by each image's label (``method.labelled``)."""
    u = len(method.units)
    if not any(isinstance(v, str) and v == LABEL for v in method.units):
        return rows
    labels = method._labels
    if labels is None or len(labels) != n:
        got = "none" if labels is None else f"{len(labels)}"
        raise ValueError(f"`unit` 'label' needs one label per image ({n}), got {got}: pass "
                         "`labels` to saliency(), or call backprop inside "
                         "`with method.labelled(labels):`")
    return [labels[k // u] if isinstance(v, str) and v == LABEL else v
            for k, v in enumerate(rows)]


def run_rows(method: Any, x: torch.Tensor, fn: RowFn, rows_factor: int = 1,
             net_input: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Apply ``fn(x_rows, unit_rows)`` over all (image, unit) rows of ``method``'s call.

    Parameters
    ----------
    method : SaliencyImage
        The method: its target units, ``batch_size`` / ``memory_budget`` and checks.
    x : torch.Tensor
        ``(N, ...)`` on the device: what ``fn`` gets rows of.
    fn : callable
        ``fn(x_rows, unit_rows) -> (B, ...)`` maps of one chunk.
    rows_factor : int
        Passes' rows per row of ``x`` (SmoothGrad's samples): chunks shrink by it.
    net_input : torch.Tensor or None
        What the network sees of ``x``'s rows when they carry more (a path method's image
        and baseline): for the checks, the budget and resolving ``'predicted'``.

    Returns
    -------
    torch.Tensor
        ``(N, U, ...)`` on the device; ``method.resolved_units`` holds each map's unit,
        and inside ``method.clean_output()`` its recorder the target output of the clean
        rows where every chunk's passes ran them (:mod:`dnnbrain.dnn.algo.clean`).
    """
    clean = x if net_input is None else net_input
    method._check_once(tuple(clean.shape[1:]))
    n, u = len(x), len(method.units)
    img_idx = torch.arange(n, device=x.device).repeat_interleave(u)
    unit_rows = _label_rows(method, n, [method.units[k % u] for k in range(n * u)])
    method._outputs = n * u
    method.resolved_units = None
    resolved: List[Unit] = []
    seen = method._clean  # a CleanOutput inside method.clean_output(), else None
    if seen is not None:
        seen.start()
    try:
        if method.shares_units and rows_factor == 1:
            # whole images, as many as fill the method's own no-grad passes
            step = max(1, forward_rows(method, x) // method.rows_per_map) * u
        else:
            rows = method.rows_per_pass(clean, unit_rows)
            step = max(1, rows // max(1, rows_factor * method.rows_per_map))
        outs = []
        for i in range(0, n * u, step):
            pick = img_idx[i:i + step]
            ub = unit_rows[i:i + step]
            xb = x[i:i + step] if u == 1 else x[pick]  # a view if it can
            # the clean rows: the same tensor object as xb when the rows carry nothing else
            cb = xb if net_input is None else clean[i:i + step] if u == 1 else clean[pick]
            if seen is not None:
                seen.watch(cb)
            ub, out = _chunk(method, fn, xb, cb, ub)
            if seen is not None:  # the rows of each image's first unit
                seen.chunk_done([k - i for k in range(i, min(i + step, n * u)) if k % u == 0])
            outs.append(out)
            resolved += ub
        if seen is not None:
            seen.finish()
    finally:
        method._outputs = 0
        method._picked = None
    method.resolved_units = [resolved[k * u:(k + 1) * u] for k in range(n)]
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.reshape((n, u) + tuple(out.shape[1:]))


def _chunk(method: Any, fn: RowFn, xb: torch.Tensor, clean: torch.Tensor,
           ub: List[Unit]) -> Tuple[List[Unit], torch.Tensor]:
    """``fn(xb, ub)`` for one chunk of rows, and the rows' units with ``'predicted'``
    resolved on the clean input: a plain gradient picks them in its own pass
    (``method.gradient`` records them); any other method gets them resolved first
    (``method.fixed_units``, which it would call on the same clean rows itself)."""
    if not any(isinstance(v, str) for v in ub):
        return ub, fn(xb, ub)
    if not method.plain_gradient:
        ub = method.fixed_units(clean, ub)
        return ub, fn(xb, ub)
    method._picked = []
    try:
        out = fn(xb, ub)
        picked = next((p for p in reversed(method._picked) if len(p) == len(ub)), None)
    finally:
        method._picked = None
    return (picked if picked is not None else method.fixed_units(clean, ub)), out
