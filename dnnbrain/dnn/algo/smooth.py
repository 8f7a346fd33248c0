"""SmoothGrad as a method of its own, over any other method."""
from __future__ import annotations

from typing import Any, ContextManager, Optional, Tuple

import numpy as np

from ..models import DNN
from .calls import Call
from .checks import SIGMA_MULTIPLIER, SMOOTH_MODES, check_noise
from .clean import CleanOutput
from .engine import SaliencyImage
from .passes import check_smooth_input


class SmoothGrad:
    """SmoothGrad (Smilkov et al., 2017, "SmoothGrad: removing noise by adding noise") over
    any method: the base method's map averaged over noisy copies of each image.

    Parameters
    ----------
    dnn : DNN
        The network.
    from_layer, from_chn : optional
        Target, as :meth:`SaliencyImage.set_layer`.
    batch_size : int or None
        Rows per pass (None: 32, or what fits in a ``memory_budget`` base parameter).
    base : str
        Registered method name to smooth (``'vanilla'``, ``'guided'``, ``'ig'``, ...).
    n_samples : int
        Noisy copies per image (cost: ``n_samples`` x the base method's cost).
    sigma_multiplier : float
        Noise std as a fraction of each preprocessed image's ``max - min`` (PAIR's
        ``stdev_spread``). Default 0.1, the same as :meth:`SaliencyImage.backprop_smooth`
        (:data:`~dnnbrain.dnn.algo.checks.SIGMA_MULTIPLIER`; PAIR's default is 0.15).
    mode : {'mean', 'squared', 'vargrad'}
        Mean map, mean squared map (PAIR ``magnitude=True``), or variance (VarGrad).
    seed : int
        Noise seed.
    **base_params
        Passed to the base method.
    """

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, base: str = "vanilla", n_samples: int = 25,
                 sigma_multiplier: float = SIGMA_MULTIPLIER, mode: str = "mean", seed: int = 0,
                 **base_params: Any) -> None:
        from .registry import METHODS, get_method
        bases = [n for n in METHODS if n != "smoothgrad"]
        if not isinstance(base, str) or base not in bases:
            raise ValueError(f"`base` must be one of {bases}, got {base!r}")
        cls = get_method(base)
        if not issubclass(cls, SaliencyImage):
            raise ValueError(f"`base` {base!r} cannot be smoothed")
        self.n_samples, self.sigma_multiplier = check_noise(n_samples, sigma_multiplier,
                                                            "n_samples")
        if mode not in SMOOTH_MODES:
            raise ValueError(f"`mode` must be one of {list(SMOOTH_MODES)}, got {mode!r}")
        self.method: SaliencyImage = cls(dnn, from_layer, from_chn, batch_size=batch_size,
                                          **base_params)
        self.mode, self.seed = mode, seed

    def set_layer(self, layer: str, unit: Any, reduce: str = "mean",
                  call: Call = None, unit_base: int = 1) -> "SmoothGrad":
        """Aim at ``unit`` of ``layer`` (see :meth:`SaliencyImage.set_layer`)."""
        self.method.set_layer(layer, unit, reduce, call, unit_base)
        return self

    def labelled(self, labels: Any, unit_base: int = 1):
        """Each image's class for the calls inside a ``with`` block (see
        :meth:`SaliencyImage.labelled`)."""
        return self.method.labelled(labels, unit_base)

    def get_layer(self):
        """The target as ``(layer, unit)``."""
        return self.method.get_layer()

    def clean_output(self) -> ContextManager[CleanOutput]:
        """The base method's :meth:`SaliencyImage.clean_output`: the noisy copies are not
        the clean input, so its ``output`` is None unless ``'predicted'`` had the clean
        rows run to resolve it (:mod:`dnnbrain.dnn.algo.clean`)."""
        return self.method.clean_output()

    @property
    def resolved_units(self):
        """The base method's :attr:`SaliencyImage.resolved_units` after a call."""
        return self.method.resolved_units

    @property
    def dnn(self) -> DNN:
        """The network."""
        return self.method.dnn

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """The base method's :meth:`SaliencyImage.check_input`, and one row of the
        smoothing passes within its ``memory_budget``; ``backprop`` runs the same."""
        check_smooth_input(self.method, shape, self.mode)

    def backprop(self, image: Any, to_layer: Optional[str] = None,
                 preprocessed: bool = False) -> np.ndarray:
        """Smoothed map; same shapes as the base method's ``backprop``."""
        return self.method.backprop_smooth(image, self.n_samples, self.sigma_multiplier,
                                           to_layer=to_layer, seed=self.seed, mode=self.mode,
                                           preprocessed=preprocessed)
