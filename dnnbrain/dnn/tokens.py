"""Token-sequence and channels-last layer outputs, laid out on their patch grid.

Transformers do not give ``(N, C, H, W)`` maps. A ViT block gives a token sequence
``(N, L, C)``: ``prefix`` leading tokens (class, distillation, register tokens) and then
``H * W`` patch tokens in row-major order; a Swin stage (or a timm channels-last block)
gives ``(N, H, W, C)``. This module is the ONE place that decides which layout a layer's
output has (:func:`layout_of`); units (:mod:`dnnbrain.dnn.algo.target`) and CAMs
(:mod:`dnnbrain.dnn.algo.cam`) ask it for the ``(N, C, H, W)`` view (:func:`patches`) and
the prefix tokens ``(N, P, C)`` (:func:`prefix_tokens`) instead of guessing.

How a layout is found, in order:

1. declared: ``DNN(model, token_layouts={layer: TokenLayout(...)})`` (keys: layer names or
   dotted module paths). The escape hatch for any model the rules below miss; a declared
   layout with ``grid=None`` gets its grid as in 2.
2. a 3-D output of a token model: the prefix count is the model's ``num_prefix_tokens``
   (timm), else 1 for a ``class_token`` / ``cls_token`` (torchvision ViT, DeiT-like) plus 1
   for a ``dist_token``; the grid is the input size divided by the stride of the patch
   embedding (the model's first ``nn.Conv2d`` whose stride equals its kernel size), kept
   only when ``H * W == L - prefix``.
3. a 4-D output is channels-last (``'nhwc'``) in a torchvision ``SwinTransformer`` (modules
   under ``features`` other than convolutions, and ``norm``) or a timm model whose
   ``output_fmt`` is ``'NHWC'`` (except under ``head``).

Anything else is an ordinary ``(N, C, ...)`` output (:func:`layout_of` returns None).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

LAYOUTS = ("tokens", "nhwc")


@dataclass(frozen=True)
class TokenLayout:
    """How a layer's output is laid out.

    Parameters
    ----------
    layout : {'tokens', 'nhwc'}
        ``'tokens'``: ``(N, L, C)`` with ``L = prefix + H * W``; ``'nhwc'``: ``(N, H, W, C)``.
    prefix : int
        Leading non-patch tokens (class, distillation, register); 0 for ``'nhwc'``.
    grid : (int, int) or None
        ``(H, W)`` of the patch tokens; None: inferred (input size / patch stride for
        tokens, the shape itself for ``'nhwc'``).
    """

    layout: str = "tokens"
    prefix: int = 0
    grid: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if not _nonneg(self.prefix) or (self.layout == "nhwc" and self.prefix):
            raise ValueError(f"`prefix` must be an int >= 0 (0 for 'nhwc'), got {self.prefix!r}")
        if self.grid is not None and not (isinstance(self.grid, (tuple, list)) and
                                          len(self.grid) == 2 and
                                          all(_nonneg(v) and v > 0 for v in self.grid)):
            raise ValueError(f"`grid` must be None or (H, W) positive ints, got {self.grid!r}")
        if self.grid is not None:
            object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))


def _nonneg(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_layouts(dnn: Any, layouts: Optional[Mapping[str, TokenLayout]]
                  ) -> Dict[str, TokenLayout]:
    """``DNN``'s ``token_layouts`` argument -> ``{dotted module path: TokenLayout}``."""
    if layouts is None:
        return {}
    if not isinstance(layouts, Mapping):
        raise TypeError(f"`token_layouts` must be a dict {{layer: TokenLayout}} or None, "
                        f"got {type(layouts).__name__}")
    out = {}
    for layer, lay in layouts.items():
        if not isinstance(lay, TokenLayout):
            raise TypeError(f"`token_layouts[{layer!r}]` must be a TokenLayout, got "
                            f"{type(lay).__name__}")
        out[dnn.layer_path(layer, "token_layouts")] = lay
    return out


def prefix_count(model: nn.Module) -> Optional[int]:
    """Prefix tokens of a token model (see the module notes), or None if it is not one."""
    n = getattr(model, "num_prefix_tokens", None)
    if _nonneg(n):
        return n
    count = None
    for attr in ("class_token", "cls_token"):
        if isinstance(getattr(model, attr, None), torch.Tensor):
            count = 1
    if count is not None and isinstance(getattr(model, "dist_token", None), torch.Tensor):
        count += 1
    return count


