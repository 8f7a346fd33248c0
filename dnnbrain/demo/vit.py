"""ShapeViT: the small demo vision transformer whose trained weights ship with dnnbrain."""
from __future__ import annotations

from torchvision.models.vision_transformer import VisionTransformer

from ..dnn.zoo import SHAPENET_CLASSES

#: Input side, patch side, blocks, heads, token width and MLP width of :func:`shape_vit`.
SHAPEVIT = dict(image_size=64, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64,
                mlp_dim=128)


def shape_vit(n_classes: int = len(SHAPENET_CLASSES)) -> VisionTransformer:
    """A four-block torchvision ViT for 64x64 RGB shape images.

    torchvision's own :class:`~torchvision.models.VisionTransformer` (so everything that
    holds for ``vit_b_16`` holds for it: a class token, ``encoder.layers`` of blocks whose
    attention is an ``nn.MultiheadAttention`` called with ``need_weights=False``, GELU in
    the MLPs), at toy size: 8x8 patches on an 8x8 grid (64 patch tokens and the class
    token), width 64, 4 heads, 4 blocks, about 0.2 M parameters (0.8 MB). Input
    ``(N, 3, 64, 64)`` float32 normalised with mean 0.5 and std 0.25 per channel (as
    ShapeNet); output ``(N, 4)`` logits over :data:`dnnbrain.dnn.zoo.SHAPENET_CLASSES`.

    Parameters
    ----------
    n_classes : int
        Number of output units.
    """
    return VisionTransformer(num_classes=n_classes, **SHAPEVIT)
