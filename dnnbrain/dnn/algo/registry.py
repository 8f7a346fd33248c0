"""Methods by name: one registry for the CLI, YAML runs and notebooks.

>>> from dnnbrain.dnn.algo import saliency
>>> maps = saliency(dnn, images, method='ig', layer='fc3', unit=540, steps=64)
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional

import numpy as np

from ..models import DNN
from .calls import Call

#: name -> "module:Class" inside dnnbrain.dnn.algo (imported on first use).
METHODS: Dict[str, str] = {
    "vanilla": "gradients:VanillaSaliencyImage",
    "guided": "gradients:GuidedSaliencyImage",
    "deconv": "gradients:DeconvSaliencyImage",
    "grad_x_input": "gradients:GradientXInputImage",
    "smoothgrad": "smooth:SmoothGrad",
    "ig": "integrated:IntegratedGradients",
    "blur_ig": "integrated:BlurIG",
    "guided_ig": "guided_ig:GuidedIG",
    "xrai": "xrai:XRAI",
    "gradcam": "cam:GradCAM",
    "gradcam++": "cam:GradCAMPlusPlus",
    "scorecam": "cam:ScoreCAM",
    "occlusion": "occlusion:Occlusion",
    "upsampled_activation": "occlusion:UpsampledActivation",
    "rollout": "attention:AttentionRollout",
    "chefer": "attention:AttentionRelevance",
}


def method_names() -> List[str]:
    """Every registered method name."""
    return list(METHODS)


def get_method(name: str) -> type:
    """The class registered under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is unknown; the message lists the registered names.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"`method` must be one of {method_names()}, got {name!r}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def make_method(dnn: DNN, method: str, layer: Optional[str] = None, unit: Any = None,
                reduce: str = "mean", batch_size: Optional[int] = None, call: Call = None,
                **params: Any):
    """Instantiate a registered method with its parameters and (optionally) its target
    (``layer``, ``unit``, ``reduce`` and ``call`` as :meth:`SaliencyImage.set_layer`)."""
    obj = get_method(method)(dnn, batch_size=batch_size, **params)
    if layer is not None:
        obj.set_layer(layer, unit, reduce, call)
    elif call is not None:
        raise ValueError(f"`call` {call!r} needs a target `layer`")
    return obj


def saliency(dnn: DNN, images: Any, method: str = "vanilla", layer: Optional[str] = None,
             unit: Any = None, reduce: str = "mean", to_layer: Optional[str] = None,
             preprocessed: bool = False, batch_size: Optional[int] = None,
             call: Call = None, **params: Any) -> np.ndarray:
    """One call: the ``method`` map of ``unit`` of ``layer`` for ``images``.

    Parameters
    ----------
    dnn : DNN
        The network.
    images : image, list of images, (N, ...) array/tensor, or Stimulus
        As :meth:`SaliencyImage.backprop` takes them.
    method : str
        A name from :func:`method_names`.
    layer : str or None
        Target layer; None means the network's last layer.
    unit : unit or list of units or None
        Counted from 1; None means ``'predicted'``.
    reduce : {'mean', 'max'}
        Channel reduction.
    to_layer : str or None
        Map at this layer's input (gradient methods).
    preprocessed : bool
        ``images`` is already ``test_transform`` output.
    batch_size : int or None
        Rows per pass (None: 32, or as many as fit in a ``memory_budget`` param).
    call : None, 'first', 'last' or int
        Which call of ``layer`` is explained when its module runs more than once per
        forward pass (from 1, ``-1`` the last; None: the last, with a warning).
    **params
        The method's own parameters (``steps``, ``baseline``, ``cam_layer`` ...).

    Returns
    -------
    numpy.ndarray
        float32; ``(3, H, W)`` per image for gradient methods, ``(H, W)`` for CAM-like
        methods, with ``N`` and ``U`` axes as :meth:`SaliencyImage.backprop` describes.
    """
    layer = layer if layer is not None else dnn.layers[-1]
    unit = "predicted" if unit is None else unit
    obj = make_method(dnn, method, layer, unit, reduce, batch_size, call, **params)
    kwargs = {"preprocessed": preprocessed}
    if to_layer is not None:
        kwargs["to_layer"] = to_layer
    return obj.backprop(images, **kwargs)
