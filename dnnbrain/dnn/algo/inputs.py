"""What :func:`~dnnbrain.dnn.algo.saliency` takes besides images: a raw module, a folder
or a stimulus file, a mapping batch (PyHealth's ``{'image': ..., 'label': ...}``), and
the labels of the per-image unit ``'label'``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Tuple

import numpy as np
from torch import nn

from ...io.stim import Stimulus
from ..models import DNN
from .target import LABEL

#: Keys of a mapping batch tried, in order, for the images and for the labels when
#: ``image_key`` / ``label_key`` are not given (PyHealth, Hugging Face, common loaders).
IMAGE_KEYS = ("image", "images", "img", "x", "pixel_values", "input")
LABEL_KEYS = ("label", "labels", "y", "target", "targets")


def as_dnn(model: Any) -> DNN:
    """A DNN as it is; a ``torch.nn.Module`` wrapped as ``DNN(model)`` (layers from its
    ``named_modules()``, pixels 0..1 with as many channels as its first convolution
    takes); TypeError for anything else."""
    if isinstance(model, DNN):
        return model
    if isinstance(model, nn.Module):
        return DNN(model)
    raise TypeError(f"`dnn` must be a dnnbrain DNN or a torch.nn.Module, got "
                    f"{type(model).__name__}")


def wants_label(unit: Any) -> bool:
    """True when ``unit`` (one or a list) holds the per-image unit ``'label'``."""
    items = unit if isinstance(unit, (list, tuple)) and not (
        isinstance(unit, tuple) and unit and isinstance(unit[0], str)) else [unit]
    return any(isinstance(u, str) and u == LABEL for u in items)


def _key(batch: Mapping[str, Any], given: Optional[str], tried: Tuple[str, ...],
         what: str, required: bool) -> Optional[str]:
    if given is not None:
        if given not in batch:
            raise ValueError(f"`{what}_key` {given!r} is not a key of the `images` mapping; "
                             f"its keys are {sorted(map(str, batch))}")
        return given
    found = next((k for k in tried if k in batch), None)
    if found is None and required:
        raise ValueError(f"the `images` mapping has no {what} key: it has "
                         f"{sorted(map(str, batch))}, dnnbrain looks for {list(tried)}; "
                         f"name it with {what}_key=")
    return found


def resolve_images(images: Any, unit: Any, labels: Any, unit_base: int,
                   image_key: Optional[str] = None, label_key: Optional[str] = None
                   ) -> Tuple[Any, Any, int]:
    """``(images, labels, labels' unit_base)`` for the engine.

    * a folder path: its images (:meth:`Stimulus.from_folder`, sorted);
    * a ``.stim.csv`` path or a :class:`Stimulus`: its images; with ``unit='label'`` and
      no ``labels``, its ``label`` column (class indices from 0: base 0);
    * a mapping: ``images[image_key]``, and with ``unit='label'`` and no ``labels``
      ``images[label_key]`` (counted from ``unit_base``).

    Raises
    ------
    ValueError or FileNotFoundError
        A missing path; a mapping without the keys; ``unit='label'`` with no labels (a
        stimulus file without a ``label`` column names the file and the column).
    """
    need = wants_label(unit)
    base = unit_base
    source = "`images`"
    if isinstance(images, (str, os.PathLike)) and os.path.isdir(images):
        source = f"the folder '{images}'"
        images = Stimulus.from_folder(images)
    elif isinstance(images, (str, os.PathLike)) and str(images).endswith(".csv"):
        if not os.path.isfile(images):
            raise FileNotFoundError(f"`images` stimulus file not found: '{images}'")
        source = f"the stimulus file '{images}'"
        images = Stimulus.read(images)
        images.check_files()
    elif isinstance(images, Mapping):
        ikey = _key(images, image_key, IMAGE_KEYS, "image", True)
        lkey = _key(images, label_key, LABEL_KEYS, "label", need and labels is None)
        if need and labels is None:
            labels = images[lkey]
        images = images[ikey]
    elif image_key is not None or label_key is not None:
        raise ValueError(f"`image_key`/`label_key` name keys of a mapping batch; `images` "
                         f"is a {type(images).__name__}")
    if isinstance(images, Stimulus) and need and labels is None:
        if images.labels is None:
            where = source if source != "`images`" else "the Stimulus"
            raise ValueError(f"`unit` 'label' needs a 'label' column: {where} has columns "
                             f"{list(images.data)}; add one (class indices from 0) or pass "
                             f"labels=")
        labels, base = np.asarray(images.labels), 0
    if need and labels is None:
        raise ValueError("`unit` 'label' needs each image's label: pass labels= (counted "
                         "from unit_base), a mapping batch with a label key, or a stimulus "
                         "file with a 'label' column")
    return images, labels, base
