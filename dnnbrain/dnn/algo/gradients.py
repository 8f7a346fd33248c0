"""Gradient methods: vanilla, guided backprop, deconvnet, gradient x input."""
from __future__ import annotations

from typing import List, Optional

import torch

from .budget import Budget
from .engine import SaliencyImage
from .target import Unit


class VanillaSaliencyImage(SaliencyImage):
    """Vanilla gradient of the unit w.r.t. the input (Simonyan et al., 2014, "Deep inside
    convolutional networks"; Erhan et al., 2009). Cost: one forward + one backward pass."""


class GuidedSaliencyImage(SaliencyImage):
    """Guided backpropagation (Springenberg et al., 2015, "Striving for simplicity"): at
    every ReLU the forward pass runs (modules, in-place, reused, functional) only positive
    gradients pass where the input was positive. Cost: one forward + one backward pass."""

    relu_mode = "guided"


class DeconvSaliencyImage(SaliencyImage):
    """Deconvnet (Zeiler & Fergus, 2014): every ReLU rectifies the backward signal and
    ignores its forward input. Cost: one forward + one backward pass."""

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
    """

    def __init__(self, dnn, from_layer=None, from_chn=None, batch_size: Optional[int] = None,
                 base: Optional[str] = None, memory_budget: Budget = None) -> None:
        if base not in (None, "guided", "deconv"):
            raise ValueError(f"`base` must be one of [None, 'guided', 'deconv'], got {base!r}")
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        self.relu_mode = base

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        grad, wrt = self.gradient(x, units, to_layer, self.relu_mode)
        return grad * wrt
