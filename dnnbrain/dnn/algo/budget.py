"""Memory budgets: how many rows of a gradient pass fit in a given number of bytes.

A gradient pass keeps, for every row, the tensors autograd saves for the backward pass
(activations, ReLU masks, pooling indices ...) plus a few input-sized buffers; the model's
parameters are shared by all rows. :func:`probe_row_bytes` runs the pass on one row and
counts what autograd saves (``torch.autograd.graph.saved_tensors_hooks``), so the estimate
holds on any device and for any network; :func:`rows_within` turns it into rows per pass.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Set, Union

import torch
from torch import nn

Budget = Union[int, float, str, None]
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


def parse_budget(value: Budget) -> Optional[int]:
    """Bytes of a memory budget, or None for no budget.

    Parameters
    ----------
    value : int, float, str or None
        Bytes (``2**30``), or a number with a unit: ``'512MiB'``, ``'1.5 GB'``, ``'800M'``
        (k/M/G/T are powers of 1000, KiB/MiB/GiB/TiB powers of 1024; case-insensitive).

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        For a value that is not a positive, finite size (NaN and inf are refused); the
        message names the accepted forms.
    """
    if value is None:
        return None
    number: Optional[float] = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if number is None or not number >= 1 or not math.isfinite(number):
        raise ValueError("`memory_budget` must be a finite positive number of bytes or a size "
                         f"such as '512MiB', '2GB', '1.5GiB', got {value!r}")
    return int(number)


@dataclass(frozen=True)
class RowCost:
    """Bytes one row of a gradient pass costs: ``saved`` by autograd (activations kept
    for the backward), ``largest`` of those tensors (the size of the backward pass's
    biggest gradient), and the row's ``input`` and ``leaf`` gradient;
    ``weights``: bytes of the largest convolution weight (oneDNN reorders weights into
    transient copies, whatever the number of rows)."""

    saved: int
    largest: int
    input: int
    leaf: int
    weights: int = 0

    @property
    def per_row(self) -> int:
        """Estimated peak bytes per row: saved tensors, a gradient of the largest (the
        backward pass holds a layer's output and input gradients while the saved
        tensors behind it are still alive), the row's input twice (the path point and a
        layout copy) and its gradient twice (the gradient and a running sum)."""
        return self.saved + self.largest + 2 * self.input + 2 * self.leaf


def probe_row_bytes(model: nn.Module, run: Callable[[], torch.Tensor],
                    input_bytes: int) -> RowCost:
    """Run ``run()`` (one row's forward + gradient, returning the gradient) and count the
    bytes autograd saves for it, storages counted once, the model's parameters and
    buffers left out."""
    shared: Set[int] = {t.untyped_storage().data_ptr()
                        for t in list(model.parameters()) + list(model.buffers())}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in shared:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grad = run()
    conv = [p.numel() * p.element_size() for m in model.modules()
            if isinstance(m, nn.modules.conv._ConvNd) for p in m.parameters(recurse=False)]
    return RowCost(sum(seen.values()), max(seen.values(), default=0), input_bytes,
                   grad[0].numel() * grad.element_size(), max(conv, default=0))


def rows_within(budget: int, cost: RowCost, fixed: int, what: str) -> int:
    """Rows per pass that fit in ``budget`` bytes after ``fixed`` bytes and two copies of
    the largest convolution weight; ValueError when not even one row fits (the message
    gives the bytes one row needs)."""
    fixed += 2 * cost.weights
    rows = (budget - fixed) // max(1, cost.per_row)
    if rows < 1:
        need = (fixed + cost.per_row) / 2**20
        raise ValueError(f"`memory_budget` of {budget / 2**20:.1f} MiB is too small for "
                         f"{what}: one row needs about {need:.1f} MiB")
    return int(rows)
