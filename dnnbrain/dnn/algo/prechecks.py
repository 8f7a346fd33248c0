"""What the engine checks and measures before a call's passes, for a saliency method
(``method``, a :class:`~dnnbrain.dnn.algo.engine.SaliencyImage`).

* :func:`check_input`: that the method can run at its target on inputs of one shape
  (the network takes the input, the explained ``call`` exists, the ReLU rule finds no
  other activation, one row fits the ``memory_budget``), by one-row probe passes;
  :func:`check_once` runs the method's own ``check_input`` once per shape and target;
* :func:`rows_per_pass`: rows per gradient pass, from ``batch_size`` or, with a
  ``memory_budget``, from the measured cost of one row (:mod:`dnnbrain.dnn.algo.budget`);
  :func:`check_budget`: ValueError when not even one row fits.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch

from .budget import RowCost, probe_row_bytes, rows_within
from .calls import call_index, count_calls
from .checks import input_errors
from .forward import eval_mode, memory_format, method_hooks, run_forward, stop_call, to_layout
from .relu import relu_override
from .target import Unit


def probe_input(method: Any, shape: Tuple[int, ...]) -> torch.Tensor:
    """One blank input row ``(1, *shape)`` on ``method``'s device, as the passes get it.

    Parameters
    ----------
    method : SaliencyImage
        Its network gives the device.
    shape : tuple of int
        ``(3, H, W)``: one preprocessed network input.

    Returns
    -------
    torch.Tensor
        Zeros, float32.
    """
    return torch.zeros((1,) + tuple(shape), device=method.dnn.device)


def check_input(method: Any, shape: Tuple[int, ...]) -> None:
    """The checks of :meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.check_input` that
    every method shares, on a probe row of ``shape``.

    Parameters
    ----------
    method : SaliencyImage
        Its network, target, ``relu_mode`` / ``activations`` and ``memory_budget``.
    shape : tuple of int
        ``(3, H, W)``: one preprocessed network input.

    Raises
    ------
    ValueError
        ``shape`` not a tuple of positive ints; no target; an input the network cannot
        take; a ``call`` of the target that does not exist; a non-ReLU activation under a
        ReLU rule (:mod:`dnnbrain.dnn.algo.relu`); a ``memory_budget`` too small for one
        row (not for methods that share units: they keep ``batch_size``).
    """
    if not (isinstance(shape, tuple) and shape and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ValueError(f"`shape` must be a tuple of positive ints (C, H, W), got "
                         f"{shape!r}")
    if method.layer is None:
        raise ValueError("no target: call set_layer(layer, unit) first")
    x = probe_input(method, shape)
    module = method.dnn.layer2module(method.layer)
    with eval_mode(method.dnn.model), input_errors(method.dnn, x):
        if isinstance(method.call, int) and method.call > 0:  # the explained call exists
            n = count_calls(module, lambda: method.dnn.model(to_layout(method, x)))
            call_index(method.call, n, method.layer)
        else:  # counts the calls where the choice needs it (kept for the passes)
            stop_call(method, module, x)
        if method.relu_mode is not None and method.activations == "relu":
            check_rule(method, x)
    if not method.shares_units:  # as run_rows: perturbation methods keep batch_size
        check_budget(method, x)


def check_rule(method: Any, x: torch.Tensor) -> None:
    """One forward of the probe row ``x`` under ``method.relu_mode``, up to the target:
    the ValueError naming any non-ReLU elementwise activation comes before any work
    (see :mod:`dnnbrain.dnn.algo.relu`).

    Parameters
    ----------
    method : SaliencyImage
        Its network, target, ``relu_mode`` and ``activations``.
    x : torch.Tensor
        ``(1, 3, H, W)`` probe row (:func:`probe_input`).
    """
    with method_hooks(method, x=x), torch.enable_grad():
        xg = to_layout(method, x.detach()).requires_grad_(True)
        with relu_override(method.relu_mode, method.activations, method.dnn.model):
            run_forward(method, xg)


def check_budget(method: Any, x: torch.Tensor, **kw: Any) -> None:
    """``method.rows_per_pass`` for one row and one map: ValueError when not even that
    fits in ``method.memory_budget`` (nothing to check without a budget).

    Parameters
    ----------
    method : SaliencyImage
        Its ``memory_budget`` and target units.
    x : torch.Tensor
        ``(1, ...)`` probe row, as the pass gets it.
    **kw
        Passed to ``rows_per_pass`` as the pass calls it (``to_layer``, ``at_output``,
        ``images``, ``keep_values``).
    """
    if method.memory_budget is not None:
        outputs, method._outputs = method._outputs, max(1, method._outputs)
        try:
            method.rows_per_pass(x, method.probe_units()[:1], **kw)
        finally:
            method._outputs = outputs


def check_once(method: Any, shape: Tuple[int, ...]) -> None:
    """``method.check_input(shape)`` (the method's own, with its extra checks) unless it
    passed already for this shape and target.

    Parameters
    ----------
    method : SaliencyImage
        Keeps the passed (shape, target) pairs.
    shape : tuple of int
        ``(3, H, W)``: one network input as the passes get it.
    """
    key = (shape, method.layer, method.reduce, getattr(method, "call", None),
           tuple(repr(u) for u in method.units))
    if key not in method._checked:
        method.check_input(shape)
        method._checked.add(key)


def rows_per_pass(method: Any, x: torch.Tensor, units: Sequence[Unit],
                  to_layer: Optional[str] = None, at_output: Optional[str] = None,
                  images: int = 0, keep_values: bool = True) -> int:
    """Rows per gradient pass of ``method``: its ``batch_size``, or with a
    ``memory_budget`` the most rows of ``x``'s shape that fit (at most ``batch_size``
    when it was given).

    Parameters
    ----------
    method : SaliencyImage
        Its ``batch_size``, ``memory_budget``, target and cost cache.
    x : torch.Tensor
        ``(B, ...)`` rows of the pass (one is probed).
    units : sequence of units
        Their units (the first is probed).
    to_layer, at_output, keep_values
        As the pass calls :meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.gradient`.
    images : int
        Images of the pass's caller: six input-sized buffers each (path ends, sums).

    Returns
    -------
    int
        Rows per pass, at least 1.

    Raises
    ------
    ValueError
        When not even one row fits in ``memory_budget``.

    Notes
    -----
    The cost of a row is measured once per input shape and leaf by a one-row probe
    (:func:`dnnbrain.dnn.algo.budget.probe_row_bytes`). Besides the ``images`` buffers,
    four input-sized buffers per map of the whole call (the maps, their concatenation
    and copies) are set aside first.
    """
    if method.memory_budget is None:
        return method.batch_size
    key = (tuple(x.shape[1:]), x.dtype, x.device, method.layer, method.call, method.reduce,
           to_layer, at_output, keep_values, method.relu_mode, memory_format(method, x))
    cost: Optional[RowCost] = method._costs.get(key)
    if cost is None:
        row, unit = x[:1], list(units[:1])
        cost = probe_row_bytes(
            method.dnn.model, lambda: method.gradient(row, unit, to_layer, method.relu_mode,
                                                      at_output, keep_values=keep_values)[0],
            row.numel() * row.element_size())
        method._costs[key] = cost
    fixed = (6 * images + 4 * method._outputs) * cost.input
    rows = rows_within(method.memory_budget, cost, fixed,
                       f"{type(method).__name__} at {method.layer!r}")
    return min(rows, method.batch_size) if method._capped else rows
