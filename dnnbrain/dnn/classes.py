"""Names of what a unit is: class names of a network's output units, and one-line unit
labels for figures, file names and web pages.

Class names come, in this order, from

* the network (``dnn.classes``): the named torchvision networks carry ImageNet's 1000
  names from torchvision's weights metadata (no download), the demo networks their
  shapes (:data:`dnnbrain.dnn.zoo.SHAPENET_CLASSES`);
* the stimulus file: its ``label`` column (0-based class index) paired with a ``class``
  column (the class name) names unit ``label + 1``.

Only units of the network's output layer (its last layer) are classes; any other unit is
labelled by its layer and number alone.

>>> from dnnbrain.dnn.models import ShapeNet
>>> dnn = ShapeNet()
>>> unit_label(dnn, "fc2", 2)
'fc2 unit 2 (square)'
>>> unit_label(dnn, "fc2", 2, requested="predicted")
'fc2 unit 2 (square), predicted'
>>> unit_label(dnn, "conv4", 1)
'conv4 unit 1'
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .models import DNN

ClassNames = Dict[int, str]


def stimulus_classes(stim: Any) -> Optional[ClassNames]:
    """Unit (1-based) -> class name from a stimulus table's ``label`` and ``class``
    columns (:class:`dnnbrain.io.stim.Stimulus`); None without both columns. The first
    name seen for a label wins."""
    data = getattr(stim, "data", None) or {}
    labels, names = data.get("label"), data.get("class")
    if labels is None or names is None:
        return None
    out: ClassNames = {}
    for lab, name in zip(labels, names):
        out.setdefault(int(lab) + 1, str(name))
    return out


def class_names(dnn: DNN, stim: Any = None) -> Optional[ClassNames]:
    """Unit (1-based) -> class name of ``dnn``'s output units: ``dnn.classes`` when the
    network has them, else the stimulus file's (:func:`stimulus_classes`), else None."""
    classes = getattr(dnn, "classes", None)
    if classes:
        return {k + 1: str(name) for k, name in enumerate(classes)}
    return stimulus_classes(stim) if stim is not None else None


def is_output_layer(dnn: DNN, layer: str) -> bool:
    """True when ``layer`` (a table name or dotted path) is the network's last layer,
    whose units are its classes."""
    if not dnn.layers:
        return False
    try:
        return dnn.layer2module(layer) is dnn.layer2module(dnn.layers[-1])
    except (KeyError, ValueError):
        return False


def unit_text(unit: Any) -> str:
    """A unit as text: ``'3'``, ``'(3, 4, 5)'``, ``"('cls', 3)"``, ``'predicted'``, or a
    callable's name."""
    if callable(unit):
        return getattr(unit, "__name__", "callable")
    return str(unit)


def class_of(dnn: DNN, layer: str, unit: Any, names: Optional[ClassNames] = None,
             stim: Any = None) -> Optional[str]:
    """The class name of ``unit`` of ``layer`` (an int unit of the output layer), or None.
    ``names`` overrides :func:`class_names` (``dnn``, ``stim``)."""
    if isinstance(unit, bool) or not isinstance(unit, int) or not is_output_layer(dnn, layer):
        return None
    names = class_names(dnn, stim) if names is None else names
    return None if names is None else names.get(unit)


def unit_label(dnn: DNN, layer: str, unit: Any, requested: Any = None,
               names: Optional[ClassNames] = None, stim: Any = None) -> str:
    """``'<layer> unit <unit> (<class>)'`` plus ``', predicted'`` when the unit was
    requested as ``'predicted'`` (``requested``), e.g. ``'fc3 unit 541 (drilling
    platform), predicted'``; the class only on the output layer, when known."""
    cls = class_of(dnn, layer, unit, names, stim)
    text = f"{layer} unit {unit_text(unit)}" + (f" ({cls})" if cls else "")
    if requested is not None and unit_text(requested) != unit_text(unit):
        text += f", {unit_text(requested)}"
    return text


__all__ = ["class_names", "stimulus_classes", "is_output_layer", "class_of", "unit_label",
           "unit_text"]
