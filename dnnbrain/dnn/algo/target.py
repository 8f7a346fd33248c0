"""Targets: which unit of which layer a saliency map explains.

Units count from 1, as in DNNBrain (``fc3`` unit 540 is ImageNet class index 539). A unit is

* ``c`` (int): channel ``c``; a conv channel's activation map is reduced over space by
  ``'mean'`` (DNNBrain's default) or ``'max'``;
* ``(c, row, col)`` (tuple of 3 ints, all from 1): one spatial unit of a conv layer;
* ``'predicted'``: per image, the unit with the largest (reduced) activation, i.e. the
  predicted class on an output layer;
* ``'label'``: per image, that image's own class: unit ``label + 1`` of a stimulus file's
  ``label`` column (class indices from 0, DNNBrain's format), or the ``labels`` given with
  the call (:meth:`~dnnbrain.dnn.algo.SaliencyImage.labelled`, ``saliency(..., labels=)``),
  counted from ``unit_base``;
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

``unit_base`` (0 or 1, default 1) says how the numbers given count: 1 (dnnbrain's and
DNNBrain's convention) or 0 (class indices as Slideflow, PyHealth, torchvision datasets and
most PyTorch code count them). Every number of a unit (channel, row, col, class-token
feature) and every given label is shifted once, where it is given, by
:func:`from_base`; everything after that -- the engine, file names, manifests -- sees
1-based units only, so files never mix conventions.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..tokens import TokenLayout, patches, prefix_tokens, require_grid

Unit = Union[int, Tuple[int, int, int], Tuple[str, int], str,
             Callable[[torch.Tensor], torch.Tensor]]
REDUCE = ("mean", "max")
#: The per-image unit: each image's own class (see :func:`labels_to_units`).
LABEL = "label"
#: Values ``unit_base`` accepts.
UNIT_BASES = (0, 1)


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
    if unit == "predicted" or unit == LABEL or callable(unit):
        return unit
    raise TypeError(f"`{name}` must be an int channel (from 1), a (channel, row, col) tuple,"
                    f" ('cls', channel), 'predicted', 'label', a callable or a list of these,"
                    f" got {unit!r}")


def check_unit_base(unit_base: Any, name: str = "unit_base") -> int:
    """``unit_base`` checked: 0 or 1 (an int, not a bool).

    Raises
    ------
    ValueError
        Naming ``name``, the value and the choices.
    """
    if not _is_int(unit_base) or int(unit_base) not in UNIT_BASES:
        raise ValueError(f"`{name}` must be 0 (class indices from 0, as Slideflow and "
                         f"PyHealth count) or 1 (dnnbrain's default), got {unit_base!r}")
    return int(unit_base)


def from_base(unit: Any, unit_base: int = 1) -> Any:
    """``unit`` (one or a list, as :func:`check_units` takes them) counted from
    ``unit_base``, as dnnbrain counts it (from 1): every int of a channel, a
    ``(channel, row, col)`` or a ``('cls', feature)`` plus ``1 - unit_base``;
    ``'predicted'``, ``'label'`` and callables unchanged (``'label'`` is shifted where its
    labels are given, :func:`labels_to_units`). Nothing else is checked here.

    >>> from_base([0, (2, 0, 0), ('cls', 4), 'label'], unit_base=0)
    [1, (3, 1, 1), ('cls', 5), 'label']
    """
    shift = 1 - check_unit_base(unit_base)
    if shift == 0:
        return unit
    if isinstance(unit, np.ndarray):
        unit = unit.tolist()
    if isinstance(unit, (list, range)):
        return [from_base(u, unit_base) for u in unit]
    if _is_int(unit):
        return int(unit) + shift
    if isinstance(unit, tuple) and len(unit) == 2 and isinstance(unit[0], str) and \
            _is_int(unit[1]):
        return (unit[0], int(unit[1]) + shift)
    if isinstance(unit, tuple) and all(_is_int(v) for v in unit):
        return tuple(int(v) + shift for v in unit)
    return unit


def labels_to_units(labels: Any, n: int, unit_base: int = 1, n_units: int = 0,
                    name: str = "labels") -> List[int]:
    """Per-image class labels -> 1-based units, checked.

    Parameters
    ----------
    labels : sequence, numpy.ndarray or torch.Tensor of int
        One label per image, ``(n,)``.
    n : int
        Number of images.
    unit_base : {0, 1}
        How the labels count: 1 (label ``k`` is unit ``k``) or 0 (class indices from 0:
        label ``k`` is unit ``k + 1``).
    n_units : int
        Units of the target layer when known (0: unchecked).
    name : str
        What the labels are called in messages.

    Returns
    -------
    list of int
        ``n`` units, from 1.

    Raises
    ------
    ValueError
        On a wrong count, non-integer labels, or a label out of range (the message
        says which ``unit_base`` was used and suggests the other when it would fit).
    """
    base = check_unit_base(unit_base)
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:  # (N, 1) label columns, as loaders give them
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"`{name}` must be one integer class label per image, got "
                         f"{arr.dtype} of shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"`{name}` must hold one label per image ({n}), got {len(arr)}")
    units = [int(v) + 1 - base for v in arr]
    lo, hi = (min(units), max(units)) if units else (1, 1)
    if lo < 1 or (n_units and hi > n_units):
        rng = f"{base}..{n_units - 1 + base}" if n_units else f">= {base}"
        other = 1 - base
        fits = lo + base - other >= 1 and (not n_units or hi + base - other <= n_units)
        hint = f"; if they count from {other}, pass unit_base={other}" if fits else ""
        bad = int(arr[int(np.argmin(units))] if lo < 1 else arr[int(np.argmax(units))])
        raise ValueError(f"`{name}` counted from unit_base={base} must be in {rng}, got "
                         f"{bad}{hint}")
    return units


def check_units(unit: Any, n_units: int = 0) -> Tuple[List[Unit], bool]:
    """Normalise ``unit`` to a list; the bool says whether several were asked for."""
    if isinstance(unit, np.ndarray):
        unit = unit.tolist()
    if isinstance(unit, (list, range)):
        if len(unit) == 0:
            raise ValueError("`unit` is an empty list")
        return [check_unit(u, n_units, f"unit[{i}]") for i, u in enumerate(unit)], True
    return [check_unit(unit, n_units)], False


def check_reduce(reduce: Any) -> str:
    """``reduce`` (how a conv channel's map becomes one number) when it is one of
    :data:`REDUCE`, else ValueError naming the choices (and, for ``'maxabs'`` /
    ``'sumabs'``, where those belong: they reduce a map's channels)."""
    if reduce not in REDUCE:
        hint = ("; 'maxabs' and 'sumabs' reduce a map's channels: "
                "dnnbrain.viz.reduce_channels(maps, 'maxabs')"
                if reduce in ("maxabs", "sumabs") else "")
        raise ValueError(f"`reduce` must be one of {list(REDUCE)} (how the unit's "
                         f"activation map becomes one number), got {reduce!r}{hint}")
    return reduce


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
        if isinstance(u, str) and u == LABEL:
            raise ValueError("`unit` 'label' needs each image's label: pass `labels` (or a "
                             "Stimulus with a label column) to saliency(), or call "
                             "backprop inside `with method.labelled(labels):`")
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
