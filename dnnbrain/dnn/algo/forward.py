"""The engine's forward-pass machinery: eval mode that restores every flag, and the hooks
of one pass (capture the target's output at its explained call and stop there; capture
an inner layer's input or output as the tensor to differentiate against).

The second half runs one pass for a saliency method (``method``, a
:class:`~dnnbrain.dnn.algo.engine.SaliencyImage`): the memory layout of its passes
(:func:`memory_format`, :func:`to_layout`: the rule of :func:`input_format` /
:func:`input_layout`, which the probes' taps and YAML runs' forward pass use too), the
call of the target layer they stop at (:func:`stop_call`), its hooks
(:func:`method_hooks`), the forward up to the target (:func:`run_forward`) and the
target layer's captured output (:func:`target_output`); then the method's no-grad
passes: each row's unit score (:func:`unit_scores`), any layer's output
(:func:`layer_output`) and ``'predicted'`` units fixed on the clean input
(:func:`fixed_units`).

Everything here lasts exactly as long as its ``with`` block: no hook, flag or capture
outlives a call, on success or on an error.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Sequence

import torch
from torch import nn

from .checks import input_errors
from .target import Unit, resolve_predicted, select


class StopForward(Exception):
    """Raised by the target layer's hook: nothing after it is computed."""


class Tap(torch.autograd.Function):
    """``y = x`` in place (same storage, no copy); the backward pass hands the gradient
    of ``y`` to ``sink`` and gives ``dummy`` (the tensor to differentiate against) a zero.
    Later in-place layers may overwrite ``y``: only its gradient is kept, not its values."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dummy: torch.Tensor, sink: list) -> torch.Tensor:  # noqa: D102
        ctx.sink = sink
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        ctx.sink.append(grad)
        return None, torch.zeros((), dtype=grad.dtype, device=grad.device), None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode, then restore every submodule's own ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def pass_hooks(target: nn.Module, stop_at: int, inner: Optional[nn.Module] = None,
               at_output: Optional[str] = None, grad_from_leaf: bool = False,
               tap: bool = False) -> Iterator[dict]:
    """Hooks for one forward pass.

    Parameters
    ----------
    target : nn.Module
        Its output at call ``stop_at`` (from 1) goes to ``cap['output']``, then the pass
        stops (:class:`StopForward`); ``cap['calls']`` counts its calls.
    inner : nn.Module or None
        Its input as ``cap['input']`` or, with ``at_output`` (the layer's name, for
        errors), its output as ``cap['act']``, at its most recent call before the stop, as a gradient leaf
        (``grad_from_leaf``: recording switches on there; ``tap``: through :class:`Tap`,
        without a copy, where the tensor is not a view).

    Yields
    ------
    dict
        The captures.
    """
    cap: dict = {"calls": 0}

    def leaf(t: torch.Tensor, key: str) -> torch.Tensor:
        if grad_from_leaf:
            torch.set_grad_enabled(True)
        if tap and t._base is None and not t.requires_grad:
            cap[key] = torch.zeros((), dtype=t.dtype, device=t.device, requires_grad=True)
            cap["sink"] = []
            return Tap.apply(t, cap[key], cap["sink"])
        cap.pop("sink", None)  # a later call replaces an earlier tapped leaf
        cap[key] = t.detach().requires_grad_(True)
        # the model continues on a copy, so an in-place layer cannot overwrite the leaf
        return cap[key].clone()

    def grab_input(module, inputs):
        if "output" in cap:
            return None
        return (leaf(inputs[0], "input"),) + tuple(inputs[1:])

    def grab_output(module, inputs, output):
        if "output" in cap:
            return None
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"`at_output` layer {at_output!r} returns "
                             f"{type(output).__name__}, not a tensor")
        return leaf(output, "act")

    def stop(module, inputs, output):
        cap["calls"] += 1
        if cap["calls"] == stop_at:
            cap["output"] = output
            raise StopForward

    handles = []
    try:
        if inner is not None:
            handles.append(inner.register_forward_hook(grab_output) if at_output is not None
                           else inner.register_forward_pre_hook(grab_input))
        handles.append(target.register_forward_hook(stop))
        yield cap
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- a pass's memory layout
def input_format(dnn: Any, x: torch.Tensor,
                 channels_last: Optional[bool] = None) -> Optional[torch.memory_format]:
    """The memory layout a pass of ``dnn`` runs ``x`` in: the one rule of the saliency
    methods' passes (:func:`memory_format`), the probes' taps and YAML runs' forward pass.

    Parameters
    ----------
    dnn : DNN
        The network: its ``channels_last`` (whether it accepts channels-last input).
    x : torch.Tensor
        A pass's input.
    channels_last : bool or None
        Run 4-D input channels-last (True) or not (False); None: channels-last on the
        CPU when ``dnn.channels_last``.

    Returns
    -------
    torch.memory_format or None
        ``torch.channels_last`` for a 4-D ``x`` run channels-last, else None (``x``
        keeps its layout).
    """
    on = channels_last
    if on is None:
        on = dnn.channels_last and x.device.type == "cpu"
    return torch.channels_last if on and x.ndim == 4 else None


def input_layout(dnn: Any, x: torch.Tensor,
                 channels_last: Optional[bool] = None) -> torch.Tensor:
    """``x`` in the layout a pass of ``dnn`` runs it in (:func:`input_format`, same
    parameters): ``x`` itself when it keeps its layout or already has that one, else a
    contiguous copy."""
    fmt = input_format(dnn, x, channels_last)
    return x if fmt is None else x.contiguous(memory_format=fmt)


# ---------------------------------------------------------------- one pass of a method
def memory_format(method: Any, x: torch.Tensor) -> Optional[torch.memory_format]:
    """The memory layout ``method``'s passes (a :class:`SaliencyImage`'s) run ``x`` in:
    :func:`input_format` with the method's ``dnn`` and ``channels_last``."""
    return input_format(method.dnn, x, method.channels_last)


