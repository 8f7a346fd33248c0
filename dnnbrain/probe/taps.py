"""Many layers in one forward pass: the layer specs and the hooks of one batch.

A layer is given as a name from ``dnn.layers`` or a dotted module path, optionally with
``@<call>`` (``relu@first``, ``layer1.0.relu@2``, ``relu@-1``) to pick which call of a
module that runs several times in one forward pass is recorded; the call forms, the
default (the last call, as captum and the saliency engine take it) and the counting are
:mod:`dnnbrain.dnn.algo.calls`'. Each recorded output is turned into the stored array at
once, inside the hook:

* token layers (a ViT block's ``(N, L, C)``, a Swin stage's ``(N, H, W, C)``) become their
  patch grid ``(N, C, H, W)`` (:func:`dnnbrain.dnn.tokens.patches`; prefix tokens dropped),
  so rows and columns mean what they mean in unit notation;
* ``units``: a channel subset (ints from 1) keeps ``(N, U, ...)``; spatial units
  ``(c, row, col)`` (from 1) give ``(N, U)``;
* ``pool``: ``'mean'`` or ``'max'`` over every axis after the channel one (patch tokens
  only on token layers) gives ``(N, C)``; ``'none'`` keeps the map.

The forward pass stops (:class:`~dnnbrain.dnn.algo.forward.StopForward`) as soon as every
requested layer has been recorded: nothing after the deepest one is computed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..dnn.algo.calls import Call, call_index, check_call, needs_count
from ..dnn.algo.checks import input_errors
from ..dnn.algo.forward import StopForward, eval_mode, input_layout
from ..dnn.algo.target import check_unit, reduce_channels, static_size
from ..dnn.tokens import layout_of, patches

__all__ = ["POOLS", "LayerSpec", "parse_layers", "Taps"]

#: Pooling over space the probes take.
POOLS = ("none", "mean", "max")


@dataclass(frozen=True)
class LayerSpec:
    """One requested layer.

    Attributes
    ----------
    key : str
        The layer as given (``'conv5'``, ``'relu@first'``): the key of its results.
    layer : str
        The layer name or dotted path without the call.
    call : None, 'first', 'last' or int
        Which call of its module is recorded (None: the last).
    module : nn.Module
        The module behind it.
    units : tuple or None
        None (every unit), channel ints or ``(c, row, col)`` tuples, all from 1.
    """

    key: str
    layer: str
    call: Call
    module: nn.Module
    units: Optional[tuple]

    @property
    def spatial(self) -> bool:
        """True when the units are ``(c, row, col)`` spatial units."""
        return bool(self.units) and isinstance(self.units[0], tuple)


def _split_call(text: str, name: str) -> Tuple[str, Call]:
    layer, sep, call = text.rpartition("@")
    if not sep:
        return text, None
    if call in ("first", "last"):
        return layer, call
    try:
        return layer, check_call(int(call), f"{name} call")
    except ValueError:
        raise ValueError(f"`{name}` {text!r}: the part after '@' must be 'first', 'last' or "
                         "a nonzero int (from 1; -1 is the last call)") from None


def _check_units(units: Any, spec_layer: str, module: nn.Module) -> Optional[tuple]:
    if units is None:
        return None
    if isinstance(units, (int, tuple)) and not isinstance(units, bool):
        units = [units]
    if not isinstance(units, (list, range)) or len(units) == 0:
        raise ValueError(f"`units` of layer {spec_layer!r} must be None or a non-empty list of"
                         f" channels (ints from 1) or (channel, row, col) tuples, got {units!r}")
    n = static_size(module)
    out = [check_unit(u, n, f"units of layer {spec_layer!r}") for u in units]
    kinds = {"channel" if isinstance(u, int) else "spatial" if isinstance(u, tuple) and len(u) == 3
             else "other" for u in out}
    if "other" in kinds or len(kinds) > 1:
        raise ValueError(f"`units` of layer {spec_layer!r} must be all channels (ints from 1) "
                         f"or all (channel, row, col) tuples, got {list(units)!r}")
    return tuple(out)


def parse_layers(dnn: Any, layers: Union[str, Sequence[str]],
                 units: Union[None, Sequence[Any], Mapping[str, Any]] = None
                 ) -> List[LayerSpec]:
    """Check the requested layers and units.

    Parameters
    ----------
    dnn : DNN
        The network.
    layers : str or sequence of str
        Layer names or dotted paths, each optionally ``@<call>``; no repeats.
    units : None, list, or dict
        One list for every layer, or ``{layer: list}`` (keys as in ``layers``; layers
        missing from it keep every unit).

    Returns
    -------
    list of LayerSpec
        In the order given.

    Raises
    ------
    TypeError, ValueError
        Naming `layers` or `units`, the bad value and the valid choices.
    """
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers or \
            not all(isinstance(v, str) for v in layers):
        raise TypeError(f"`layers` must be a layer name or a non-empty list of them (from "
                        f"{dnn.layers[:8]}...), got {layers!r}")
    if len(set(layers)) < len(layers):
        dup = sorted({v for v in layers if list(layers).count(v) > 1})
        raise ValueError(f"`layers` names {dup} more than once")
    if isinstance(units, Mapping):
        extra = [k for k in units if k not in layers]
        if extra:
            raise ValueError(f"`units` names layers {extra} that are not in `layers` "
                             f"{list(layers)}")
    specs = []
    for text in layers:
        layer, call = _split_call(text, "layers")
        module = dnn.layer2module(layer, "layers")
        u = units.get(text) if isinstance(units, Mapping) else units
        specs.append(LayerSpec(text, layer, call, module, _check_units(u, text, module)))
    return specs


def _reduce(out: Any, spec: LayerSpec, pool: str, dnn: Any,
            hw: Tuple[int, int]) -> torch.Tensor:
    """A layer's output -> the stored array for it (see the module notes), float32."""
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"layer {spec.key!r} returns {type(out).__name__}, not a tensor; "
                         "pick a layer whose output is one tensor")
    lay = layout_of(dnn, spec.layer, out, hw)
    m = out if lay is None else patches(out, lay)
    if m.ndim < 2:
        raise ValueError(f"layer {spec.key!r} gives shape {tuple(out.shape)}; need (N, C, ...)")
    c = m.shape[1]
    if spec.spatial:
        if m.ndim != 4:
            raise ValueError(f"spatial `units` of layer {spec.key!r} need an (N, C, H, W) "
                             f"output; it gives {tuple(m.shape)}")
        h, w = m.shape[2:]
        for u in spec.units:
            if u[0] > c or u[1] > h or u[2] > w:
                raise ValueError(f"`units` {u} is out of range for layer {spec.key!r}: "
                                 f"channel 1..{c}, row 1..{h}, col 1..{w}")
        cc, rr, ww = (torch.tensor(v, device=m.device) - 1 for v in zip(*spec.units))
        return m[:, cc, rr, ww].float()
    if spec.units is not None:
        if max(spec.units) > c:
            raise ValueError(f"`units` must be in 1..{c} for layer {spec.key!r} (units count "
                             f"from 1), got {max(spec.units)}")
        m = m.index_select(1, torch.tensor(spec.units, device=m.device) - 1)
    if pool != "none" and m.ndim > 2:
        m = reduce_channels(m, pool)
    return m.float()


