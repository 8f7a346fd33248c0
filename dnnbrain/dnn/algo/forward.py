"""The engine's forward-pass machinery: eval mode that restores every flag, and the hooks
of one pass (capture the target's output at its explained call and stop there; capture
an inner layer's input or output as the tensor to differentiate against).

Everything here lasts exactly as long as its ``with`` block: no hook, flag or capture
outlives a call, on success or on an error.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn


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
