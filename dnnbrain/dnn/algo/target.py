"""Targets: which unit of which layer a saliency map explains.

Units count from 1, as in DNNBrain (``fc3`` unit 540 is ImageNet class index 539). A unit is

* ``c`` (int): channel ``c``; a conv channel's activation map is reduced over space by
  ``'mean'`` (DNNBrain's default) or ``'max'``;
* ``(c, row, col)`` (tuple of 3 ints, all from 1): one spatial unit of a conv layer;
* ``'predicted'``: per image, the unit with the largest (reduced) activation, i.e. the
  predicted class on an output layer;
* ``('cls', c)``: feature ``c`` of the class token (the first prefix token) of a token
  layer;
* a callable ``f(layer_output) -> (N,) tensor``: any scalar of the layer's output (as the
  layer gives it: ``(N, L, C)`` tokens stay tokens).

On a token layer (a ViT block's ``(N, L, C)``, a Swin stage's ``(N, H, W, C)``; see
:mod:`dnnbrain.dnn.tokens`) ``c`` and ``(c, row, col)`` address the patch tokens on their
grid, as on a conv map: channel ``c`` is reduced over the patch tokens only (class and
register tokens left out), ``(c, row, col)`` is feature ``c`` of the patch at grid
position ``(row, col)`` (from 1), and ``'predicted'`` takes the largest patch-reduced
feature.

A list of these is several units; their maps come out along an extra axis.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..tokens import TokenLayout, patches, prefix_tokens, require_grid

Unit = Union[int, Tuple[int, int, int], Tuple[str, int], str,
             Callable[[torch.Tensor], torch.Tensor]]
REDUCE = ("mean", "max")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_unit(unit: Any, n_units: int = 0, name: str = "unit") -> Unit:
    """Validate one unit (statically). ``n_units`` > 0 also bounds the channel.

    Raises
    ------
    ValueError or TypeError
        Naming ``name``, the bad value and the valid forms or range.
    """
    if _is_int(unit):
        unit = int(unit)
        if unit < 1 or (n_units and unit > n_units):
            rng = f"1..{n_units}" if n_units else ">= 1"
            raise ValueError(f"`{name}` must be in {rng} (units count from 1), got {unit}")
        return unit
    if isinstance(unit, tuple) and len(unit) == 2 and isinstance(unit[0], str):
        if unit[0] != "cls" or not _is_int(unit[1]):
            raise ValueError(f"`{name}` as a pair must be ('cls', channel), got {unit!r}")
        return ("cls", check_unit(unit[1], n_units, name))
    if isinstance(unit, tuple):
        if len(unit) != 3 or not all(_is_int(v) for v in unit):
            raise ValueError(f"`{name}` as a tuple must be (channel, row, col) ints, got "
                             f"{unit!r}")
        check_unit(unit[0], n_units, name)
        if min(unit[1:]) < 1:
            raise ValueError(f"`{name}` row and col count from 1, got {unit!r}")
        return tuple(int(v) for v in unit)
    if unit == "predicted" or callable(unit):
        return unit
    raise TypeError(f"`{name}` must be an int channel (from 1), a (channel, row, col) tuple,"
                    f" ('cls', channel), 'predicted', a callable or a list of these, got "
                    f"{unit!r}")


def check_units(unit: Any, n_units: int = 0) -> Tuple[List[Unit], bool]:
    """Normalise ``unit`` to a list; the bool says whether several were asked for."""
    if isinstance(unit, np.ndarray):
        unit = unit.tolist()
    if isinstance(unit, (list, range)):
        if len(unit) == 0:
            raise ValueError("`unit` is an empty list")
        return [check_unit(u, n_units, f"unit[{i}]") for i, u in enumerate(unit)], True
    return [check_unit(unit, n_units)], False


def static_size(module: torch.nn.Module) -> int:
    """Number of output units a module is known to have, or 0 when unknown."""
    for attr in ("out_channels", "out_features", "num_features"):
        value = getattr(module, attr, 0)
        if _is_int(value) and value > 0:
            return int(value)
    return 0


def select(out: torch.Tensor, units: Sequence[Unit], layer: str,
           reduce: str = "mean", layout: Optional[TokenLayout] = None) -> torch.Tensor:
    """Scores ``(B,)`` of each row's unit in a layer output ``(B, C, ...)``.

    ``units`` has one entry per row (or a single entry for all rows). ``layout``: the
    output's token layout (:func:`dnnbrain.dnn.tokens.layout_of`), None for ``(B, C, ...)``.
    """
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"layer {layer!r} returns {type(out).__name__}, not a tensor; pick "
                        "a layer whose output is one tensor")
    if out.ndim < 2:
        raise ValueError(f"layer {layer!r} output has shape {tuple(out.shape)}; need (N, C, ...)")
    raw = out
    if layout is not None:
        out = patches(raw, layout)
    n, c = out.shape[:2]
    if len(units) == 1 and n > 1:
        units = list(units) * n
    reduced = None

    def red() -> torch.Tensor:
        nonlocal reduced
        if reduced is None:
            reduced = reduce_channels(out, reduce)
        return reduced

    groups: dict = {}  # kind -> (row indices, units); one gather per kind, not per row
    for b, u in enumerate(units):
        if isinstance(u, str):
            key = "predicted"
        elif callable(u):
            key = ("callable", id(u))
        elif isinstance(u, tuple):
            key = "cls" if len(u) == 2 else "spatial"
        else:
            key = "channel"
        groups.setdefault(key, ([], []))
        groups[key][0].append(b)
        groups[key][1].append(u)
    scores = out.new_zeros(n)
    for key, (rows, group) in groups.items():
        idx = torch.tensor(rows, device=out.device)
        if key == "predicted":
            vals = red()[idx].amax(1)
        elif key == "channel":
            if max(group) > c:
                raise ValueError(f"`unit` must be in 1..{c} for layer {layer!r} (units count"
                                 f" from 1), got {max(group)}")
            vals = red()[idx, torch.tensor(group, device=out.device) - 1]
        elif key == "cls":
            pre = None if layout is None else prefix_tokens(raw, layout)
            if pre is None or pre.shape[1] == 0:
                raise ValueError(f"`unit` {group[0]} needs a token layer with a class token;"
                                 f" {layer!r} gives {tuple(raw.shape)} without one")
            if max(u[1] for u in group) > c:
                raise ValueError(f"`unit` must be ('cls', 1..{c}) for layer {layer!r}, got "
                                 f"{max(group, key=lambda u: u[1])}")
            vals = pre[idx, 0, torch.tensor([u[1] for u in group], device=out.device) - 1]
        elif key == "spatial":
            if layout is not None:
                require_grid(layout, layer, raw)
            if out.ndim != 4:
                raise ValueError(f"spatial `unit` {group[0]} needs a (N, C, H, W) layer "
                                 f"output; {layer!r} gives {tuple(out.shape)}")
            h, w = out.shape[2:]
            for u in group:
                if u[0] > c or u[1] > h or u[2] > w:
                    raise ValueError(f"`unit` {u} is out of range for layer {layer!r}: "
                                     f"channel 1..{c}, row 1..{h}, col 1..{w}")
            cc, rr, ww = (torch.tensor(v, device=out.device) - 1 for v in zip(*group))
            vals = out[idx, cc, rr, ww]
        else:
            val = group[0](raw)
            if not isinstance(val, torch.Tensor) or val.shape != (n,):
                raise ValueError(f"a callable `unit` must return a ({n},) tensor, got "
                                 f"{getattr(val, 'shape', type(val).__name__)}")
            vals = val[idx]
        scores = scores.index_copy(0, idx, vals.to(scores.dtype))
    return scores


def reduce_channels(out: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """``(B, C, ...)`` layer output -> ``(B, C)``: each channel's ``mean`` or ``max`` over
    space (a ``(B, C)`` output is returned as it is)."""
    flat = out.flatten(2) if out.ndim > 2 else out[..., None]
    return flat.mean(-1) if reduce == "mean" else flat.amax(-1)


def predicted_units(out: torch.Tensor, reduce: str = "mean",
                    layout: Optional[TokenLayout] = None) -> List[int]:
    """The 1-based unit with the largest reduced activation, per row of ``out``
    (patch tokens only on a token layer with ``layout``)."""
    red = reduce_channels(out if layout is None else patches(out, layout), reduce)
    return (red.argmax(1) + 1).tolist()


def resolve_predicted(out: torch.Tensor, units: Sequence[Unit], reduce: str = "mean",
                      layout: Optional[TokenLayout] = None) -> List[Unit]:
    """Replace ``'predicted'`` by each row's predicted unit (1-based) in the target layer's
    output ``out`` of the clean input, so perturbed copies or path points keep the target."""
    if not any(isinstance(u, str) for u in units):
        return list(units)
    pred = predicted_units(out, reduce, layout)
    units = list(units) * len(pred) if len(units) == 1 else list(units)
    return [pred[i] if isinstance(u, str) else u for i, u in enumerate(units)]
