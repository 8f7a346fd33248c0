"""Networks with named layers: the :class:`DNN` wrapper and the named networks.

>>> from dnnbrain.dnn.models import AlexNet
>>> dnn = AlexNet(pretrained=False)          # random weights; AlexNet() loads trained ones
>>> dnn.layer2module('conv5')                # the real features.10
Conv2d(256, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))

Layer tables, weights file names and preprocessing come from :mod:`dnnbrain.dnn.zoo`.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import timmnets, zoo
from .base import ImageTransform, input_channels
from .tokens import TokenLayout, check_layouts  # noqa: F401  (TokenLayout: re-export)

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


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


# ---------------------------------------------------------------------------------------
# weights


def _tv_weights(spec: zoo.NetSpec):
    import torchvision.models as tvm
    enum_name, member = spec.tv_weights.split(".")
    return getattr(getattr(tvm, enum_name), member)


def _candidates(spec: zoo.NetSpec, weights: Optional[PathLike]) -> List[Path]:
    """The offline places, in search order."""
    places: List[Path] = []
    if weights is not None:
        places.append(Path(weights).expanduser())
        return places
    data = os.environ.get("DNNBRAIN_DATA")
    if data:
        places.append(Path(data).expanduser() / "models" / spec.weights_file)
    if spec.tv_weights:
        places.append(Path(torch.hub.get_dir()) / "checkpoints"
                      / os.path.basename(_tv_weights(spec).url))
    else:
        places.append(DATA_DIR / spec.weights_file)
    return places


def load_reason(err: Exception) -> str:
    """torch.load's (often multi-line) complaint in one line: the unpickler's own reason
    when it gives one."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    if found:
        reason = found.group(1)
    else:  # torch's "Weights only load failed ... re-run with weights_only=False" preamble
        # and documentation pointer are advice to run the file's code: keep the reason only
        paras = [q.strip() for q in re.split(r"\n\s*\n", text) if q.strip()]
        kept = [q for q in paras if not q.startswith(("Weights only load failed",
                                                       "Check the documentation"))]
        reason = (kept or paras or [""])[0]
    if not reason.strip():
        reason = "the file ends too early (empty or truncated)"
    return " ".join(f"{type(err).__name__}: {reason}".split())


def load_state_dict(spec: zoo.NetSpec, weights: Optional[PathLike] = None,
                    map_location: Union[str, torch.device] = "cpu",
                    download: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Find and load the state dict of ``spec``, offline first.

    Order: the explicit ``weights`` path; ``$DNNBRAIN_DATA/models/<weights_file>``;
    torchvision's cache (``$TORCH_HOME/hub/checkpoints/<file>``); then torchvision's normal
    download, unless ``download`` is False or ``$DNNBRAIN_OFFLINE`` is set.

    Raises
    ------
    FileNotFoundError
        If ``weights`` is given and missing, or nothing was found; the message names every
        place searched and the file name expected.
    ValueError
        If a file exists but is not a loadable state dict.
    """
    return _find_state_dict(spec, weights, map_location, download)[0]


def read_weights(path: Path, who: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """The state dict in the weights file ``path`` (``torch.load(weights_only=True)``, or
    safetensors for a ``.safetensors`` file) for the network ``who``.

    Raises
    ------
    ValueError
        For a corrupt file, one whose pickle holds code, or one without a state dict.
    """
    log.info("loading %s weights from %s", who, path)
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt / not a weights-only pickle
        raise ValueError(f"weights file {str(path)!r} for {who} could not be loaded by "
                         f"torch.load(weights_only=True): {load_reason(err)}") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {str(path)!r} for {who} does not hold a state dict "
                         f"(got {type(state).__name__})")
    return dict(state)


def _find_state_dict(spec: zoo.NetSpec, weights: Optional[PathLike],
                     map_location: Union[str, torch.device], download: Optional[bool]
                     ) -> Tuple[Dict[str, torch.Tensor], str]:
    """:func:`load_state_dict` and where the state dict came from (a path, or
    torchvision's download)."""
    places = _candidates(spec, weights)
    if weights is not None and places[0].is_dir():
        raise ValueError(f"`weights` must be a weights file, got the folder "
                         f"{str(places[0])!r}")
    if weights is not None and not places[0].is_file():
        raise FileNotFoundError(f"`weights` file not found: {str(places[0])!r}")
    for path in places:
        if path.is_file():
            return read_weights(path, spec.name, map_location), str(path)
    if download is None:
        download = not os.environ.get("DNNBRAIN_OFFLINE")
    if download and spec.tv_weights:
        try:
            return (_tv_weights(spec).get_state_dict(progress=True),
                    f"torchvision's download of {spec.tv_weights}")
        except Exception as err:
            log.info("download of %s weights failed: %s", spec.name, err)
    data = os.environ.get("DNNBRAIN_DATA", "<unset>")
    raise FileNotFoundError(
        f"no weights for {spec.name}: looked for (1) an explicit `weights=` path (none "
        f"given), (2) $DNNBRAIN_DATA/models/{spec.weights_file} (DNNBRAIN_DATA={data}), "
        f"(3) {'torchvision' if spec.tv_weights else 'dnnbrain'}'s "
        f"{'cache' if spec.tv_weights else 'package data'} {str(places[-1])!r}"
        + (", then tried torchvision's download" if download and spec.tv_weights else "")
        + ". Place the file in one of these, or pass pretrained=False for random weights.")


def state_dict_mismatch(model: nn.Module, state: Mapping[str, object],
                        show: int = 3) -> Optional[str]:
    """How ``state`` fails to fit ``model`` on one line, or None when every key and shape
    matches.

    Parameters
    ----------
    model : torch.nn.Module
        The network the weights are for.
    state : mapping of str to torch.Tensor
        A state dict (e.g. from a weights file).
    show : int
        Keys listed per kind of problem (the rest are counted).

    Returns
    -------
    str or None
        E.g. ``"2 tensor(s) of the wrong shape: 'fc.weight' is (10, 512) in the file,
        (4, 512) in the model; ..."``, then missing and unexpected keys.
    """
    expected = model.state_dict()

    def listed(items: List[str]) -> str:
        more = f"; ... and {len(items) - show} more" if len(items) > show else ""
        return "; ".join(items[:show]) + more

    def held(v: object) -> str:
        return (str(tuple(v.shape)) if isinstance(v, torch.Tensor) else
                f"a {type(v).__name__}, not a tensor,")

    shapes = [f"{k!r} is {held(v)} in the file, {tuple(expected[k].shape)} in the model"
              for k, v in state.items() if k in expected and not (
                  isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(expected[k].shape))]
    missing = [repr(k) for k in expected if k not in state]
    extra = [repr(k) for k in state if k not in expected]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of the wrong shape: {listed(shapes)}")
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the file: {listed(missing)}")
    if extra:
        parts.append(f"{len(extra)} key(s) the model does not have: {listed(extra)}")
    return ". ".join(parts) if parts else None


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

__all__ = ["DNN", "build_network", "network_names", "load_state_dict", "AlexNet", "Vgg11",
           "Vgg16", "Vgg19", "Vgg19_bn", "Googlenet", "Resnet18", "Resnet50", "Resnet152",
           "InceptionV3", "ViT_B_16", "Swin_T", "ConvNeXt_Tiny", "EfficientNet_B0",
           "MobileNet_V3_Large", "ShapeNet"]
