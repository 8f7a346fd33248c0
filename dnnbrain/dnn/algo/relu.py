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

Other elementwise activations
-----------------------------
Guided backprop and the deconvnet are defined for ReLU networks only. Under a rule the mode
also watches every other *elementwise activation* the forward pass runs (with an input
that records a gradient): the functions of :data:`ACTIVATION_NAMES` (``F.gelu``,
``F.silu``, ``F.hardswish``, ``F.mish``, ``F.elu``, ``F.leaky_relu``, ``F.hardtanh`` /
``relu6``, ``torch.sigmoid``, ``torch.tanh``, ``F.softplus`` ... as functions, ``Tensor``
methods or through their ``nn`` modules, in place or not). With ``activations='relu'``
(the default) any of them is an error at the end of the forward pass, one ValueError that
names each activation, how often it ran and where (``GELU x 12 in
'encoder.layers.encoder_layer_*.mlp.1'``): never a plain gradient under a "guided" name.
``activations='all'`` opts in to the generalisation (forward values unchanged):

* guided: at every elementwise activation ``y = f(x)`` the backward is
  ``f'(x) * max(grad_out, 0)`` (for ReLU exactly Springenberg's rule);
* deconv: at every elementwise activation the backward is ``max(grad_out, 0)``, ignoring
  the forward (for ReLU exactly Zeiler & Fergus's rule).

Not activations here: softmax / log-softmax (attention, across elements), normalisation
layers, ``clamp``, ``exp``, ``erf``, pooling, gating products (``x * sigmoid(g)``'s
sigmoid is one, the product is not). An activation written out by hand from such ops
(``0.5 * x * (1 + torch.erf(x / 2 ** 0.5))``) is invisible to the mode.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu, torch._C.TensorBase.relu}
_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_, torch._C.TensorBase.relu_}
_RELU_FUNCS = _OUT_OF_PLACE | _IN_PLACE | {F.relu}

#: function name -> display name of every elementwise activation other than ReLU that
#: the rules refuse (or, with ``activations='all'``, generalise to).
ACTIVATION_NAMES: Dict[str, str] = {
    "gelu": "GELU", "silu": "SiLU", "hardswish": "Hardswish", "hardsigmoid": "Hardsigmoid",
    "mish": "Mish", "elu": "ELU", "celu": "CELU", "selu": "SELU",
    "leaky_relu": "LeakyReLU", "prelu": "PReLU", "rrelu": "RReLU", "relu6": "ReLU6",
    "hardtanh": "Hardtanh", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
    "softsign": "Softsign", "tanhshrink": "Tanhshrink", "logsigmoid": "LogSigmoid",
    "log_sigmoid": "LogSigmoid", "threshold": "Threshold", "hardshrink": "Hardshrink",
    "softshrink": "Softshrink",
}
#: valid ``activations`` values of the rules
ACTIVATIONS = ("relu", "all")


def _activation_funcs() -> Dict[object, str]:
    """Every callable the mode may see for an activation -> its display name."""
    funcs: Dict[object, str] = {}
    for name, shown in ACTIVATION_NAMES.items():
        for place in (F, torch, torch.Tensor, torch._C.TensorBase, torch._C._nn,
                      torch.special):
            for attr in (name, name + "_"):
                fn = getattr(place, attr, None)
                if callable(fn) and not isinstance(fn, type):
                    funcs.setdefault(fn, shown)
    funcs.pop(F.relu, None)
    for fn in _RELU_FUNCS:
        funcs.pop(fn, None)
    return funcs


_ACT_FUNCS = _activation_funcs()


class _RectifyGrad(torch.autograd.Function):
    """Identity whose backward zeroes negative gradients (the guided generalisation's
    half after the activation's own derivative)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y.clone()  # (a view could not be changed in place later)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad.clamp(min=0)


class _RectifyGradInplace(torch.autograd.Function):
    """:class:`_RectifyGrad` on the tensor itself (after an in-place activation)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.mark_dirty(y)
        return y

    backward = _RectifyGrad.backward


class _DeconvAct(torch.autograd.Function):
    """Any activation's exact forward; backward ``max(grad, 0)``, ignoring the forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, run) -> torch.Tensor:  # noqa: D102
        y = run(x)
        if y is x:  # the activation ran in place
            ctx.mark_dirty(x)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad.clamp(min=0), None


def _act_input(args: tuple, kwargs: dict) -> Tuple[Optional[torch.Tensor], bool]:
    """The activation's input tensor and whether it is the first positional argument."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0], True
    x = kwargs.get("input", kwargs.get("self"))
    return (x, False) if isinstance(x, torch.Tensor) else (None, False)


