"""Receptive-field geometry of every tensor of one forward pass, traced as it runs.

A :class:`torch.overrides.TorchFunctionMode` sees every torch function the forward pass
calls — the ``F.conv2d`` inside an ``nn.Conv2d``, a functional ``F.max_pool2d`` (torchvision
GoogLeNet, Inception), ``torch.cat`` of Inception branches, the in-place ``add_`` of a ResNet
shortcut — and attaches to each output tensor (by identity, in a weak dictionary) the
geometry of its spatial axes in input pixels: for each of the two spatial axes the field
size, the jump (stride) between neighbouring units and the centre of unit 0.

Rules (per spatial axis; ``k`` the dilated kernel, ``s`` the stride, ``p`` the padding)

* conv / max / avg / lp pooling: ``size += (k - 1) * jump``, ``start += ((k - 1) / 2 - p)
  * jump``, ``jump *= s`` (the standard recursion, e.g. Araujo et al., "Computing Receptive
  Fields of Convolutional Neural Networks", Distill 2019);
* adaptive pooling: its bins as a kernel (exact when the input divides; the largest bin
  otherwise, with a fractional jump);
* ``F.pad``: ``start -= pad * jump``;
* any other function whose output keeps the input's spatial sizes (elementwise ops,
  batch norm in eval mode, ReLU, channel concatenation, channel reshapes, permutes): the
  union of its inputs' fields (a ResNet shortcut, Inception branches: the largest field;
  the jumps must agree);
* a function that mixes the spatial axes without such a rule (flatten, linear on a spatial
  axis, softmax over space, instance/group norm, interpolation, attention on tokens) makes
  its output *global*: it may depend on every pixel. A field merged with a global tensor (a
  squeeze-excitation gate) spans the whole input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, List, Sequence, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

Pair = Tuple[float, float]


@dataclass(frozen=True)
class Field:
    """Geometry of a tensor's two spatial axes (``dims``, negative indices)."""

    dims: Tuple[int, int]
    size: Pair
    jump: Pair
    start: Pair
    spans: bool = False  # merged with a global tensor: every unit sees the whole input


GLOBAL = "global"  # a tensor that depends on the input without a spatial geometry

_CONV = ("conv2d",)
_POOL = ("max_pool2d", "max_pool2d_with_indices", "_max_pool2d", "avg_pool2d",
         "lp_pool2d")
_ADAPTIVE = ("adaptive_avg_pool2d", "adaptive_max_pool2d",
             "adaptive_max_pool2d_with_indices", "_adaptive_max_pool2d")
#: shape-preserving functions that still mix along an axis: (name, which axes)
_MIX_LAST = ("linear", "matmul", "bmm", "mm", "einsum", "baddbmm", "addmm",
             "scaled_dot_product_attention")
_MIX_ALL = ("instance_norm", "group_norm", "interpolate", "upsample", "upsample_nearest2d",
            "upsample_bilinear2d", "grid_sample", "roll", "flip", "fliplr", "flipud",
            "sort", "argsort", "cumsum", "cumprod", "cummax", "cummin", "conv_transpose2d",
            "unfold", "fold", "pixel_shuffle", "pixel_unshuffle", "rot90", "fft_fft2",
            "fft_rfft2")
_MOVE = ("permute", "transpose", "swapaxes", "swapdims")
#: functions allowed to change the number of dims while keeping the trailing spatial ones
_RESHAPE = ("unsqueeze", "squeeze", "__getitem__", "select", "reshape", "view",
            "flatten", "unflatten", "stack", "expand", "view_as", "reshape_as")


