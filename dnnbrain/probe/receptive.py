"""Receptive fields of a network's units: theoretical (from the geometry the forward pass
runs) and empirical (where the input gradient of one unit is nonzero).

>>> from dnnbrain.dnn.models import AlexNet
>>> from dnnbrain.probe.receptive import theoretical_rf
>>> rf = theoretical_rf(AlexNet(pretrained=False), 'conv5')
>>> rf.size, rf.jump, rf.start
((163, 163), (16, 16), (15.0, 15.0))
>>> rf.unit_box((1, 1, 1))           # unit (channel, row, col) from 1: top-left unit
(0, 0, 97, 97)

Coordinates
-----------
Input pixels are indexed from 0 (row ``y``, column ``x``), pixel centres at integers.
:meth:`ReceptiveField.box` and :meth:`ReceptiveField.centre` take a unit's ``row`` and
``col`` **counted from 0** (array indices of the layer's map); :meth:`ReceptiveField.unit_box`
takes dnnbrain's public unit notation ``(channel, row, col)`` **counted from 1**. Boxes are
``(top, left, bottom, right)`` with ``bottom``/``right`` exclusive (as ``PIL.Image.crop``
and numpy slices), clipped to the image.

The geometry is traced (:mod:`dnnbrain.probe.rftrace`) over one no-grad forward pass of a
zero input of ``input_size``: every conv/pool module *as executed*, functional pools, ResNet
shortcuts and Inception branches (their union), adaptive pools at that input size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..dnn.algo.calls import Call, call_index, check_call
from ..dnn.algo.forward import StopForward, eval_mode
from ..dnn.algo.gradients import VanillaSaliencyImage
from ..dnn.algo.target import check_unit
from .rftrace import GLOBAL, Field, FieldTracer

Size = Union[int, Tuple[int, int], None]
Box = Tuple[int, int, int, int]


def _num(v: float) -> Union[int, float]:
    return int(v) if float(v).is_integer() else float(v)


@dataclass(frozen=True)
class ReceptiveField:
    """The theoretical receptive field of a spatial layer's units.

    Attributes
    ----------
    layer : str
        Layer name.
    size : (int, int)
        Field height and width in input pixels (before clipping to the image).
    jump : (int, int)
        Input pixels between neighbouring units (the layer's cumulative stride); may be
        fractional after an adaptive pool whose input size does not divide.
    start : (float, float)
        Input coordinates ``(y, x)`` of the centre of unit ``(row, col) = (0, 0)``
        (negative where padding puts it outside the image).
    grid : (int, int)
        The layer's map size ``(H, W)`` at ``input_size``.
    input_size : (int, int)
        The input the geometry was traced at.
    spans_input : bool
        The layer sees the whole input from every unit (it merges a global signal, as a
        squeeze-excitation gate); :meth:`box` is then the whole image.
    """

    layer: str
    size: Tuple[Union[int, float], Union[int, float]]
    jump: Tuple[Union[int, float], Union[int, float]]
    start: Tuple[float, float]
    grid: Tuple[int, int]
    input_size: Tuple[int, int]
    spans_input: bool = False

    def _check(self, row: int, col: int) -> None:
        if not (0 <= row < self.grid[0] and 0 <= col < self.grid[1]):
            raise ValueError(f"unit (row, col) = ({row}, {col}) (from 0) is outside layer "
                             f"{self.layer!r}'s {self.grid[0]}x{self.grid[1]} map")

    def centre(self, row: int, col: int) -> Tuple[float, float]:
        """Input coordinates ``(y, x)`` of unit ``(row, col)``'s field centre (from 0)."""
        self._check(row, col)
        return (self.start[0] + row * self.jump[0], self.start[1] + col * self.jump[1])

    def box(self, row: int, col: int) -> Box:
        """``(top, left, bottom, right)`` input pixels of unit ``(row, col)`` (counted
        from 0), bottom/right exclusive, clipped to the image."""
        if self.spans_input:
            self._check(row, col)
            return (0, 0, self.input_size[0], self.input_size[1])
        cy, cx = self.centre(row, col)
        half = [(s - 1) / 2 for s in self.size]
        top, left = math.floor(cy - half[0] + 1e-9), math.floor(cx - half[1] + 1e-9)
        bottom = math.ceil(cy + half[0] - 1e-9) + 1
        right = math.ceil(cx + half[1] - 1e-9) + 1
        h, w = self.input_size
        return (max(top, 0), max(left, 0), min(bottom, h), min(right, w))

    def unit_box(self, unit: Tuple[int, int, int]) -> Box:
        """:meth:`box` of a spatial unit in dnnbrain's notation ``(channel, row, col)``,
        all counted from 1."""
        unit = check_unit(unit)
        if not isinstance(unit, tuple) or len(unit) != 3:
            raise ValueError(f"`unit` must be (channel, row, col) from 1, got {unit!r}")
        return self.box(unit[1] - 1, unit[2] - 1)


def _input_size(dnn: Any, input_size: Size) -> Tuple[int, int]:
    size = dnn.img_size if input_size is None else input_size
    if size is None:
        raise ValueError("`input_size` is needed: the network has no img_size; pass an "
                         "int or (height, width)")
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"`input_size` must be a positive int or (height, width), got "
                         f"{input_size!r}")
    return (int(size[0]), int(size[1]))


