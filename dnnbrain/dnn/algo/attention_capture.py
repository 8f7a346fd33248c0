"""Attention probabilities of one forward pass, even from fused kernels, model untouched.

:func:`capture_attention` is a context manager. While it is open, a
``torch.overrides.TorchFunctionMode`` watches the calls made inside the *attention
modules* (a forward pre-hook and a forward hook on each mark when one is running) and
records, per module call, the attention probabilities ``softmax(Q K^T / sqrt(d) + mask)``
as a ``(B, heads, T, S)`` tensor that is part of the autograd graph:

* ``F.multi_head_attention_forward`` (what ``nn.MultiheadAttention`` calls; torchvision's
  ``EncoderBlock`` passes ``need_weights=False``): called with ``need_weights=True`` and
  ``average_attn_weights=False``; the per-head weights are recorded and the caller gets
  back what it asked for (None, or the head average). Torch's non-fused path computes
  the same attention output as its fused one, to float rounding. The weights it returns
  are a reshaped view of the probabilities its output was computed from; gradients are
  taken w.r.t. that tensor (the view's base, ``Captured.leaves``).
* ``F.scaled_dot_product_attention`` (timm's ``Attention`` with ``fused_attn=True``, and
  any user module that calls it): computed explicitly as ``softmax(Q K^T * scale +
  mask) V`` (causal masks, boolean or additive masks, grouped-query heads), the same
  output to float rounding.
* ``softmax`` over the last dimension of a square-ended ``(..., T, T)`` tensor (timm's
  non-fused path, or a user's hand-written attention): its output is recorded as it is.

Nothing on the model changes: no attribute is flipped, the hooks are removed and the mode
is left on exit, on success or on an error. While the mode is active torch's
``nn.MultiheadAttention`` fast path is not taken (it steps aside for any torch-function
override), which is what makes its weights observable.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

#: What auto-detection looks for (for error messages).
SEARCHED = "nn.MultiheadAttention and timm Attention modules"


def is_attention(module: nn.Module) -> bool:
    """True for an ``nn.MultiheadAttention`` or a timm attention module (a class named
    ``*Attention`` from a ``timm`` module, with ``num_heads``)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    cls = type(module)
    return cls.__module__.startswith("timm") and cls.__name__.endswith("Attention") and \
        hasattr(module, "num_heads")


def attention_modules(model: nn.Module,
                      given: Optional[Sequence[nn.Module]] = None) -> List[nn.Module]:
    """The attention modules of ``model``: ``given``, or the detected ones
    (:func:`is_attention`) that are not inside another detected one."""
    if given is not None:
        return list(given)
    found: List[Tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if is_attention(m) and not any(name.startswith(p + ".") for p, _ in found):
            found.append((name, m))
    return [m for _, m in found]


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
          is_causal: bool = False, scale: Optional[float] = None,
          enable_gqa: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``F.scaled_dot_product_attention`` written out; returns ``(output, probs)``."""
    d = query.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(rep, dim=-3)
        value = value.repeat_interleave(rep, dim=-3)
    logits = (query @ key.transpose(-2, -1)) * scale
    t, s = logits.shape[-2:]
    if is_causal:
        keep = torch.ones(t, s, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    probs = torch.softmax(logits, dim=-1)
    used = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return used @ value, probs


class _AttentionMode(TorchFunctionMode):
    """Records attention probabilities while ``state['active']`` names a module call."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        active = self.state["active"]
        if not active:
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal",
                     "scale", "enable_gqa")
            kwargs.update(zip(names, args))
            out, probs = _sdpa(**kwargs)
            self._record(probs)
            return out
        if func is F.multi_head_attention_forward:
            kwargs.update(zip(_MHA_PARAMS, args))
            need = kwargs.get("need_weights", True)
            average = kwargs.get("average_attn_weights", True)
            kwargs["need_weights"], kwargs["average_attn_weights"] = True, False
            out, w = func(**kwargs)
            # the weights torch returns are a view of the probabilities its output was
            # computed from; that tensor (their base) is the one in the graph
            base = w._base
            leaf = base if base is not None and base.numel() == w.numel() else w
            self._record(w if w.ndim == 4 else w[None], leaf)
            if not need:
                return out, None
            return out, (w.mean(-3) if average else w)
        result = func(*args, **kwargs)
        if func in _SOFTMAX and isinstance(result, torch.Tensor) and result.ndim >= 2 and \
                _last_dim(args, kwargs) and result.shape[-1] == result.shape[-2]:
            self._record(result)
        return result

    def _record(self, probs: torch.Tensor, leaf: Optional[torch.Tensor] = None) -> None:
        if probs.ndim == 2:  # (T, S): one head, one row
            probs = probs[None, None]
        elif probs.ndim == 3:  # (B, T, S): one head
            probs = probs[:, None]
        elif probs.ndim > 4:
            probs = probs.reshape((-1,) + tuple(probs.shape[-3:]))
        self.state["active"][-1][1].append((probs, probs if leaf is None else leaf))