def _pair(v: Any) -> Tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else (1, 1)
    return (int(v), int(v))


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _window(f: Field, k: Tuple[int, int], s: Tuple[int, int], p: Tuple[int, int]) -> Field:
    """``f`` after a sliding window of (dilated) size ``k``, stride ``s``, padding ``p``."""
    return replace(f, size=tuple(f.size[a] + (k[a] - 1) * f.jump[a] for a in (0, 1)),
                   start=tuple(f.start[a] + ((k[a] - 1) / 2 - p[a]) * f.jump[a]
                               for a in (0, 1)),
                   jump=tuple(f.jump[a] * s[a] for a in (0, 1)))


def _conv(f: Field, x: torch.Tensor, args: tuple, kwargs: dict) -> Field:
    w = _arg(args, kwargs, 1, "weight", None)
    k = tuple(w.shape[-2:])
    s = _pair(_arg(args, kwargs, 3, "stride", 1))
    d = _pair(_arg(args, kwargs, 5, "dilation", 1))
    k = tuple(d[a] * (k[a] - 1) + 1 for a in (0, 1))
    pad = _arg(args, kwargs, 4, "padding", 0)
    if isinstance(pad, str):  # 'valid' or 'same' (stride 1)
        p = (0, 0) if pad == "valid" else tuple((k[a] - 1) // 2 for a in (0, 1))
    else:
        p = _pair(pad)
    return _window(f, k, s, p)


def _pool(name: str, f: Field, args: tuple, kwargs: dict) -> Field:
    if name == "lp_pool2d":
        k = _pair(_arg(args, kwargs, 2, "kernel_size", 1))
        stride = _arg(args, kwargs, 3, "stride", None)
        return _window(f, k, _pair(stride) if stride else k, (0, 0))
    k = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
    stride = _arg(args, kwargs, 2, "stride", None)
    s = _pair(stride) if stride not in (None, [], ()) else k
    p = _pair(_arg(args, kwargs, 3, "padding", 0))
    if "max" in name:
        d = _pair(_arg(args, kwargs, 4, "dilation", 1))
        k = tuple(d[a] * (k[a] - 1) + 1 for a in (0, 1))
    return _window(f, k, s, p)


def _adaptive(f: Field, x: torch.Tensor, out: torch.Tensor) -> Field:
    size, start, jump = [], [], []
    for a, dim in enumerate(f.dims):
        n_in, n_out = x.shape[dim], out.shape[dim]
        bins = [(math.floor(i * n_in / n_out), math.ceil((i + 1) * n_in / n_out))
                for i in range(n_out)]
        widest = max(e - b for b, e in bins)
        size.append(f.size[a] + (widest - 1) * f.jump[a])
        start.append(f.start[a] + (bins[0][1] - 1) / 2 * f.jump[a])
        step = n_in / n_out
        jump.append(f.jump[a] * (int(step) if step == int(step) else step))
    return replace(f, size=tuple(size), start=tuple(start), jump=tuple(jump))


def _pad(f: Field, args: tuple, kwargs: dict) -> Field:
    """``F.pad`` of an ``(..., H, W)`` tensor: ``(left, right[, top, bottom, ...])``."""
    pad = list(_arg(args, kwargs, 1, "pad", ()))
    left = pad[0] if pad else 0
    top = pad[2] if len(pad) >= 4 else 0
    return replace(f, start=(f.start[0] - top * f.jump[0], f.start[1] - left * f.jump[1]))


def _permute(name: str, f: Field, x: torch.Tensor, args: tuple, kwargs: dict) -> Field:
    """``permute`` / ``transpose``: the spatial axes move with their dims."""
    nd = x.ndim
    if name == "permute":
        dims = _arg(args, kwargs, 1, "dims", None)
        perm = [int(d) % nd for d in (dims if isinstance(dims, (list, tuple)) else args[1:])]
    else:
        a = int(_arg(args, kwargs, 1, "dim0", 0)) % nd
        b = int(_arg(args, kwargs, 2, "dim1", 0)) % nd
        perm = list(range(nd))
        perm[a], perm[b] = perm[b], perm[a]
    return replace(f, dims=tuple(perm.index(nd + d) - nd for d in f.dims))


def _mixes(name: str, f: Field, x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Whether a shape-preserving function ``name`` mixes values along a spatial axis."""
    if name in _MIX_ALL or name.startswith("fft_"):
        return True
    if name in _MIX_LAST:
        return -1 in f.dims
    if name in ("softmax", "log_softmax", "_softmax", "argmax", "argmin", "logsumexp"):
        dim = _arg(args, kwargs, 1, "dim", None)
        return dim is None or (int(dim) % x.ndim) - x.ndim in f.dims
    if name == "layer_norm":
        shape = _arg(args, kwargs, 1, "normalized_shape", (1,))
        n = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
        return any(d >= -n for d in f.dims)
    return False


def merge(fields: Sequence[Field], dims: Tuple[int, int], spans: bool) -> Any:
    """Union of fields on the same grid (equal jumps), or :data:`GLOBAL`."""
    jumps = {f.jump for f in fields}
    if len(jumps) != 1:
        return GLOBAL
    lo = [min(f.start[a] - (f.size[a] - 1) / 2 for f in fields) for a in (0, 1)]
    hi = [max(f.start[a] + (f.size[a] - 1) / 2 for f in fields) for a in (0, 1)]
    return Field(dims, tuple(hi[a] - lo[a] + 1 for a in (0, 1)), fields[0].jump,
                 tuple((lo[a] + hi[a]) / 2 for a in (0, 1)),
                 spans or any(f.spans for f in fields))


class FieldTracer(TorchFunctionMode):
    """While active, records the :class:`Field` (or :data:`GLOBAL`) of every tensor
    computed from ``x``, the network input (its field: size 1, jump 1, unit 0 at 0)."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.fields = WeakIdKeyDictionary()
        self.fields[x] = Field((-2, -1), (1, 1), (1, 1), (0.0, 0.0))

    def field(self, t: Any) -> Any:
        """The field of tensor ``t``: a :class:`Field`, :data:`GLOBAL` or None (not
        computed from the input)."""
        return self.fields.get(t) if isinstance(t, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [(t, self.fields[t]) for t in _tensors((args, kwargs)) if t in self.fields]
        outs = list(_tensors(out))
        if not ins or not outs:
            return out
        name = getattr(func, "__name__", "")
        result = self._rule(name, ins, outs[0], args, kwargs)
        for t in outs:
            self.fields[t] = result
        return out

    def _rule(self, name: str, ins: List[tuple], out: torch.Tensor, args: tuple,
              kwargs: dict) -> Any:
        x, f = ins[0]
        if name in _CONV + _POOL + _ADAPTIVE + _MOVE + ("pad",):
            if f is GLOBAL or x is not args[0]:
                return GLOBAL
            if name in _MOVE:
                return _permute(name, f, x, args, kwargs)
            if f.dims != (-2, -1):
                return GLOBAL
            if name in _CONV:
                return _conv(f, x, args, kwargs)
            if name in _POOL:
                return _pool(name, f, args, kwargs)
            if name in _ADAPTIVE:
                return _adaptive(f, x, out)
            return _pad(f, args, kwargs)
        tracked, spans = [], False
        for t, g in ins:
            if g is GLOBAL:
                spans = True
                continue
            if (out.ndim >= t.ndim and all(t.shape[d] == 1 for d in g.dims)
                    and any(out.shape[d] > 1 for d in g.dims)):
                spans = True  # broadcast over the map (a squeeze-excitation gate)
                continue
            same = all(-d <= out.ndim and out.shape[d] == t.shape[d] for d in g.dims)
            if not same or (out.ndim != t.ndim and name not in _RESHAPE) \
                    or _mixes(name, g, t, args, kwargs):
                return GLOBAL
            tracked.append(g)
        if not tracked:
            return GLOBAL
        if len({g.dims for g in tracked}) != 1:
            return GLOBAL
        return merge(tracked, tracked[0].dims, spans)
