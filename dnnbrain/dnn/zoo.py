"""The network table: layer names, weights files and preprocessing as data.

Every named network of :mod:`dnnbrain.dnn.models` is one :class:`NetSpec` row of
:data:`NETWORKS`. Nothing else in the package knows a layer table, a weights
file name or a normalisation constant: they are resolved here, in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetSpec:
    """One named network.

    Attributes
    ----------
    name : str
        Public name (``'AlexNet'``); the registry matches it case-insensitively.
    builder : str
        ``torchvision.models`` function name, or ``'dnnbrain.demo'`` for the demo net.
    builder_kwargs : dict
        Extra keyword arguments for the builder.
    layers : dict
        Ordered mapping of dnnbrain layer name -> dotted module path.
    weights_file : str
        File name looked up in ``$DNNBRAIN_DATA/models/``.
    tv_weights : str or None
        ``torchvision.models`` weights enum member (``'AlexNet_Weights.IMAGENET1K_V1'``);
        its URL gives the file name in torchvision's cache.
    img_size : int
        Side of the square network input.
    mean, std : tuple of float
        Per-channel normalisation applied after scaling pixels to 0..1.
    drop_aux : bool
        Remove auxiliary classifiers after loading (GoogLeNet, Inception v3).
    resize : int or None
        Shorter side the image is resized to before the centre crop of ``img_size``
        (torchvision's weights transforms: ViT 256 -> 224); None resizes straight to
        ``img_size``.
    interpolation : str
        ``'bilinear'`` or ``'bicubic'``, as the weights' transforms resample.
    stem : str or None
        Layer name or dotted module path of the network's *affine stem*: the last module
        whose output, in eval mode, is still an affine function of the input (the first
        convolution, its batch norm; GoogLeNet's and Inception's input transform
        included). See :attr:`dnnbrain.dnn.models.DNN.stem`.
    """

    name: str
    builder: str
    layers: Dict[str, str]
    weights_file: str
    tv_weights: Optional[str]
    img_size: int = 224
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    builder_kwargs: Dict[str, object] = field(default_factory=dict)
    drop_aux: bool = False
    stem: Optional[str] = None
    resize: Optional[int] = None
    interpolation: str = "bilinear"


def _seq(prefix: str, names: Sequence[str], start: int = 0) -> List[Tuple[str, str]]:
    """Pair ``names`` with ``prefix.<index>`` paths, skipping empty names."""
    return [(n, f"{prefix}.{i}") for i, n in enumerate(names, start) if n]


# AlexNet: DNNBrain's 18 names (dropout layers are unnamed).
_ALEXNET = dict(
    _seq("features", ["conv1", "conv1_relu", "conv1_maxpool", "conv2", "conv2_relu",
                      "conv2_maxpool", "conv3", "conv3_relu", "conv4", "conv4_relu",
                      "conv5", "conv5_relu", "conv5_maxpool"])
    + _seq("classifier", ["", "fc1", "fc1_relu", "", "fc2", "fc2_relu", "fc3"])
)


def _vgg(cfg: Sequence[object], bn: bool) -> Dict[str, str]:
    """VGG table from torchvision's cfg list: ``conv<block>_<i>`` (+ ``_bn``) + ``_relu``,
    ``conv<block>_maxpool``, then ``fc1, fc1_relu, fc2, fc2_relu, fc3``.

    Blocks with one convolution drop the ``_<i>`` suffix (VGG11's conv1, conv2).
    With batch norm the order is conv, bn, relu, as the modules really run (DNNBrain's
    Vgg19_bn table had bn and relu swapped).
    """
    blocks: List[List[object]] = [[]]
    for v in cfg:
        blocks[-1].append(v)
        if v == "M":
            blocks.append([])
    names: List[str] = []
    for b, block in enumerate(blocks[:-1], 1):
        n_conv = len(block) - 1
        for i in range(1, n_conv + 1):
            base = f"conv{b}" if n_conv == 1 else f"conv{b}_{i}"
            names += [base] + ([base + "_bn"] if bn else []) + [base + "_relu"]
        names.append(f"conv{b}_maxpool")
    table = dict(_seq("features", names))
    table.update(_seq("classifier", ["fc1", "fc1_relu", "", "fc2", "fc2_relu", "", "fc3"]))
    return table


_VGG_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def _resnet(blocks: Sequence[int]) -> Dict[str, str]:
    """ResNet table: stem, ``res<k>`` stages, ``res<k>_<j>`` blocks (from 1), avgpool, fc."""
    table = {"conv1": "conv1", "conv1_bn": "bn1", "conv1_relu": "relu",
             "conv1_maxpool": "maxpool"}
    for k, n in enumerate(blocks, 1):
        table[f"res{k}"] = f"layer{k}"
        for j in range(n):
            table[f"res{k}_{j + 1}"] = f"layer{k}.{j}"
    table.update({"avgpool": "avgpool", "fc": "fc"})
    return table


_GOOGLENET = {
    "conv1": "conv1", "conv1_maxpool": "maxpool1", "conv2": "conv2", "conv3": "conv3",
    "conv3_maxpool": "maxpool2", "inception3a": "inception3a",
    "inception3b": "inception3b", "inception3_maxpool": "maxpool3",
    **{f"inception4{c}": f"inception4{c}" for c in "abcde"},
    "inception4_maxpool": "maxpool4", "inception5a": "inception5a",
    "inception5b": "inception5b", "avgpool": "avgpool", "fc": "fc",
}

_INCEPTION = {
    "conv1a": "Conv2d_1a_3x3", "conv2a": "Conv2d_2a_3x3", "conv2b": "Conv2d_2b_3x3",
    "maxpool1": "maxpool1", "conv3b": "Conv2d_3b_1x1", "conv4a": "Conv2d_4a_3x3",
    "maxpool2": "maxpool2",
    **{f"mixed{s}": f"Mixed_{s}" for s in ("5b", "5c", "5d", "6a", "6b", "6c", "6d",
                                            "6e", "7a", "7b", "7c")},
    "avgpool": "avgpool", "fc": "fc",
}

def _vit(blocks: int = 12) -> Dict[str, str]:
    """ViT table: ``patch_embed`` (conv_proj), ``block<i>`` (encoder layers, from 1) with
    ``_norm1, _attn, _norm2, _mlp``, ``norm`` (the final LayerNorm), ``head``."""
    table = {"patch_embed": "conv_proj"}
    for i in range(blocks):
        at = f"encoder.layers.encoder_layer_{i}"
        table[f"block{i + 1}"] = at
        for name, part in (("norm1", "ln_1"), ("attn", "self_attention"),
                           ("norm2", "ln_2"), ("mlp", "mlp")):
            table[f"block{i + 1}_{name}"] = f"{at}.{part}"
    table.update({"norm": "encoder.ln", "head": "heads.head"})
    return table


def _staged(first: str, stages: Sequence[int], between: str, tail: Dict[str, str],
            stem: str = "stem") -> Dict[str, str]:
    """Table of a 4-stage ``features`` network (Swin, ConvNeXt): ``stem`` (features.0),
    ``stage<k>`` with ``stage<k>_block<j>`` (from 1), ``stage<k>_<between>`` for the
    downsampling module before stages 2-4, then ``tail``."""
    table = {stem: first}
    for k, n in enumerate(stages, 1):
        if k > 1:
            table[f"stage{k}_{between}"] = f"features.{2 * k - 2}"
        table[f"stage{k}"] = f"features.{2 * k - 1}"
        for j in range(n):
            table[f"stage{k}_block{j + 1}"] = f"features.{2 * k - 1}.{j}"
    table.update(tail)
    return table


_SWIN_T = _staged("features.0", [2, 2, 6, 2], "merge",
                  {"norm": "norm", "avgpool": "avgpool", "head": "head"},
                  stem="patch_embed")
_CONVNEXT_TINY = _staged("features.0", [3, 3, 9, 3], "downsample",
                         {"avgpool": "avgpool", "norm": "classifier.0",
                          "head": "classifier.2"})


def _efficientnet(stages: Sequence[int]) -> Dict[str, str]:
    """EfficientNet table: ``stem`` (features.0), MBConv ``stage<k>`` (features.k) with
    ``stage<k>_block<j>``, ``top_conv`` (the last 1x1 conv), ``avgpool``, ``head``."""
    table = {"stem": "features.0"}
    for k, n in enumerate(stages, 1):
        table[f"stage{k}"] = f"features.{k}"
        for j in range(n):
            table[f"stage{k}_block{j + 1}"] = f"features.{k}.{j}"
    table.update({"top_conv": f"features.{len(stages) + 1}", "avgpool": "avgpool",
                  "head": "classifier.1"})
    return table


_MOBILENET_V3_LARGE = {
    "stem": "features.0", **{f"block{i}": f"features.{i}" for i in range(1, 16)},
    "top_conv": "features.16", "avgpool": "avgpool", "fc1": "classifier.0",
    "fc1_act": "classifier.1", "head": "classifier.3",
}

# The demo network (dnnbrain.demo.net.ShapeCNN) is an nn.Sequential whose children
# carry these names, so each name is its own module path.
SHAPENET_LAYERS = [
    "conv1", "conv1_relu", "conv1_maxpool", "conv2", "conv2_relu", "conv2_maxpool",
    "conv3", "conv3_relu", "conv3_maxpool", "conv4", "conv4_relu", "avgpool", "flatten",
    "fc1", "fc1_relu", "fc2",
]
SHAPENET_CLASSES = ["circle", "square", "triangle", "star"]

NETWORKS: Dict[str, NetSpec] = {s.name.lower(): s for s in [
    NetSpec("AlexNet", "alexnet", _ALEXNET, "alexnet.pth", "AlexNet_Weights.IMAGENET1K_V1",
            stem="conv1"),
    NetSpec("Vgg11", "vgg11", _vgg(_VGG_CFG[11], False), "vgg11.pth",
            "VGG11_Weights.IMAGENET1K_V1", stem="conv1"),
    NetSpec("Vgg16", "vgg16", _vgg(_VGG_CFG[16], False), "vgg16.pth",
            "VGG16_Weights.IMAGENET1K_V1", stem="conv1_1"),
    NetSpec("Vgg19", "vgg19", _vgg(_VGG_CFG[19], False), "vgg19.pth",
            "VGG19_Weights.IMAGENET1K_V1", stem="conv1_1"),
    NetSpec("Vgg19_bn", "vgg19_bn", _vgg(_VGG_CFG[19], True), "vgg19_bn.pth",
            "VGG19_BN_Weights.IMAGENET1K_V1", stem="conv1_1_bn"),
    NetSpec("Googlenet", "googlenet", _GOOGLENET, "googlenet.pth",
            "GoogLeNet_Weights.IMAGENET1K_V1",
            builder_kwargs={"aux_logits": True, "transform_input": True,
                            "init_weights": False}, drop_aux=True, stem="conv1.bn"),
    NetSpec("Resnet18", "resnet18", _resnet([2, 2, 2, 2]), "resnet18.pth",
            "ResNet18_Weights.IMAGENET1K_V1", stem="conv1_bn"),
    NetSpec("Resnet50", "resnet50", _resnet([3, 4, 6, 3]), "resnet50.pth",
            "ResNet50_Weights.IMAGENET1K_V1", stem="conv1_bn"),
    NetSpec("Resnet152", "resnet152", _resnet([3, 8, 36, 3]), "resnet152.pth",
            "ResNet152_Weights.IMAGENET1K_V1", stem="conv1_bn"),
    NetSpec("InceptionV3", "inception_v3", _INCEPTION, "inception_v3.pth",
            "Inception_V3_Weights.IMAGENET1K_V1", img_size=299,
            builder_kwargs={"aux_logits": True, "transform_input": True,
                            "init_weights": False}, drop_aux=True,
            stem="Conv2d_1a_3x3.bn"),
    # modern networks: preprocessing as torchvision's weights transforms (resize, crop,
    # interpolation); stems end before the first nonlinearity (LayerNorm included)
    NetSpec("ViT_B_16", "vit_b_16", _vit(12), "vit_b_16.pth",
            "ViT_B_16_Weights.IMAGENET1K_V1", resize=256, stem="patch_embed"),
    NetSpec("Swin_T", "swin_t", _SWIN_T, "swin_t.pth", "Swin_T_Weights.IMAGENET1K_V1",
            resize=232, interpolation="bicubic", stem="features.0.0"),
    NetSpec("ConvNeXt_Tiny", "convnext_tiny", _CONVNEXT_TINY, "convnext_tiny.pth",
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", resize=236, stem="features.0.0"),
    NetSpec("EfficientNet_B0", "efficientnet_b0", _efficientnet([1, 2, 2, 3, 3, 4, 1]),
            "efficientnet_b0.pth", "EfficientNet_B0_Weights.IMAGENET1K_V1", resize=256,
            interpolation="bicubic", stem="features.0.1"),
    NetSpec("MobileNet_V3_Large", "mobilenet_v3_large", _MOBILENET_V3_LARGE,
            "mobilenet_v3_large.pth", "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
            resize=232, stem="features.0.1"),
    NetSpec("ShapeNet", "dnnbrain.demo", {n: n for n in SHAPENET_LAYERS}, "shapenet.pth",
            None, img_size=64,
            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), stem="conv1"),
    NetSpec("ShapeViT", "dnnbrain.demo.vit", _vit(4), "shapevit.pth", None, img_size=64,
            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), stem="patch_embed"),
]}


def get_spec(name: str) -> NetSpec:
    """Return the :class:`NetSpec` registered under ``name`` (case-insensitive).

    Raises
    ------
    ValueError
        If ``name`` is not a known network; the message lists the known names.
    """
    if not isinstance(name, str) or name.lower() not in NETWORKS:
        choices = [s.name for s in NETWORKS.values()]
        raise ValueError(f"`net` must be one of {choices} (or 'timm:<model>'), got {name!r}")
    return NETWORKS[name.lower()]


def network_names() -> List[str]:
    """Names of every registered network, in table order."""
    return [s.name for s in NETWORKS.values()]