def _trace(dnn: Any, layers: Sequence[str], input_size: Size, channels: int,
           stop: Optional[Tuple[str, int]] = None) -> Tuple[Dict[str, List[Any]],
                                                            Dict[str, List[tuple]],
                                                            Tuple[int, int]]:
    """Fields of each layer's output at every call (``stop``: (layer, call) to stop at)."""
    hw = _input_size(dnn, input_size)
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"`channels` must be a positive int, got {channels!r}")
    param = next(iter(dnn.model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, channels, *hw, dtype=dtype, device=dnn.device)
    fields: Dict[str, List[Any]] = {n: [] for n in layers}
    shapes: Dict[str, List[tuple]] = {n: [] for n in layers}
    modules = {n: dnn.layer2module(n) for n in layers}
    tracer = FieldTracer(x)

    def hook_for(name: str):
        def hook(module, inputs, output):
            out = output if isinstance(output, torch.Tensor) else next(
                (o for o in (output if isinstance(output, (tuple, list)) else ())
                 if isinstance(o, torch.Tensor)), None)
            fields[name].append(tracer.field(out))
            shapes[name].append(tuple(out.shape) if out is not None else ())
            if stop is not None and stop[0] == name and len(fields[name]) == stop[1]:
                raise StopForward
        return hook

    handles = []
    try:
        for n, m in modules.items():
            handles.append(m.register_forward_hook(hook_for(n)))
        with eval_mode(dnn.model), torch.no_grad(), tracer:
            try:
                dnn.model(x)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return fields, shapes, hw


def _to_rf(layer: str, f: Any, shape: tuple, hw: Tuple[int, int]) -> Optional[ReceptiveField]:
    if not isinstance(f, Field):
        return None
    grid = (int(shape[f.dims[0]]), int(shape[f.dims[1]]))
    size = tuple(_num(s) for s in f.size)
    if f.spans:  # large enough to cover the image from every unit
        size = tuple(_num(max(size[a], 2 * max(f.start[a] + (grid[a] - 1) * f.jump[a],
                                               hw[a] - 1 - f.start[a]) + 1)) for a in (0, 1))
    return ReceptiveField(layer, size, tuple(_num(j) for j in f.jump),
                          tuple(float(s) for s in f.start), grid, hw, f.spans)


def theoretical_rf(dnn: Any, layer: str, input_size: Size = None, call: Call = "last",
                   channels: int = 3) -> ReceptiveField:
    """The theoretical receptive field of ``layer``'s units.

    Parameters
    ----------
    dnn : dnnbrain.dnn.models.DNN
        The network (never changed: mode and hooks are restored).
    layer : str
        Layer name or dotted module path; its output must be a spatial map.
    input_size : int, (int, int) or None
        Input height and width; None takes ``dnn.img_size``.
    call : 'first', 'last' or int
        Which call of a module that runs several times (from 1; -1 the last).
    channels : int
        Input channels of the dummy input.

    Returns
    -------
    ReceptiveField

    Raises
    ------
    ValueError
        If the layer does not run, or its output has no spatial geometry (flattened,
        token attention, pooled to a vector).
    """
    call = check_call(call) if call is not None else "last"
    dnn.layer2module(layer)
    stop = (layer, call) if isinstance(call, int) and call > 0 else None
    if call == "first":
        stop = (layer, 1)
    fields, shapes, hw = _trace(dnn, [layer], input_size, channels, stop)
    n = len(fields[layer])
    if n == 0:
        raise ValueError(f"`layer` {layer!r} does not run in the forward pass")
    i = call_index(call, n, layer) - 1
    rf = _to_rf(layer, fields[layer][i], shapes[layer][i], hw)
    if rf is None:
        raise ValueError(f"`layer` {layer!r} has no spatial receptive field: its output "
                         f"{shapes[layer][i]} is not a map of the input's space; choose a "
                         f"layer of {sorted(receptive_fields(dnn, hw, call, channels))}")
    return rf


def receptive_fields(dnn: Any, input_size: Size = None, call: Call = "last",
                     channels: int = 3) -> Dict[str, ReceptiveField]:
    """:func:`theoretical_rf` of every layer of ``dnn.layers`` whose output is a spatial
    map, from one traced forward pass, in table order."""
    call = check_call(call) if call is not None else "last"
    fields, shapes, hw = _trace(dnn, dnn.layers, input_size, channels)
    out: Dict[str, ReceptiveField] = {}
    for name in dnn.layers:
        n = len(fields[name])
        if n == 0 or (isinstance(call, int) and abs(call) > n):
            continue
        i = call_index(call, n, name) - 1
        rf = _to_rf(name, fields[name][i], shapes[name][i], hw)
        if rf is not None:
            out[name] = rf
    return out


@dataclass(frozen=True)
class EmpiricalRF:
    """Where one unit's input gradient is nonzero, over random inputs.

    Attributes
    ----------
    box : (int, int, int, int)
        ``(top, left, bottom, right)`` bounding box of the support (bottom/right exclusive).
    centre : (float, float)
        ``(y, x)`` centre of mass of the gradient magnitude.
    magnitude : numpy.ndarray
        ``(H, W)`` float32: mean over the inputs of ``|grad|`` summed over channels.
    support : numpy.ndarray
        ``(H, W)`` bool: ``magnitude > threshold * magnitude.max()``.
    """

    box: Box
    centre: Tuple[float, float]
    magnitude: np.ndarray
    support: np.ndarray


def empirical_rf(dnn: Any, layer: str, unit: Tuple[int, int, int], n: int = 8,
                 seed: int = 0, input_size: Size = None, threshold: float = 1e-6,
                 call: Call = "last", channels: int = 3) -> EmpiricalRF:
    """The empirical receptive field of spatial unit ``unit`` of ``layer``.

    The gradient of the unit with respect to the input is taken at ``n`` standard-normal
    inputs (network input space, seeded); its support and centre of mass are those of
    the mean magnitude (cf. Luo et al., "Understanding the Effective Receptive Field in
    Deep Convolutional Neural Networks", NeurIPS 2016).

    Parameters
    ----------
    dnn : dnnbrain.dnn.models.DNN
    layer : str
    unit : (int, int, int)
        ``(channel, row, col)``, counted from 1.
    n : int
        Number of random inputs.
    seed : int
        Seed of the random inputs.
    input_size : int, (int, int) or None
        None takes ``dnn.img_size``.
    threshold : float
        Relative threshold of the support (of the largest magnitude).
    call : 'first', 'last' or int
        Which call of the layer's module (see :mod:`dnnbrain.dnn.algo.calls`).
    channels : int
        Input channels.

    Returns
    -------
    EmpiricalRF

    Raises
    ------
    ValueError
        If ``unit`` is not a spatial unit, or its gradient is zero on every input.
    """
    if not isinstance(unit, tuple) or len(unit) != 3:
        raise ValueError(f"`unit` must be (channel, row, col) counted from 1, got {unit!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"`threshold` must be in [0, 1), got {threshold!r}")
    hw = _input_size(dnn, input_size)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, channels, *hw, generator=gen)
    method = VanillaSaliencyImage(dnn).set_layer(layer, unit, call=call)
    grad = method.backprop(x, preprocessed=True)
    mag = np.abs(grad).sum(1).mean(0).astype(np.float32)
    peak = float(mag.max())
    if peak == 0:
        raise ValueError(f"the input gradient of `unit` {unit} of {layer!r} is zero on all "
                         f"{n} inputs (a dead unit): pick another unit or raise `n`")
    support = mag > threshold * peak
    rows, cols = np.nonzero(support.any(1))[0], np.nonzero(support.any(0))[0]
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    centre = (float((yy * mag).sum() / mag.sum()), float((xx * mag).sum() / mag.sum()))
    return EmpiricalRF(box, centre, mag, support)