def patch_embed(model: nn.Module) -> Optional[nn.Conv2d]:
    """The patch embedding: the first Conv2d whose stride equals its kernel, or None."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and tuple(m.stride) == tuple(m.kernel_size):
            return m
    return None


def patch_stride(model: nn.Module) -> Optional[Tuple[int, int]]:
    """Stride ``(sh, sw)`` of the patch embedding (:func:`patch_embed`), or None."""
    m = patch_embed(model)
    return None if m is None else tuple(m.stride)


def _nhwc(model: nn.Module, path: str, module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return False
    try:
        from torchvision.models import SwinTransformer
    except ImportError:  # pragma: no cover
        SwinTransformer = ()
    if isinstance(model, SwinTransformer):
        return path.startswith("features.") or path == "norm"
    return getattr(model, "output_fmt", None) == "NHWC" and not path.startswith("head")


def layout_of(dnn: Any, layer: str, out: Any, hw: Sequence[int]) -> Optional[TokenLayout]:
    """The layout of ``layer``'s output ``out`` for inputs of spatial size ``hw``.

    Parameters
    ----------
    dnn : DNN
        The network (its ``model`` and declared ``token_layouts``).
    layer : str
        Layer name or dotted path.
    out : torch.Tensor
        The layer's output: ``(N, L, C)``, ``(N, H, W, C)`` or anything else.
    hw : (int, int)
        Height and width of the network input.

    Returns
    -------
    TokenLayout or None
        With ``grid`` filled when it can be found (None where not: :func:`patches` then
        gives ``(N, C, L - prefix)`` and :func:`require_grid` says what to declare);
        None for an ordinary ``(N, C, ...)`` output.
    """
    if not isinstance(out, torch.Tensor) or out.ndim not in (3, 4):
        return None
    path = dnn.layer_path(layer)
    model = dnn.model
    lay = getattr(dnn, "token_layouts", {}).get(path)
    if lay is None:
        if out.ndim == 4:
            return TokenLayout("nhwc", 0, tuple(out.shape[1:3])) if \
                _nhwc(model, path, model.get_submodule(path)) else None
        prefix = prefix_count(model)
        if prefix is None:
            return None
        lay = TokenLayout("tokens", prefix)
    if lay.layout == "nhwc":
        if out.ndim != 4:
            raise ValueError(f"`token_layouts` says layer {layer!r} is 'nhwc', but it gives "
                             f"shape {tuple(out.shape)}")
        return TokenLayout("nhwc", 0, tuple(out.shape[1:3]))
    if out.ndim != 3 or out.shape[1] <= lay.prefix:
        raise ValueError(f"layer {layer!r} gives shape {tuple(out.shape)}, not (N, L, C) "
                         f"tokens with more than {lay.prefix} prefix tokens")
    n_patch = out.shape[1] - lay.prefix
    if lay.grid is not None:
        if lay.grid[0] * lay.grid[1] != n_patch:
            raise ValueError(f"`token_layouts` grid {lay.grid} of layer {layer!r} does not "
                             f"hold its {n_patch} patch tokens")
        return lay
    stride = patch_stride(model)
    if stride is not None:
        grid = (int(hw[0]) // stride[0], int(hw[1]) // stride[1])
        if grid[0] * grid[1] == n_patch:
            return TokenLayout("tokens", lay.prefix, grid)
    return lay


def require_grid(lay: TokenLayout, layer: str, out: torch.Tensor) -> Tuple[int, int]:
    """``lay.grid``, or a one-line ValueError saying what to declare."""
    if lay.grid is None:
        raise ValueError(f"the patch grid of layer {layer!r} (shape {tuple(out.shape)}, "
                         f"{lay.prefix} prefix tokens) cannot be inferred; pass DNN(..., "
                         f"token_layouts={{{layer!r}: TokenLayout(prefix={lay.prefix}, "
                         f"grid=(H, W))}})")
    return lay.grid


def patches(out: torch.Tensor, lay: TokenLayout) -> torch.Tensor:
    """Patch tokens channels-first: ``(N, C, H, W)`` (``(N, C, L - prefix)`` when the grid
    is unknown); a view of ``out`` where possible, differentiable."""
    if lay.layout == "nhwc":
        return out.permute(0, 3, 1, 2)
    p = out[:, lay.prefix:].transpose(1, 2)
    return p if lay.grid is None else p.reshape(p.shape[0], p.shape[1], *lay.grid)


def prefix_tokens(out: torch.Tensor, lay: TokenLayout) -> torch.Tensor:
    """The prefix tokens ``(N, P, C)`` (``P = 0`` for ``'nhwc'``)."""
    if lay.layout == "nhwc":
        return out.new_zeros(out.shape[0], 0, out.shape[-1])
    return out[:, :lay.prefix]


def grid_map(dnn: Any, layer: str, out: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """``out`` as an ``(N, C, H, W)`` map: the patch grid of a token layer (prefix tokens
    dropped; ValueError when the grid is unknown), or ``out`` itself otherwise."""
    lay = layout_of(dnn, layer, out, hw)
    if lay is None:
        return out
    require_grid(lay, layer, out)
    return patches(out, lay)
