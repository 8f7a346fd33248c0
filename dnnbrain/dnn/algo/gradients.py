"""Gradient methods: vanilla, guided backprop, deconvnet, gradient x input."""
from __future__ import annotations

from typing import List, Optional

import torch

from .budget import Budget
from .engine import SaliencyImage
from .relu import check_activations
from .target import Unit


class VanillaSaliencyImage(SaliencyImage):
    """Vanilla gradient of the unit w.r.t. the input (Simonyan et al., 2014, "Deep inside
    convolutional networks"; Erhan et al., 2009). Cost: one forward + one backward pass."""


class _RuleMethod(SaliencyImage):
    """A gradient under a ReLU rule, with the ``activations`` opt-in."""

    def __init__(self, dnn, from_layer=None, from_chn=None, batch_size: Optional[int] = None,
                 memory_budget: Budget = None, activations: str = "relu") -> None:
        self.activations = check_activations(activations)
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)


class GuidedSaliencyImage(_RuleMethod):
    """Guided backpropagation (Springenberg et al., 2015, "Striving for simplicity"): at
    every ReLU the forward pass runs (modules, in-place, reused, functional) only positive
    gradients pass where the input was positive. Cost: one forward + one backward pass.

    Parameters
    ----------
    dnn, from_layer, from_chn, batch_size, memory_budget
        As :class:`SaliencyImage`.
    activations : {'relu', 'all'}
        ``'relu'`` (default): the network must be a ReLU network; any other elementwise
        activation the forward pass runs (GELU, SiLU, Hardswish, sigmoid, tanh ...) is a
        ValueError naming them. ``'all'``: the guided rule at every elementwise activation
        ``y = f(x)``, backward ``f'(x) * max(grad_out, 0)``; forward values unchanged (see
        :mod:`dnnbrain.dnn.algo.relu`).
    """

    relu_mode = "guided"


class DeconvSaliencyImage(_RuleMethod):
    """Deconvnet (Zeiler & Fergus, 2014): every ReLU rectifies the backward signal and
    ignores its forward input. Cost: one forward + one backward pass.

    Parameters
    ----------
    dnn, from_layer, from_chn, batch_size, memory_budget
        As :class:`SaliencyImage`.
    activations : {'relu', 'all'}
        ``'relu'`` (default): other elementwise activations are a ValueError; ``'all'``:
        every elementwise activation's backward is ``max(grad_out, 0)``, ignoring its
        forward (see :mod:`dnnbrain.dnn.algo.relu`).
    """

    relu_mode = "deconv"


class GradientXInputImage(SaliencyImage):
    """Gradient x input (Shrikumar et al., 2016, "Not just a black box"): the vanilla
    gradient times the (preprocessed) input, or times ``to_layer``'s input.

    Parameters
    ----------
    dnn, from_layer, from_chn, batch_size, memory_budget
        As :class:`SaliencyImage`.
    base : {None, 'guided', 'deconv'}
        ReLU rule of the gradient (None: vanilla).
    activations : {'relu', 'all'}
        With a ``base`` rule: as :class:`GuidedSaliencyImage` (``'relu'`` refuses other
        elementwise activations, ``'all'`` generalises the rule to them).
    """

    def __init__(self, dnn, from_layer=None, from_chn=None, batch_size: Optional[int] = None,
                 base: Optional[str] = None, memory_budget: Budget = None,
                 activations: str = "relu") -> None:
        if base not in (None, "guided", "deconv"):
            raise ValueError(f"`base` must be one of [None, 'guided', 'deconv'], got {base!r}")
        self.activations = check_activations(activations)
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        self.relu_mode = base

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        grad, wrt = self.gradient(x, units, to_layer, self.relu_mode)
        return grad * wrt