def _pattern(paths: Sequence[str]) -> str:
    """One name for the paths of repeated modules: the dotted parts that differ become
    ``*`` (their number only, after a name: ``encoder_layer_*``), the rest is kept."""
    split = [p.split(".") for p in paths]
    if len({len(parts) for parts in split}) > 1:
        return paths[0] + (" ..." if len(set(paths)) > 1 else "")
    out = []
    for column in zip(*split):
        if len(set(column)) == 1:
            out.append(column[0])
        else:
            stems = {re.sub(r"\d+$", "", c) for c in column}
            out.append(stems.pop() + "*" if len(stems) == 1 else "*")
    return ".".join(out)


def _generic(path: str) -> str:
    """``path`` with every number replaced (the key that groups repeated modules)."""
    return re.sub(r"\d+", "#", path)


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

    backward = _RectifyGrad.backward  # the gradient rectified, the input ignored


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

    def __init__(self, rule, mode: Optional[str] = None, activations: str = "relu",
                 model: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.rule, self.rule_inplace = rule if isinstance(rule, tuple) else (rule, None)
        self.mode, self.activations = mode, activations
        self._paths = ({id(m): n for n, m in model.named_modules()}
                       if model is not None else {})
        self.found: Counter = Counter()

    def __exit__(self, exc_type, exc_val, exc_tb):  # noqa: D105
        super().__exit__(exc_type, exc_val, exc_tb)
        if exc_type is None and self.found:
            raise ValueError(self.refusal())
        return None

    def refusal(self) -> str:
        """The one-line error for the non-ReLU activations found."""
        paths: Dict[Tuple[str, str], List[str]] = {}
        for (shown, where), n in self.found.items():
            paths.setdefault((shown, _generic(where)), []).extend([where] * n)
        groups = []
        for (shown, _), where in paths.items():  # in forward order
            at = _pattern(sorted(set(where)))
            groups.append(f"{shown} x {len(where)} in {at!r}" if at else
                          f"{shown} x {len(where)}")
        more = f" and {len(groups) - 6} more" if len(groups) > 6 else ""
        what = {"guided": "guided backprop", "deconv": "the deconvnet"}.get(
            self.mode, f"relu_mode {self.mode!r}")
        return (f"{what} needs a ReLU network: the forward pass runs "
                f"{', '.join(groups[:6])}{more}; pass activations='all' to apply the "
                f"{self.mode or 'ReLU'} rule at every elementwise activation (see "
                f"dnnbrain.dnn.algo.relu), or use a method without a ReLU rule")

    def _where(self) -> str:
        """Dotted path of the innermost module of the model whose code is running."""
        frame = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames \
                else None
            if owner is not None and id(owner) in self._paths:
                return self._paths[id(owner)] or "the model itself"
            frame = frame.f_back
        return ""

    def _activation(self, func, shown: str, args: tuple, kwargs: dict):
        x, first = _act_input(args, kwargs)
        if x is None or not (x.requires_grad and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        if self.activations != "all":
            self.found[(shown, self._where())] += 1
            return func(*args, **kwargs)
        if self.mode == "deconv":
            def run(t: torch.Tensor) -> torch.Tensor:
                if first:
                    return func(t, *args[1:], **kwargs)
                key = "input" if "input" in kwargs else "self"
                return func(*args, **dict(kwargs, **{key: t}))
            base = x if x._base is None else x._base
            if base.is_leaf:  # let torch refuse an in-place op on a leaf, or run it
                return func(*args, **kwargs)
            return _DeconvAct.apply(x, run)
        y = func(*args, **kwargs)
        if y is x:
            return _RectifyGradInplace.apply(y)
        return _RectifyGrad.apply(y)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        shown = _ACT_FUNCS.get(func) if self.mode is not None else None
        if shown is not None:
            return self._activation(func, shown, args, kwargs)
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


def check_activations(activations: str) -> str:
    """``activations`` if valid (``'relu'`` or ``'all'``), else a ValueError naming it."""
    if not isinstance(activations, str) or activations not in ACTIVATIONS:
        raise ValueError(f"`activations` must be one of {list(ACTIVATIONS)}, got "
                         f"{activations!r}")
    return activations


def relu_override(mode: Optional[str], activations: str = "relu",
                  model: Optional[nn.Module] = None):
    """Context manager for ReLU ``mode`` (None, ``'guided'`` or ``'deconv'``).

    Parameters
    ----------
    mode : None, 'guided' or 'deconv'
        The rule (None: nothing changes).
    activations : {'relu', 'all'}
        ``'relu'``: other elementwise activations in the forward pass are a ValueError
        (raised when the block ends); ``'all'``: the rule's generalisation at every one
        (see the module notes).
    model : torch.nn.Module or None
        Names the modules running the refused activations in the error.
    """
    check_activations(activations)
    if mode is None:
        return nullcontext()
    if mode not in RELU_RULES:
        raise ValueError(f"`relu_mode` must be one of {[None] + list(RELU_RULES)}, "
                         f"got {mode!r}")
    return ReLUOverride(RELU_RULES[mode], mode, activations, model)
