"""Modified ReLU backward passes for guided backpropagation and the deconvnet.

One :class:`torch.overrides.TorchFunctionMode` swaps every ReLU the forward pass runs for a
custom autograd function with the rule's backward: ``nn.ReLU`` modules (in-place or not,
called once or several times, as in torchvision's ResNet blocks) and the functional
``F.relu`` / ``F.relu_`` / ``torch.relu`` / ``torch.relu_`` / ``Tensor.relu`` /
``Tensor.relu_`` (torchvision GoogLeNet and Inception), with no module swapped and no hook
registered. Libraries that hook ``nn.ReLU`` modules silently fall back to the plain
gradient on functional ReLUs; this does not.

The forward pass is exactly the model's, for every way a ReLU can be written:

* out of place (``torch.relu(h)``, ``F.relu(h)``, ``nn.ReLU()``): a new tensor, computed by
  the same kernel;
* in place (``h.relu_()``, ``torch.relu_(h)``, ``F.relu(h, inplace=True)``,
  ``nn.ReLU(inplace=True)``): ``h`` itself is rectified (an in-place autograd function,
  ``ctx.mark_dirty``), so a model that ignores the return value (a ReLU written as a
  statement) computes what it computes without the rule. Autograd treats it as the real
  in-place op: a leaf (or a view of one) that requires grad is an error, views of
  non-leaves are rebased, a later in-place change of the rectified tensor is caught at
  the backward pass, channels-last tensors stay channels-last.
* a ReLU whose input records no gradient (under ``torch.no_grad()``, or before the tensor
  the gradient is taken against) runs the real op: no gradient flows through it.
* anything the real op would refuse (``torch.relu(h, out=y)``: torch has no ``out=``
  form) goes to the real op, which raises its own error.

Only the ReLU family is swapped: ``relu6``, ``hardtanh``, ``leaky_relu``, ``threshold``,
``clamp`` and other nonlinearities keep their plain gradient.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu, torch._C.TensorBase.relu}
_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_, torch._C.TensorBase.relu_}
_RELU_FUNCS = _OUT_OF_PLACE | _IN_PLACE | {F.relu}


class GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients where the input was positive
    (Springenberg et al., 2015, "Striving for simplicity: the all convolutional net")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (out,) = ctx.saved_tensors
        # ReLU's own fused backward (zero where out <= 0), then rectify in place
        return torch.ops.aten.threshold_backward(grad, out, 0).clamp_(min=0)


class GuidedReLUInplace(torch.autograd.Function):
    """:class:`GuidedReLU` that rectifies its input in place (``relu_``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.mark_dirty(x)
        x.relu_()
        ctx.save_for_backward(x)  # the output: a later in-place change is caught
        return x

    backward = GuidedReLU.backward


class DeconvReLU(torch.autograd.Function):
    """ReLU whose backward rectifies the gradient and ignores the forward input
    (Zeiler & Fergus, 2014, "Visualizing and understanding convolutional networks")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad.clamp(min=0)


class DeconvReLUInplace(torch.autograd.Function):
    """:class:`DeconvReLU` that rectifies its input in place (``relu_``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.mark_dirty(x)
        return x.relu_()

    backward = DeconvReLU.backward


#: mode -> (out-of-place rule, in-place rule)
RELU_RULES = {"guided": (GuidedReLU, GuidedReLUInplace),
              "deconv": (DeconvReLU, DeconvReLUInplace)}


def _relu_call(func, args: tuple, kwargs: dict) -> Optional[tuple]:
    """``(input, inplace)`` of a call of the ReLU family, or None when the call is not
    one torch accepts as ``relu(input)`` / ``relu(input, inplace)`` (left to torch)."""
    if func is F.relu:
        names = ("input", "inplace")
        if len(args) > 2 or set(kwargs) - set(names[len(args):]):
            return None
        got = dict(zip(names, args), **kwargs)
        if "input" not in got:
            return None
        return got["input"], bool(got.get("inplace", False))
    if len(args) != 1 or kwargs:
        return None
    return args[0], func in _IN_PLACE


class ReLUOverride(TorchFunctionMode):
    """While active, every ReLU call runs ``rule``'s autograd function instead.

    Parameters
    ----------
    rule : autograd Function, or (out-of-place, in-place) pair of them
        A single Function serves out-of-place calls only; in-place calls then run the
        real op (their forward stays exact, their backward is the plain one).
    """

    def __init__(self, rule) -> None:
        super().__init__()
        self.rule, self.rule_inplace = rule if isinstance(rule, tuple) else (rule, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        call = _relu_call(func, args, kwargs) if func in _RELU_FUNCS else None
        if call is not None:
            x, inplace = call
            if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
                if not inplace:
                    return self.rule.apply(x)
                base = x if x._base is None else x._base
                if self.rule_inplace is not None and not base.is_leaf:
                    return self.rule_inplace.apply(x)  # (torch refuses a leaf, untouched)
        return func(*args, **kwargs)


def relu_override(mode: Optional[str]):
    """Context manager for ReLU ``mode`` (None, ``'guided'`` or ``'deconv'``)."""
    if mode is None:
        return nullcontext()
    if mode not in RELU_RULES:
        raise ValueError(f"`relu_mode` must be one of {[None] + list(RELU_RULES)}, "
                         f"got {mode!r}")
    return ReLUOverride(RELU_RULES[mode])