class Taps:
    """The hooks of one forward pass that record many layers at once.

    Parameters
    ----------
    dnn : DNN
        The network; used as it is (no hook outlives :meth:`run`, its train/eval flags are
        restored).
    specs : list of LayerSpec
        From :func:`parse_layers`.
    pool : {'none', 'mean', 'max'}
        Pooling over space.
    channels_last : bool or None
        Run 4-D inputs channels-last; None: on the CPU when the network accepts it
        (``dnn.channels_last``): the saliency engine's rule,
        :func:`~dnnbrain.dnn.algo.forward.input_format`.
    """

    def __init__(self, dnn: Any, specs: List[LayerSpec], pool: str = "none",
                 channels_last: Optional[bool] = None) -> None:
        if pool not in POOLS:
            raise ValueError(f"`pool` must be one of {list(POOLS)}, got {pool!r}")
        if channels_last is not None and not isinstance(channels_last, bool):
            raise TypeError(f"`channels_last` must be None, True or False, got "
                            f"{channels_last!r}")
        self.dnn, self.specs, self.pool = dnn, specs, pool
        self.channels_last = channels_last
        self._stops: Dict[tuple, Dict[str, int]] = {}
        self._warned: set = set()

    def stops(self, x: torch.Tensor) -> Dict[str, int]:
        """The call (from 1) of each layer's module that is recorded, for inputs like
        ``x``: counted once per input shape by one no-grad forward of one row when a
        layer's call depends on the count (see :mod:`dnnbrain.dnn.algo.calls`)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key in self._stops:
            return self._stops[key]
        counted = [s for s in self.specs if needs_count(s.call)]
        n: Dict[int, int] = {id(s.module): 0 for s in counted}
        if counted:
            def hook(module, inputs, output):
                n[id(module)] += 1
            mods = {id(s.module): s.module for s in counted}
            handles = [m.register_forward_hook(hook) for m in mods.values()]
            try:
                with eval_mode(self.dnn.model), torch.no_grad(), input_errors(self.dnn, x):
                    try:
                        self.dnn.model(input_layout(self.dnn, x[:1], self.channels_last))
                    except Exception:  # noqa: BLE001 - counted up to the failure
                        if not any(n.values()):
                            raise
            finally:
                for h in handles:
                    h.remove()
        stops = {}
        for s in self.specs:
            count = n.get(id(s.module))
            if count is not None and count == 0:
                raise ValueError(f"layer {s.key!r} did not run in the forward pass")
            if count is not None and count > 1 and s.call is None and s.key not in self._warned:
                self._warned.add(s.key)
                warnings.warn(f"layer {s.key!r} runs {count} times in one forward pass; its "
                              f"last call is recorded: write {s.layer!r}@first, @last or "
                              "@<k> (from 1, -1 the last) to choose", stacklevel=4)
            stops[s.key] = call_index(s.call, count, s.key)
        self._stops[key] = stops
        return stops

    def run(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One batch: ``x`` ``(B, 3, H, W)`` on the model's device -> ``{key: tensor}``
        on that device (float32, shapes as in the module notes), the pass stopped after
        the last layer recorded."""
        stops = self.stops(x)
        hw = tuple(x.shape[-2:])
        by_module: Dict[int, List[LayerSpec]] = {}
        for s in self.specs:
            by_module.setdefault(id(s.module), []).append(s)
        calls = {k: 0 for k in by_module}
        got: Dict[str, torch.Tensor] = {}
        total = len(self.specs)

        def hook(module, inputs, output):
            calls[id(module)] += 1
            for s in by_module[id(module)]:
                if calls[id(module)] == stops[s.key]:
                    got[s.key] = _reduce(output, s, self.pool, self.dnn, hw)
            if len(got) == total:
                raise StopForward
            for s in by_module[id(module)]:  # later (in-place) layers must not change it
                t = got.get(s.key)
                if t is not None and calls[id(module)] == stops[s.key] and \
                        t.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
                    got[s.key] = t.clone()

        mods = {id(s.module): s.module for s in self.specs}
        handles = []
        try:
            with eval_mode(self.dnn.model), torch.no_grad(), input_errors(self.dnn, x):
                for m in mods.values():
                    handles.append(m.register_forward_hook(hook))
                try:
                    self.dnn.model(input_layout(self.dnn, x, self.channels_last))
                except StopForward:
                    pass
        finally:
            for h in handles:
                h.remove()
        missing = [s.key for s in self.specs if s.key not in got]
        if missing:
            raise ValueError(f"layers {missing} did not run in the forward pass (or not as "
                             "often as their @call asks)")
        return {s.key: got[s.key] for s in self.specs}
