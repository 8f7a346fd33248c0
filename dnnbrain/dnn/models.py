"""Networks with named layers: the :class:`DNN` wrapper and the named networks.

>>> from dnnbrain.dnn.models import AlexNet
>>> dnn = AlexNet(pretrained=False)          # random weights; AlexNet() loads trained ones
>>> dnn.layer2module('conv5')                # the real features.10
Conv2d(256, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))

Layer tables, weights file names and preprocessing come from :mod:`dnnbrain.dnn.zoo`;
finding and reading weights files is :mod:`dnnbrain.dnn.weights`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import timmnets, weights as _weights, zoo
from .base import ImageTransform, input_channels
from .tokens import TokenLayout, check_layouts  # noqa: F401  (TokenLayout: re-export)
from .weights import (PathLike, _find_state_dict, _tv_weights, load_reason, load_state_dict,
                      read_weights, state_dict_mismatch)

DATA_DIR = _weights.DATA_DIR  # the package's data folder (demo weights): re-export

class DNN:
    """A network whose layers have names.

    Parameters
    ----------
    model : torch.nn.Module
        The network. It is used as it is: dnnbrain never swaps its modules or leaves
        hooks on it.
    layers : mapping of str to str, sequence of str, or None
        Layer table (name -> dotted module path, in forward order). None takes every
        submodule's dotted path from ``model.named_modules()``.
    test_transform : ImageTransform or None
        Image -> network input. None: pixels scaled to 0..1, resized to ``img_size`` if set,
        with one channel (luminance) when the model's first convolution takes one
        (``in_channels=1``), else three (RGB).
    img_size : int or None
        Side of the square input.
    name : str or None
        Display name.
    stem : str or None
        The *affine stem*: a layer (table name or dotted path) whose output, in eval mode,
        is an affine function of the network input — only convolutions, linear layers,
        batch norm and per-channel scaling before it, no nonlinearity. Methods that add up
        the input gradients of many inputs of one image (Integrated Gradients' steps,
        SmoothGrad's samples) differentiate to the stem's output for every input and take
        the backward through the stem once per image: the same sum, by linearity, for
        less arithmetic (an 11x11 first convolution's backward is a fifth of AlexNet's
        forward+backward). The named networks set it from their table; None (the
        default for your own models) turns it off. A non-affine stem, or one the forward
        pass calls more than once, gives wrong maps.
    channels_last : bool
        The model accepts channels-last (NHWC) tensors: it flattens with
        ``torch.flatten``/``nn.Flatten`` or ``reshape``, never ``.view`` on 4-D
        activations. Saliency passes on the CPU then run channels-last, 10-40 % faster
        (see :attr:`dnnbrain.dnn.algo.SaliencyImage.channels_last`). True for the named
        networks; False by default for your own models.

    token_layouts : dict or None
        ``{layer: TokenLayout(layout, prefix, grid)}`` for layers whose token-sequence
        ``(N, L, C)`` or channels-last ``(N, H, W, C)`` output the rules of
        :mod:`dnnbrain.dnn.tokens` do not recognise (torchvision ViT/Swin and timm
        models need none).

    Attributes
    ----------
    layers : list of str
        Layer names in forward order. Dotted module paths are accepted wherever a layer
        name is.
    """

    def __init__(self, model: nn.Module, layers: Union[Mapping[str, str], Sequence[str], None]
                 = None, test_transform: Optional[ImageTransform] = None,
                 img_size: Optional[int] = None, name: Optional[str] = None,
                 stem: Optional[str] = None, channels_last: bool = False,
                 token_layouts: Optional[Mapping[str, "TokenLayout"]] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        if layers is None:
            table = {n: n for n, _ in model.named_modules() if n}
        elif isinstance(layers, Mapping):
            table = dict(layers)
        else:
            table = {n: n for n in layers}
        self._table: Dict[str, str] = table
        for lname in table:
            self.layer2module(lname)  # fail early on a bad table
        self.img_size = img_size
        if test_transform is None:
            first = input_channels(model)
            test_transform = ImageTransform(img_size, channels=1 if first == 1 else 3)
        self.test_transform = test_transform
        self.name = name or type(model).__name__
        self.classes: Optional[List[str]] = None
        if stem is not None:
            self.layer2module(stem)
        self.stem = stem
        if not isinstance(channels_last, bool):
            raise TypeError(f"`channels_last` must be a bool, got {channels_last!r}")
        self.channels_last = channels_last
        self.token_layouts = check_layouts(self, token_layouts)

    @property
    def layers(self) -> List[str]:
        """Layer names, in forward order."""
        return list(self._table)

    def layer_path(self, layer: str, name: str = "layer") -> str:
        """Dotted module path of ``layer`` (a table name or a dotted path); errors name
        the parameter ``name`` (``to_layer``, ``cam_layer`` ...)."""
        if not isinstance(layer, str):
            raise TypeError(f"`{name}` must be a str, got {type(layer).__name__}")
        if layer in self._table:
            return self._table[layer]
        try:
            if not layer:  # get_submodule('') is the whole model, not a layer
                raise AttributeError(layer)
            self.model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"`{name}` must be one of {self.layers} (or a dotted module "
                             f"path of the model), got {layer!r}") from None
        return layer

    def layer2module(self, layer: str, name: str = "layer") -> nn.Module:
        """The ``nn.Module`` behind ``layer`` (a table name or a dotted module path).

        Raises
        ------
        TypeError
            If ``layer`` is not a str.
        ValueError
            If ``layer`` is neither; the message names the parameter ``name`` and lists
            the table's names.
        """
        path = self.layer_path(layer, name)
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"`{name}` {layer!r} maps to {path!r}, which is not a "
                             f"submodule of {type(self.model).__name__}") from None

    def after_stem(self, layer: str) -> bool:
        """True when ``layer`` runs after the affine stem by the table's forward order
        (False without a stem, or for a layer the table does not place)."""
        if self.stem is None:
            return False
        spot, stem = self._position(layer), self._position(self.stem)
        return spot is not None and stem is not None and spot > stem

    def _position(self, layer: str) -> Optional[int]:
        """Index of the table entry that is ``layer`` or contains it."""
        path = self.layer_path(layer)
        for i, entry in enumerate(self._table.values()):
            if path == entry or path.startswith(entry + "."):
                return i
        return None

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter or buffer (CPU if it has none)."""
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            return t.device
        return torch.device("cpu")

    def to(self, device: Union[str, torch.device]) -> "DNN":
        """Move the model to ``device``; returns self."""
        self.model.to(device)
        return self

    def eval(self) -> "DNN":
        """Put the model in eval mode; returns self."""
        self.model.eval()
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass: ``(N, 3, H, W)`` network input -> model output (logits)."""
        return self.model(x.to(self.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self._table)} layers, {self.device})"


def _build_module(spec: zoo.NetSpec) -> nn.Module:
    if spec.builder == "dnnbrain.demo":
        from ..demo.net import ShapeCNN
        return ShapeCNN()
    if spec.builder == "dnnbrain.demo.vit":
        from ..demo.vit import shape_vit
        return shape_vit()
    import torchvision.models as tvm
    return getattr(tvm, spec.builder)(weights=None, **spec.builder_kwargs)


def _build_timm(name: str, pretrained: bool, weights: Optional[PathLike]) -> DNN:
    model, path = timmnets.create(name, pretrained, weights)
    if path is not None:
        state = read_weights(Path(path), name)
        problem = state_dict_mismatch(model, state)
        if problem is not None:
            raise ValueError(f"weights {str(path)!r} do not match {name}: {problem}")
        model.load_state_dict(state)
    layers, size, mean, std = timmnets.describe(model)
    return DNN(model.eval(), layers, ImageTransform(size, mean, std), img_size=size[0],
               name=timmnets.canonical(name))


def build_network(name: str, pretrained: bool = True, weights: Optional[PathLike] = None,
                  device: Union[str, torch.device, None] = None,
                  download: Optional[bool] = None) -> DNN:
    """Build a named network (case-insensitive ``name``, see :func:`network_names`).

    Parameters
    ----------
    name : str
        ``'AlexNet'``, ``'Vgg16'``, ``'Resnet18'``, ``'ShapeNet'``, ... or
        ``'timm:<model>'`` for any timm model (:mod:`dnnbrain.dnn.timmnets`).
    pretrained : bool
        Load trained weights (see :func:`load_state_dict`); False gives random weights.
    weights : path or None
        Explicit weights file (implies ``pretrained``).
    device : str, torch.device or None
        Where to put the model (default CPU).
    download : bool or None
        Allow torchvision's download as the last resort (default: unless
        ``$DNNBRAIN_OFFLINE`` is set).

    Returns
    -------
    DNN
        In eval mode, on ``device``.
    """
    if timmnets.is_timm_name(name):  # any timm model (never downloaded: see timmnets)
        return _build_timm(name, pretrained, weights).to(device or "cpu")
    spec = zoo.get_spec(name)
    if pretrained or weights is not None:  # the random init is overwritten: keep the RNG
        with torch.random.fork_rng(devices=[]):
            model = _build_module(spec)
    else:
        model = _build_module(spec)
    if pretrained or weights is not None:
        state, where = _find_state_dict(spec, weights, "cpu", download)
        problem = state_dict_mismatch(model, state)
        if problem is None:
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                problem = " ".join(str(err).split())
        if problem is not None:
            raise ValueError(f"weights {where!r} do not match {spec.name}: {problem}")
    if spec.drop_aux:  # as torchvision does after loading its weights
        model.aux_logits = False
        model.aux1 = model.aux2 = None
        if hasattr(model, "AuxLogits"):
            model.AuxLogits = None
    model.eval()
    transform = ImageTransform(spec.img_size, spec.mean, spec.std, resize=spec.resize,
                               interpolation=spec.interpolation)
    dnn = DNN(model, spec.layers, transform,
              img_size=spec.img_size, name=spec.name, stem=spec.stem, channels_last=True)
    if spec.builder.startswith("dnnbrain.demo"):
        dnn.classes = list(zoo.SHAPENET_CLASSES)
    elif spec.tv_weights:  # ImageNet's names, from torchvision's metadata (no download)
        dnn.classes = list(_tv_weights(spec).meta.get("categories") or []) or None
    if device is not None:
        dnn.to(device)
    return dnn


def network_names() -> List[str]:
    """Names accepted by :func:`build_network` (and the CLI's ``-net``)."""
    return zoo.network_names()


def _named(spec_name: str):
    def factory(pretrained: bool = True, weights: Optional[PathLike] = None,
                device: Union[str, torch.device, None] = None) -> DNN:
        return build_network(spec_name, pretrained=pretrained, weights=weights, device=device)
    factory.__name__ = factory.__qualname__ = spec_name
    factory.__doc__ = (f"{spec_name} with dnnbrain layer names (see :mod:`dnnbrain.dnn.zoo`)."
                       "\n\n    Parameters\n    ----------\n    pretrained : bool\n"
                       "        Load trained weights, offline first (default True).\n"
                       "    weights : path or None\n        Explicit weights file.\n"
                       "    device : str, torch.device or None\n        Target device.\n\n"
                       "    Returns\n    -------\n    DNN\n")
    return factory


AlexNet = _named("AlexNet")
Vgg11 = _named("Vgg11")
Vgg16 = _named("Vgg16")
Vgg19 = _named("Vgg19")
Vgg19_bn = _named("Vgg19_bn")
Googlenet = _named("Googlenet")
Resnet18 = _named("Resnet18")
Resnet50 = _named("Resnet50")
Resnet152 = _named("Resnet152")
InceptionV3 = _named("InceptionV3")
ViT_B_16 = _named("ViT_B_16")
Swin_T = _named("Swin_T")
ConvNeXt_Tiny = _named("ConvNeXt_Tiny")
EfficientNet_B0 = _named("EfficientNet_B0")
MobileNet_V3_Large = _named("MobileNet_V3_Large")
ShapeNet = _named("ShapeNet")

__all__ = ["DNN", "build_network", "network_names", "load_state_dict", "load_reason",
           "read_weights", "state_dict_mismatch", "AlexNet", "Vgg11",
           "Vgg16", "Vgg19", "Vgg19_bn", "Googlenet", "Resnet18", "Resnet50", "Resnet152",
           "InceptionV3", "ViT_B_16", "Swin_T", "ConvNeXt_Tiny", "EfficientNet_B0",
           "MobileNet_V3_Large", "ShapeNet"]
