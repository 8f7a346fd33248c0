"""Methods by name: one registry for the CLI, YAML runs and notebooks.

>>> from dnnbrain.dnn.algo import saliency
>>> maps = saliency(dnn, images, method='ig', layer='fc3', unit=540, steps=64)
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional, Union

import numpy as np
from torch import nn

from ..models import DNN
from .calls import Call
from .inputs import as_dnn, resolve_images
from .target import check_unit_base

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
                unit_base: int = 1, **params: Any):
    """Instantiate a registered method with its parameters and (optionally) its target
    (``layer``, ``unit``, ``reduce``, ``call`` and ``unit_base`` as
    :meth:`SaliencyImage.set_layer`)."""
    check_unit_base(unit_base)
    obj = get_method(method)(dnn, batch_size=batch_size, **params)
    if layer is not None:
        obj.set_layer(layer, unit, reduce, call, unit_base)
    elif call is not None:
        raise ValueError(f"`call` {call!r} needs a target `layer`")
    return obj


def saliency(dnn: Union[DNN, nn.Module], images: Any, method: str = "vanilla",
             layer: Optional[str] = None, unit: Any = None, reduce: str = "mean",
             to_layer: Optional[str] = None, preprocessed: bool = False,
             batch_size: Optional[int] = None, call: Call = None,
             labels: Any = None, unit_base: int = 1, image_key: Optional[str] = None,
             label_key: Optional[str] = None, **params: Any) -> np.ndarray:
    """One call: the ``method`` map of ``unit`` of ``layer`` for ``images``.

    Parameters
    ----------
    dnn : DNN or torch.nn.Module
        The network; a bare module is wrapped as ``DNN(model)`` (layers named by
        ``named_modules()``, pixels 0..1, one channel when its first convolution takes
        one).
    images : image, list of images, (N, ...) array/tensor, Stimulus, folder, .stim.csv or mapping
        As :meth:`SaliencyImage.backprop` takes them; or the path of a folder (its
        images, sorted by name) or of a ``.stim.csv`` file; or a mapping batch as
        PyHealth's loaders give it, ``{'image': (N, C, H, W) tensor, 'label': (N,)
        tensor, ...}``: the images are ``images[image_key]``, the labels (for
        ``unit='label'``) ``images[label_key]``. A batch's image tensor is treated as
        any tensor: pixels through ``test_transform``, or with ``preprocessed=True``
        (what a loader's own transforms made) the network input as it is.
    method : str
        A name from :func:`method_names`.
    layer : str or None
        Target layer; None means the network's last layer.
    unit : unit or list of units or None
        Counted from ``unit_base`` (1); None means ``'predicted'``; ``'label'`` is each
        image's own class (from ``labels``, a mapping batch's labels, or a stimulus file's
        ``label`` column).
    reduce : {'mean', 'max'}
        How a conv channel's activation map becomes one number (the unit's reduction over
        space; the channels of the *maps* are reduced for display by
        :func:`dnnbrain.viz.reduce_channels`, ``reduce='maxabs'`` there).
    to_layer : str or None
        Map at this layer's input (gradient methods).
    preprocessed : bool
        ``images`` is already ``test_transform`` output.
    batch_size : int or None
        Rows per pass (None: 32, or as many as fit in a ``memory_budget`` param).
    call : None, 'first', 'last' or int
        Which call of ``layer`` is explained when its module runs more than once per
        forward pass (from 1, ``-1`` the last; None: the last, with a warning).
    labels : sequence, numpy.ndarray or torch.Tensor of int, or None
        ``(N,)`` class of each image for ``unit='label'``, counted from ``unit_base``
        (a stimulus file's ``label`` column counts from 0, whatever ``unit_base``).
    unit_base : {1, 0}
        How the numbers of ``unit`` and ``labels`` count: 1 (dnnbrain's and DNNBrain's
        default) or 0 (class indices from 0, as Slideflow and PyHealth count them:
        ``unit=0`` is the first class). Nothing is ever guessed: a label 0 with
        ``unit_base=1`` is an error that suggests ``unit_base=0``.
    image_key, label_key : str or None
        The keys of a mapping batch's images and labels; None tries
        ``'image', 'images', 'img', 'x', 'pixel_values', 'input'`` and
        ``'label', 'labels', 'y', 'target', 'targets'`` in that order.
    **params
        The method's own parameters (``steps``, ``baseline``, ``cam_layer`` ...).

    Returns
    -------
    numpy.ndarray
        float32; ``(C, H, W)`` per image for gradient methods (``C`` the network input's
        channels), ``(H, W)`` for CAM-like methods, with ``N`` and ``U`` axes as
        :meth:`SaliencyImage.backprop` describes.

    Examples
    --------
    PyHealth's batch and its 0-based labels, each image's own class:

    >>> maps = saliency(model, batch, unit='label', unit_base=0,      # doctest: +SKIP
    ...                 preprocessed=True)
    >>> heat = viz.reduce_channels(maps, 'maxabs')      # (N, H, W)   # doctest: +SKIP
    """
    unit_base = check_unit_base(unit_base)
    dnn = as_dnn(dnn)
    layer = layer if layer is not None else dnn.layers[-1]
    unit = "predicted" if unit is None else unit
    images, labels, label_base = resolve_images(images, unit, labels, unit_base,
                                                image_key, label_key)
    obj = make_method(dnn, method, layer, unit, reduce, batch_size, call, unit_base,
                      **params)
    kwargs = {"preprocessed": preprocessed}
    if to_layer is not None:
        kwargs["to_layer"] = to_layer
    if labels is None:
        return obj.backprop(images, **kwargs)
    with obj.labelled(labels, label_base):
        return obj.backprop(images, **kwargs)
