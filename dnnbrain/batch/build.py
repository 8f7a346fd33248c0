"""Building a run's network from its resolved ``model`` section: what the runner, the
merge and ``dnn_saliency_eval`` share (the device a process computes on is
:func:`dnnbrain.batch.launch.runtime_device`). Nothing here
reads or validates a config (:mod:`dnnbrain.batch.config` does), so evaluation builds a
run's network without the validator.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..dnn.base import ImageTransform, input_channels
from ..dnn.fingerprint import seeded
from ..dnn.models import DNN, build_network
from .factories import load_factory


def import_factory(spec: str, allow_code: bool = False) -> Any:
    """The builder a ``model.factory`` names (see :mod:`dnnbrain.batch.factories`):
    torchvision / timm models and registered builders by name; a user's
    ``'pkg.module:fn'`` or ``'/abs/file.py:fn'`` only with ``allow_code`` (else ValueError,
    nothing imported)."""
    return load_factory(spec, allow_code=allow_code)


def build_model(model: Mapping[str, Any], seed: int = 0, allow_code: bool = False) -> DNN:
    """The network of a resolved ``model`` section, on the CPU (errors propagate).

    It is built with torch's random generators seeded from ``seed`` (the run's ``seed``;
    :func:`~dnnbrain.dnn.fingerprint.seeded`, the caller's random state is unchanged), so
    random weights (``pretrained: false``, an untrained factory network) are the same on
    every call. ``allow_code``: a factory may be the user's own code
    (:func:`import_factory`).
    """
    with seeded(seed):
        return _build_model(model, allow_code)


def _build_model(model: Mapping[str, Any], allow_code: bool) -> DNN:
    if "name" in model:
        return build_network(model["name"], pretrained=model["pretrained"],
                             weights=model["weights"])
    built = import_factory(model["factory"], allow_code)(**model["kwargs"])
    if isinstance(built, DNN):
        return built
    if not isinstance(built, torch.nn.Module):
        raise TypeError(f"the factory must return a dnnbrain DNN or a torch.nn.Module, got "
                        f"{type(built).__name__}")
    first = input_channels(built)  # a grayscale network gets a grayscale transform
    transform = ImageTransform(model["img_size"], model["mean"], model["std"],
                               channels=1 if first == 1 else 3)
    return DNN(built, model["layers"], transform, img_size=model["img_size"])