def to_layout(method: Any, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout ``method``'s passes use (:func:`memory_format`; see
    :func:`input_layout`)."""
    return input_layout(method.dnn, x, method.channels_last)


def stop_call(method: Any, module: nn.Module, x: Optional[torch.Tensor]) -> int:
    """The call of ``module`` (from 1) that ``method``'s forward pass stops at.

    Parameters
    ----------
    method : SaliencyImage
        Its target layer, ``call`` and call counts
        (:class:`~dnnbrain.dnn.algo.calls.CallCounts`).
    module : nn.Module
        The module whose output the pass captures.
    x : torch.Tensor or None
        The pass's input: where the choice of call needs the count, one row of it runs
        a no-grad forward, once per input shape.

    Returns
    -------
    int
        The explained call of the target layer's module (see ``call`` of
        :meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.set_layer`), else 1.
    """
    if method.layer is None or module is not method.dnn.layer2module(method.layer):
        return 1
    key = (method.layer,) if x is None else (
        method.layer, tuple(x.shape[1:]), x.dtype, x.device, memory_format(method, x))
    with input_errors(method.dnn, x):
        return method._calls.stop_at(method.call, method.layer, module, key,
                                     lambda: method.dnn.model(to_layout(method, x[:1].detach())),
                                     type(method).__name__)


@contextlib.contextmanager
def method_hooks(method: Any, to_layer: Optional[str] = None, at_output: Optional[str] = None,
                 target: Optional[str] = None, grad_from_leaf: bool = False,
                 tap: bool = False, x: Optional[torch.Tensor] = None) -> Iterator[dict]:
    """Eval mode and the hooks (:func:`pass_hooks`) of one forward pass of ``method``.

    Parameters
    ----------
    method : SaliencyImage
        Its network and target.
    to_layer, at_output : str or None
        Capture this layer's input (``cap['input']``) or output (``cap['act']``) at its
        most recent call before the stop, as a gradient leaf.
    target : str or None
        Capture this layer's output (``cap['output']``) and stop there; None: the target
        layer, at its explained call (:func:`stop_call`).
    grad_from_leaf, tap : bool
        As :func:`pass_hooks`.
    x : torch.Tensor or None
        The pass's input, for the call count.

    Yields
    ------
    dict
        The captures; hooks and eval mode last exactly as long as the ``with`` block.
    """
    target = target if target is not None else method.layer
    if target is None:
        raise ValueError("no target: call set_layer(layer, unit) first")
    inner = to_layer if to_layer is not None else at_output
    with eval_mode(method.dnn.model):
        module = method.dnn.layer2module(target)
        with pass_hooks(module, stop_call(method, module, x),
                        None if inner is None else method.dnn.layer2module(inner),
                        at_output, grad_from_leaf, tap) as cap:
            yield cap


def run_forward(method: Any, x: torch.Tensor) -> None:
    """Run ``method``'s model on ``x`` (in the passes' layout) up to the hook that stops it
    (:class:`StopForward`); torch's complaints about an input the network cannot take
    become a ValueError naming `image` (:func:`dnnbrain.dnn.algo.checks.input_errors`)."""
    with input_errors(method.dnn, x):
        try:
            method.dnn.model(to_layout(method, x))
        except StopForward:
            pass


def target_output(method: Any, cap: dict) -> torch.Tensor:
    """The target layer's output from the captures ``cap`` of :func:`method_hooks`;
    ValueError when the layer (or its explained ``call``) did not run in the pass."""
    if "output" not in cap:
        if cap.get("calls"):
            n = cap["calls"]
            raise ValueError(f"`call` {method.call} of layer {method.layer!r}: the layer runs "
                             f"{n} time{'s' if n != 1 else ''} in one forward pass")
        raise ValueError(f"target layer {method.layer!r} did not run in the forward pass")
    return cap["output"]


def unit_scores(method: Any, x: torch.Tensor, units: Sequence[Unit]) -> torch.Tensor:
    """Score of each row's unit of ``method``'s target, without gradients (the forward
    stops at the target layer).

    Parameters
    ----------
    method : SaliencyImage
        Its network and target (layer, ``reduce``, ``call``).
    x : torch.Tensor
        ``(B, 3, H, W)`` network input on the device.
    units : sequence of units
        One per row (or one for all rows).

    Returns
    -------
    torch.Tensor
        ``(B,)`` scores.
    """
    with method_hooks(method, x=x) as cap, torch.no_grad():
        run_forward(method, x)
        out = target_output(method, cap)
        return select(out, units, method.layer, method.reduce, method.target_layout(out, x))


def layer_output(method: Any, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Output of any ``layer`` of ``method``'s network for ``x``, without gradients.

    Parameters
    ----------
    method : SaliencyImage
        Its network and target.
    x : torch.Tensor
        ``(B, 3, H, W)`` network input on the device.
    layer : str
        The target layer: its explained call, where the pass stops; another layer: its
        latest call before that (as ``at_output``), or without a target its first.

    Returns
    -------
    torch.Tensor
        ``(B, C, ...)`` on the device.

    Raises
    ------
    ValueError
        When ``layer`` does not run (before the target layer).
    """
    if method.layer is not None and \
            method.dnn.layer2module(layer) is not method.dnn.layer2module(method.layer):
        with method_hooks(method, at_output=layer, x=x) as cap, torch.no_grad():
            run_forward(method, x)
            target_output(method, cap)
            if "act" not in cap:
                raise ValueError(f"layer {layer!r} does not run before the target "
                                 f"layer {method.layer!r}")
            return cap["act"].detach()
    with method_hooks(method, target=layer, x=x) as cap, torch.no_grad():
        run_forward(method, x)
        if "output" not in cap:
            raise ValueError(f"layer {layer!r} did not run in the forward pass")
        return cap["output"]


def fixed_units(method: Any, x: torch.Tensor, units: Sequence[Unit]) -> List[Unit]:
    """``units`` with ``'predicted'`` replaced by each row's predicted unit for the clean
    input ``x``, so every perturbed copy or path point explains the same unit.

    Parameters
    ----------
    method : SaliencyImage
        Its target; inside its ``clean_output()`` block the target output is recorded.
    x : torch.Tensor
        ``(B, 3, H, W)`` clean network input on the device.
    units : sequence of units
        One per row.

    Returns
    -------
    list of units
        Fixed units, one per row (``units`` itself as a list when none is ``'predicted'``).
    """
    if not any(isinstance(u, str) for u in units):
        return list(units)
    out = method.layer_output(x, method.layer)
    if method._clean is not None:
        method._clean.saw(x, out)
    return resolve_predicted(out, units, method.reduce, method.target_layout(out, x))
