"""What feature visualisation maximises: a unit's score in one early-stopped forward pass.

Units are the engine's (:mod:`dnnbrain.dnn.algo.target`, counted from 1): a channel ``c``
(reduced over space by ``'mean'`` or ``'max'``), a spatial unit ``(c, row, col)``, a class
(a channel of an output layer), ``('cls', c)`` on a token layer, a callable on the layer
output, and here also a *direction*: a 1-D float array or tensor ``v`` of length ``C``,
scored as the projection of the layer's activation vector at each position onto
``v / |v|``, averaged over positions (Olah et al. 2017's "neuron direction"; on a
``(N, C)`` layer just the projection).

The forward pass is the engine's (:func:`dnnbrain.dnn.algo.forward.pass_hooks`): it stops
at the target layer's explained call, so nothing after it is computed; the hooks last one
pass.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..dnn.algo.calls import CallCounts
from ..dnn.algo.checks import input_errors
from ..dnn.algo.forward import StopForward, pass_hooks
from ..dnn.algo.target import check_unit, select, static_size
from ..dnn.models import DNN
from ..dnn.tokens import layout_of, patches


def _is_direction(u: Any) -> bool:
    if isinstance(u, torch.Tensor):
        return u.ndim == 1 and u.dtype.is_floating_point
    return isinstance(u, np.ndarray) and u.ndim == 1 and u.dtype.kind == "f"


def _direction(u: Any, n_units: int, name: str) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(u.detach().cpu() if isinstance(u, torch.Tensor) else u,
                                   dtype=np.float32))
    if len(v) == 0 or not bool(torch.isfinite(v).all()) or float(v.norm()) == 0:
        raise ValueError(f"`{name}` as a direction must be a finite, nonzero 1-D float vector, "
                         f"got {len(v)} values with norm {float(v.norm()):g}")
    if n_units and len(v) != n_units:
        raise ValueError(f"`{name}` as a direction must have {n_units} values (the layer's "
                         f"channels), got {len(v)}")
    return v / v.norm()


def parse_units(unit: Any, module: nn.Module) -> Tuple[List[Any], bool]:
    """``unit`` -> a list of checked units (directions as unit-norm float32 tensors) and
    whether several were asked for (a list, a range, a 1-D int array or a 2-D float array
    of directions).

    Raises
    ------
    ValueError or TypeError
        One line naming the unit, its value and the valid forms; ``'predicted'`` is not a
        target here (an image has no prediction before it exists).
    """
    size = static_size(module)
    many = isinstance(unit, (list, range)) or (
        isinstance(unit, (np.ndarray, torch.Tensor)) and not _is_direction(unit))
    if isinstance(unit, (np.ndarray, torch.Tensor)) and many:
        if unit.ndim == 2 and (unit.dtype.kind == "f" if isinstance(unit, np.ndarray)
                               else unit.dtype.is_floating_point):
            unit = list(unit)
        elif unit.ndim == 1:
            unit = unit.tolist()
        else:
            raise ValueError(f"`unit` array must be 1-D (units, or one direction) or 2-D "
                             f"float (directions), got shape {tuple(unit.shape)}")
    items = list(unit) if many else [unit]
    if not items:
        raise ValueError("`unit` is an empty list")
    out = []
    for i, u in enumerate(items):
        name = f"unit[{i}]" if many else "unit"
        if isinstance(u, str) and u == "predicted":
            raise ValueError(f"`{name}` 'predicted' has no meaning for feature visualisation;"
                             " give a channel, (channel, row, col), ('cls', c), a direction "
                             "or a callable")
        out.append(_direction(u, size, name) if _is_direction(u) else check_unit(u, size, name))
    return out, many


def direction_score(out: torch.Tensor, v: torch.Tensor, layer: str) -> torch.Tensor:
    """``(B,)``: the projection of ``out`` ``(B, C, ...)`` onto the unit vector ``v``
    ``(C,)`` at each position, averaged over positions."""
    if out.shape[1] != len(v):
        raise ValueError(f"`unit` direction has {len(v)} values, layer {layer!r} has "
                         f"{out.shape[1]} channels")
    flat = out.flatten(2) if out.ndim > 2 else out[..., None]
    return torch.einsum("bcp,c->bp", flat, v.to(flat)).mean(1)


def gram_similarity(act: torch.Tensor, groups: int) -> torch.Tensor:
    """Diversity penalty (Olah et al. 2017): for each group of ``act``'s rows (``(B, C,
    ...)`` split into ``groups`` equal consecutive groups), the mean over images of the
    summed cosine similarity of its channel Gram matrix to the other images' Gram
    matrices; summed over groups. 0 when every group has one image."""
    b = act.shape[0]
    n = b // groups
    if n < 2:
        return act.new_zeros(())
    flat = act.flatten(2) if act.ndim > 2 else act[..., None]
    gram = torch.bmm(flat, flat.transpose(1, 2)).flatten(1)
    gram = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-10)
    gram = gram.reshape(groups, n, -1)
    sim = torch.bmm(gram, gram.transpose(1, 2))
    off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
    return (off / n).sum()


@contextlib.contextmanager
def _capture_output(module: Optional[nn.Module]) -> Iterator[dict]:
    """The latest output of ``module`` in a forward pass, in the graph (not detached); a
    copy, so a later in-place layer (``ReLU(inplace=True)``) cannot change it. The hook
    lasts the ``with`` block."""
    cap: dict = {}
    if module is None:
        yield cap
        return

    def hook(mod, inputs, output):
        cap["act"] = output.clone() if isinstance(output, torch.Tensor) else output

    handle = module.register_forward_hook(hook)
    try:
        yield cap
    finally:
        handle.remove()


class UnitPass:
    """One forward pass of a batch of images to the target layer and each row's score.

    Rows are grouped by unit: ``len(units)`` consecutive groups of ``n`` rows each.

    Parameters
    ----------
    dnn : DNN
        The network; used in the mode the caller set (see
        :func:`dnnbrain.dnn.algo.forward.eval_mode`).
    layer : str
        Target layer (name or dotted path).
    units : list
        From :func:`parse_units`.
    n : int
        Rows per unit.
    reduce : {'mean', 'max'}
        A channel's reduction over space.
    call : None, 'first', 'last' or int
        The target module's explained call (:mod:`dnnbrain.dnn.algo.calls`).
    diversity_layer : str or None
        Layer whose output :meth:`__call__` also returns (for the diversity penalty);
        None: the target's.
    """

    def __init__(self, dnn: DNN, layer: str, units: Sequence[Any], n: int, reduce: str,
                 call: Any = None, diversity_layer: Optional[str] = None) -> None:
        self.dnn, self.layer, self.units, self.n = dnn, layer, list(units), n
        self.reduce, self.call = reduce, call
        self.module = dnn.layer2module(layer)
        self.div_layer = diversity_layer
        self.div_module = (None if diversity_layer is None else
                           dnn.layer2module(diversity_layer, "diversity_layer"))
        if self.div_module is self.module:
            self.div_module = None
        self._calls = CallCounts()
        self._stop: Optional[int] = None

    def _run(self, x: torch.Tensor, stop_at: int) -> Tuple[dict, dict]:
        with pass_hooks(self.module, stop_at) as cap, _capture_output(self.div_module) as div, \
                input_errors(self.dnn, x, "size"):
            try:
                self.dnn.model(x)
            except StopForward:
                pass
        if "output" not in cap:
            raise ValueError(f"target layer {self.layer!r} did not run in the forward pass"
                             if not cap["calls"] else f"`call` {self.call} of layer "
                             f"{self.layer!r}: the layer runs {cap['calls']} times")
        return cap, div

    def __call__(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(len(units) * n,)`` and the diversity layer's output for ``x``
        ``(len(units) * n, 3, H, W)`` (normalised network input on the model's device)."""
        if self._stop is None:
            with input_errors(self.dnn, x, "size"):
                self._stop = self._calls.stop_at(
                    self.call, self.layer, self.module, (tuple(x.shape[1:]),),
                    lambda: self.dnn.model(x[:1].detach()), "visualise")
        cap, div = self._run(x, self._stop)
        out = cap["output"]
        lay = layout_of(self.dnn, self.layer, out, tuple(x.shape[-2:]))
        parts = []
        for k, u in enumerate(self.units):
            sl = slice(k * self.n, (k + 1) * self.n)
            if isinstance(u, torch.Tensor):
                view = out[sl] if lay is None else patches(out[sl], lay)
                parts.append(direction_score(view, u, self.layer))
            else:
                parts.append(select(out[sl], [u], self.layer, self.reduce, lay))
        if self.div_module is not None:
            if "act" not in div:
                raise ValueError(f"`diversity_layer` {self.div_layer!r} does not run before "
                                 f"the target layer {self.layer!r}")
            act = div["act"]
            dlay = layout_of(self.dnn, self.div_layer, act, tuple(x.shape[-2:]))
        else:
            act, dlay = out, lay
        if not isinstance(act, torch.Tensor):
            raise ValueError(f"`diversity_layer` {self.div_layer or self.layer!r} returns "
                             f"{type(act).__name__}, not a tensor")
        return torch.cat(parts), (act if dlay is None else patches(act, dlay))
