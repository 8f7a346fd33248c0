"""Transformer attribution from attention: attention rollout and Chefer's gradient-weighted
attention relevance, at any (layer, unit).

The attention probabilities of every attention module that runs before the target layer's
output (in call order: the blocks up to the target) are captured for one forward pass,
fused kernels included, without changing the model (see
:mod:`dnnbrain.dnn.algo.attention_capture`). Both maps are a row of a ``(T, T)`` token
relevance matrix, read over the patch tokens and laid out on the patch grid:

>>> roll = AttentionRollout(dnn).set_layer('heads', 'predicted')
>>> maps = roll.backprop(images)          # (N, H, W) float32, upsampled to the input
>>> rel = AttentionRelevance(dnn).set_layer('heads', 3)
"""
from __future__ import annotations

import logging
import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..models import DNN
from ..tokens import patch_stride, prefix_count
from .attention_capture import SEARCHED, attention_modules, capture_attention
from .budget import Budget
from .checks import TARGET_PARAMS, no_to_layer
from .engine import SaliencyImage
from .target import Unit, select

log = logging.getLogger(__name__)

HEAD_FUSION = ("mean", "max", "min")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _AttentionMap(SaliencyImage):
    """Shared machinery: the attention modules, the capture, the token grid, the row that
    is read and the upsampling. Not a method itself."""

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *,
                 attention_layers: Optional[Sequence[str]] = None, token: Any = "auto",
                 grid: Optional[Tuple[int, int]] = None,
                 prefix_tokens: Optional[int] = None, upsample: bool = True,
                 memory_budget: Budget = None) -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        if attention_layers is not None:
            if isinstance(attention_layers, str) or not isinstance(
                    attention_layers, (list, tuple)) or not attention_layers:
                raise TypeError(f"`attention_layers` must be a non-empty list of layer "
                                f"names or None, got {attention_layers!r}")
            for name in attention_layers:
                dnn.layer2module(name, "attention_layers")
            attention_layers = list(attention_layers)
        if not (token in ("auto", "mean") or (_is_int(token) and token >= 1)):
            raise ValueError(f"`token` must be 'auto', 'mean' or a token index >= 1 "
                             f"(counted from 1), got {token!r}")
        if grid is not None and not (isinstance(grid, (tuple, list)) and len(grid) == 2 and
                                     all(_is_int(v) and v >= 1 for v in grid)):
            raise ValueError(f"`grid` must be None or (rows, cols) positive ints, got "
                             f"{grid!r}")
        if prefix_tokens is not None and not (_is_int(prefix_tokens) and prefix_tokens >= 0):
            raise ValueError(f"`prefix_tokens` must be None or an int >= 0, got "
                             f"{prefix_tokens!r}")
        if not isinstance(upsample, bool):
            raise TypeError(f"`upsample` must be a bool, got {upsample!r}")
        self.attention_layers = attention_layers
        self.token, self.prefix_tokens, self.upsample = token, prefix_tokens, upsample
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))

    # ------------------------------------------------------------ attention modules
    def _modules(self) -> Tuple[list, List[str]]:
        if self.attention_layers is not None:
            mods = [self.dnn.layer2module(n) for n in self.attention_layers]
            return mods, list(self.attention_layers)
        mods = attention_modules(self.dnn.model)
        path = {id(m): n for n, m in self.dnn.model.named_modules()}
        return mods, [path[id(m)] for m in mods]

    def _searched(self) -> str:
        return (f"`attention_layers` {self.attention_layers}" if self.attention_layers
                is not None else SEARCHED)

    def _capture(self, x: torch.Tensor, grad: bool
                 ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """One forward pass to the target: the attention probabilities ``(B, heads, T, T)``
        of the blocks before it and (``grad``) the target output, in one graph."""
        mods, names = self._modules()
        with self._hooks(x=x) as cap, torch.set_grad_enabled(grad):
            with capture_attention(mods, names) as probs:
                xg = x.detach().requires_grad_(grad)
                self._forward(xg)
            out = self._target_output(cap)
        if not probs:
            raise ValueError(f"no attention module runs before the target layer "
                             f"{self.layer!r} of {self.dnn.name} (searched: "
                             f"{self._searched()})")
        t = probs[0].shape[-1]
        for p in probs:
            if p.shape[-2:] != (t, t):
                raise ValueError(f"attention matrices must all be (T, T) self-attention "
                                 f"over the same tokens; got shapes "
                                 f"{[tuple(q.shape[-2:]) for q in probs]}")
        return probs, (out if grad else None)

    # ------------------------------------------------------------ tokens -> grid
    def token_grid(self, n_tokens: int, size: Tuple[int, int]) -> Tuple[int, int, int]:
        """``(k, h, w)``: ``k`` prefix tokens (class, distillation, register) before an
        ``h x w`` patch grid, for ``n_tokens`` tokens and an input of ``size`` (H, W).

        ``prefix_tokens`` and ``grid`` when given; otherwise the model's prefix count and
        patch stride as :mod:`dnnbrain.dnn.tokens` finds them (timm's
        ``num_prefix_tokens``, a ``class_token``; the patch embedding's stride ``p``:
        ``(H // p, W // p)``).
        What is still unknown is inferred: the grid with the input's aspect ratio for
        ``n_tokens - k`` patches, or the fewest prefix tokens (0..8) leaving a square
        grid. Raises ValueError when the counts do not add up.
        """
        model = self.dnn.model
        k = self.prefix_tokens if self.prefix_tokens is not None else prefix_count(model)
        grid = self.grid
        stride = patch_stride(model) if grid is None else None
        if stride is not None:  # the patch embedding's stride (dnnbrain.dnn.tokens)
            grid = (size[0] // stride[0], size[1] // stride[1])
            if k is not None and k + grid[0] * grid[1] != n_tokens:
                grid = None
        if grid is not None and k is None:
            k = n_tokens - grid[0] * grid[1]
        if grid is None:
            for kk in ([k] if k is not None else range(0, 9)):
                n = n_tokens - kk
                h = max(1, round(math.sqrt(n * size[0] / size[1])))
                if n > 0 and n % h == 0 and (k is not None or h * h == n):
                    k, grid = kk, (h, n // h)
                    break
        if grid is None or k is None or k < 0 or k + grid[0] * grid[1] != n_tokens:
            raise ValueError(f"`grid` {self.grid} and `prefix_tokens` {self.prefix_tokens} "
                             f"do not fit {n_tokens} tokens (prefix tokens + rows x cols); "
                             f"pass both")
        log.debug("%s: %d prefix tokens, %s patch grid", type(self).__name__, k, grid)
        return k, grid[0], grid[1]

    def _finish(self, rel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, T)`` token relevance -> ``(B, H, W)`` map: the ``token`` row over the
        patch tokens, on the grid, upsampled."""
        t = rel.shape[-1]
        k, h, w = self.token_grid(t, tuple(x.shape[-2:]))
        if self.token == "mean" or (self.token == "auto" and k == 0):
            row = rel.mean(1)
        elif self.token == "auto":
            row = rel[:, 0]
        else:
            if self.token > t:
                raise ValueError(f"`token` must be in 1..{t} (the layer has {t} tokens), got"
                                 f" {self.token}")
            row = rel[:, self.token - 1]
        out = row[:, k:].reshape(-1, h, w)
        if self.upsample:
            out = F.interpolate(out[:, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                align_corners=False)[:, 0]
        return out.float()

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """:meth:`SaliencyImage.check_input`, and that attention modules run before the
        target and their tokens fit the grid (one one-row no-grad pass)."""
        super().check_input(shape)
        x = self._probe(shape)
        probs, _ = self._capture(x, grad=False)
        self.token_grid(probs[0].shape[-1], tuple(shape[-2:]))


_PARAMS = TARGET_PARAMS + """
    batch_size : int or None
        Rows (image x unit) per pass.
    attention_layers : list of str or None
        The attention modules (layer names or dotted paths); each call must compute one
        attention matrix by ``F.scaled_dot_product_attention``,
        ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) or a last-dim
        ``softmax`` of a ``(..., T, T)`` tensor. None: every ``nn.MultiheadAttention``
        and timm ``*Attention`` module (outermost ones).
    token : 'auto', 'mean' or int
        Which token's row of the relevance matrix is read: ``'auto'`` the first prefix
        (class) token, or the mean over all tokens when there are none; ``'mean'``; or
        token ``t`` (counted from 1, prefix tokens included).
    grid, prefix_tokens : optional
        ``(rows, cols)`` of the patch grid and the number of prefix tokens before it;
        None: from the model or inferred (see :meth:`token_grid`).
    upsample : bool
        Bilinear (``align_corners=False``) upsampling to the input size; False gives the
        ``(rows, cols)`` grid map.
    memory_budget : int, str or None
        As :class:`SaliencyImage`.

    Notes
    -----
    :meth:`backprop` gives float32 ``(H, W)`` per image and unit (``(rows, cols)`` with
    ``upsample=False``). Only attention modules that run before the target layer's output
    are used. ``to_layer`` must be None. The model is not changed (no attribute, no hook
    survives; see :mod:`dnnbrain.dnn.algo.attention_capture`)."""


class AttentionRollout(_AttentionMap):
    __doc__ = """Attention rollout (Abnar & Zuidema, 2020, "Quantifying attention flow in
    transformers"). Registry name ``'rollout'``.

    Per block ``l`` (in call order, up to the target layer) the heads of the attention
    probabilities ``A_l`` (``(B, heads, T, T)``) are fused (``head_fusion``), the residual
    is added and rows are normalised: ``Â_l = (A_l + I) / rowsum`` (= ``0.5 A_l + 0.5 I``);
    rollout ``R = Â_L ... Â_2 Â_1``, each row a distribution over the input tokens. The
    map is the ``token`` row of ``R`` over the patch tokens.

    Rollout uses no gradient and so does not depend on the unit: the target *layer*
    decides which blocks are rolled out (those before it), the unit is ignored (every
    unit of a layer gives the same map), and ``token`` decides which row is read.
    Cost: one no-grad forward pass, stopped at the target layer.
    """ + _PARAMS.replace("    memory_budget :", """    head_fusion : {'mean', 'max', 'min'}
        How the heads of a block are combined (the paper: mean).
    memory_budget :""")

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, head_fusion: str = "mean",
                 attention_layers: Optional[Sequence[str]] = None, token: Any = "auto",
                 grid: Optional[Tuple[int, int]] = None,
                 prefix_tokens: Optional[int] = None, upsample: bool = True,
                 memory_budget: Budget = None) -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size,
                         attention_layers=attention_layers, token=token, grid=grid,
                         prefix_tokens=prefix_tokens, upsample=upsample,
                         memory_budget=memory_budget)
        if head_fusion not in HEAD_FUSION:
            raise ValueError(f"`head_fusion` must be one of {list(HEAD_FUSION)}, got "
                             f"{head_fusion!r}")
        self.head_fusion = head_fusion

    def rollout(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, T, T)`` rollout of per-block probabilities ``(B, heads, T, T)``."""
        r = None
        for a in probs:
            a = a.detach().float()
            a = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[self.head_fusion]
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = a / a.sum(-1, keepdim=True)
            r = a if r is None else a @ r
        return r

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, type(self).__name__)
        probs, _ = self._capture(x, grad=False)
        return self._finish(self.rollout(probs), x)


class AttentionRelevance(_AttentionMap):
    __doc__ = """Gradient-weighted attention relevance (Chefer, Gur & Wolf, 2021, "Generic
    attention-model explainability for interpreting bi-modal and encoder-decoder
    transformers", ICCV). Registry name ``'chefer'``.

    ``R = I`` (``(T, T)``); per block ``l`` (in call order, up to the target layer), with
    ``A_l`` its attention probabilities (``(B, heads, T, T)``) and ``G_l`` the gradient of
    the target unit's score w.r.t. them, ``Ā_l = mean_heads(ReLU(G_l * A_l))`` and
    ``R = R + Ā_l R``. The map is the ``token`` row of ``R`` over the patch tokens. Unlike
    rollout it is unit-specific: the unit's score is what is differentiated (any unit form,
    ``'predicted'`` per image). Cost: one forward pass (stopped at the target layer) and
    one backward pass per image x unit.
    """ + _PARAMS

    def relevance(self, probs: Sequence[torch.Tensor],
                  grads: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """``(B, T, T)`` relevance from per-block probabilities and their gradients."""
        a0 = probs[0]
        eye = torch.eye(a0.shape[-1], dtype=torch.float32, device=a0.device)
        r = eye.expand(a0.shape[0], -1, -1)
        for a, g in zip(probs, grads):
            if g is None:  # this block does not reach the score
                continue
            abar = (g.float() * a.detach().float()).clamp(min=0).mean(1)
            r = r + abar @ r
        return r

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, type(self).__name__)
        probs, out = self._capture(x, grad=True)
        with torch.enable_grad():
            score = select(out, units, self.layer, self.reduce, self.target_layout(out, x))
            grads = torch.autograd.grad(score.sum(), probs.leaves, allow_unused=True)
        grads = [None if g is None else g.reshape(p.shape) for g, p in zip(grads, probs)]
        return self._finish(self.relevance(probs, grads), x)