def _last_dim(args: tuple, kwargs: dict) -> bool:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    ndim = args[0].ndim if args and isinstance(args[0], torch.Tensor) else 0
    return isinstance(dim, int) and dim in (-1, ndim - 1)


_SOFTMAX = (torch.softmax, F.softmax, torch.Tensor.softmax, torch.nn.functional.softmax)
_MHA_PARAMS: Dict[str, Any] = {n: None for n in (
    "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
    "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
    "out_proj_bias", "training", "key_padding_mask", "need_weights", "attn_mask",
    "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
    "static_k", "static_v", "average_attn_weights", "is_causal")}


class Captured(list):
    """The recorded probabilities ``(B, heads, T, S)``, one per attention-module call, in
    call order; ``leaves[i]`` is the tensor of the graph holding the same values (item
    ``i`` itself, or for ``nn.MultiheadAttention`` the tensor it is a view of):
    differentiate w.r.t. it and reshape the gradient to ``item.shape``."""

    def __init__(self) -> None:
        super().__init__()
        self.leaves: List[torch.Tensor] = []

    def add(self, probs: torch.Tensor, leaf: torch.Tensor) -> None:  # noqa: D102
        self.append(probs)
        self.leaves.append(leaf)


@contextlib.contextmanager
def capture_attention(modules: Sequence[nn.Module],
                      names: Optional[Sequence[str]] = None) -> Iterator[Captured]:
    """Record the attention probabilities of each call of ``modules`` during the block.

    Parameters
    ----------
    modules : sequence of nn.Module
        The attention modules (see :func:`attention_modules`).
    names : sequence of str or None
        Their names, for errors.

    Yields
    ------
    Captured
        A list of torch.Tensor, filled during the forward pass, in call order: one
        ``(B, heads, T, S)`` tensor of probabilities (rows sum to 1; dtype of the model)
        per attention-module call (see :class:`Captured` for their gradients).

    Raises
    ------
    ValueError
        When a module call computes no, or more than one, attention matrix.
    """
    names = list(names) if names is not None else [type(m).__name__ for m in modules]
    probs = Captured()
    state: dict = {"active": []}

    def pre(module: nn.Module, args: tuple) -> None:
        state["active"].append((module, []))

    def post(module: nn.Module, args: tuple, output: Any) -> None:
        if not state["active"] or state["active"][-1][0] is not module:
            return
        _, got = state["active"].pop()
        if len(got) != 1:
            name = names[[id(m) for m in modules].index(id(module))]
            raise ValueError(f"attention module {name!r} computed {len(got)} attention "
                             f"matrices in one call (need exactly 1); pass the modules "
                             f"that compute one as `attention_layers`")
        probs.add(*got[0])

    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        with _AttentionMode(state):
            yield probs
        # the pass stopped inside an attention module, or in its hooks (the target layer
        # is the module itself), after its attention was computed: that one counts too
        for _, got in state["active"]:
            if len(got) == 1:
                probs.add(*got[0])
    finally:
        for h in handles:
            h.remove()
