"""Forward-only maps: DNNBrain's occluder discrepancy map and upsampled activation map.

>>> occ = Occlusion(dnn, window=8, stride=4).set_layer('fc3', 540)
>>> maps = occ.backprop(images)            # (N, H, W) float32: activation drop per pixel
>>> up = UpsampledActivation(dnn).set_layer('conv5', 12)
>>> maps = up.backprop(images)             # (N, H, W) float32: channel 12, upsampled
"""
from __future__ import annotations

import math
import numbers
from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..models import DNN
from ..tokens import grid_map
from .calls import Call
from .checks import no_to_layer
from .engine import SaliencyImage
from .passes import perturbed_scores
from .target import Unit, check_units, from_base, resolve_predicted, select

OUTPUTS = ("map", "per_channel")
MODES = ("bilinear", "bicubic", "nearest")
Pair = Union[int, Tuple[int, int]]


def _pair(value: Any, name: str) -> Tuple[int, int]:
    """A positive int or a pair of them -> ``(height, width)``."""
    vals = (value, value) if isinstance(value, numbers.Integral) else value
    if (not isinstance(vals, (tuple, list)) or len(vals) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                       and v >= 1 for v in vals)):
        raise ValueError(f"`{name}` must be a positive int or a (height, width) pair of "
                         f"positive ints, got {value!r}")
    return int(vals[0]), int(vals[1])


def _starts(size: int, window: int, stride: int) -> List[int]:
    """Window starts along one axis, as captum's ``Occlusion``: ``ceil((size - window) /
    stride) + 1`` windows every ``stride``; the last one is clipped at the border."""
    return [k * stride for k in range(math.ceil((size - window) / stride) + 1)]


def _cover(starts: List[int], window: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """``(n_windows, size)`` 0/1 matrix: which positions each window covers."""
    pos = torch.arange(size, device=like.device)
    lo = torch.tensor(starts, device=like.device)[:, None]
    return ((pos >= lo) & (pos < lo + window)).to(like.dtype)


class Occlusion(SaliencyImage):
    """DNNBrain's occluder discrepancy map (Zeiler & Fergus, 2014, "Visualizing and
    understanding convolutional networks"): how much the target unit drops when a window
    of the image is occluded.

    A ``window`` slides over the preprocessed input every ``stride`` pixels (captum's
    placement: ``ceil((H - window) / stride) + 1`` positions per axis, the last one
    clipped at the border, so every pixel is covered). Each occluded copy has the window
    set to ``fill``; its drop ``score(x) - score(occluded)`` is credited to every pixel
    the window covers, and each pixel's map value is the mean drop over the windows that
    cover it. Equals captum's ``Occlusion(sliding_window_shapes=(3, *window),
    strides=(3, *stride), baselines=fill)`` (whose channels are identical) for
    ``output='map'``, and ``sliding_window_shapes=(1, *window), strides=(1, *stride)``
    for ``'per_channel'``.

    Parameters
    ----------
    dnn : DNN
        The network.
    from_layer, from_chn : optional
        Target ``(layer, unit)``, as :meth:`SaliencyImage.set_layer`; ``'predicted'``
        is resolved on the unoccluded image.
    batch_size : int or None
        Occluded copies per forward pass; None: 128 per CPU thread on the CPU, 1024 on an
        accelerator, within 256 MiB (:func:`~dnnbrain.dnn.algo.passes.forward_rows`).
    window : int or (int, int)
        Occluder height and width in input pixels (DNNBrain's default ``(11, 11)``).
    stride : int or (int, int)
        Step between windows; at most ``window`` in each axis.
    fill : float or 'mean'
        Value of the occluded pixels in network-input space, i.e. after
        ``test_transform`` (0.0 is the normalised value 0, as captum's baseline), or
        ``'mean'``: each image's per-channel mean.
    output : {'map', 'per_channel'}
        ``'map'``: ``(H, W)``, windows cover all channels. ``'per_channel'``:
        ``(3, H, W)``, each window occludes one channel at a time (3x the cost).

    Notes
    -----
    Cost per image x unit: one forward pass plus one per window position (x3 for
    ``'per_channel'``), all stopped at the target layer, no gradients; the occluded
    copies are built pass by pass on the device. :meth:`backprop` gives
    float32 maps, positive where occlusion lowers the unit. ``to_layer`` must be None.
    """

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, window: Pair = (11, 11),
                 stride: Pair = (2, 2),
                 fill: Union[float, str] = 0.0, output: str = "map") -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size)
        self.window, self.stride = _pair(window, "window"), _pair(stride, "stride")
        if any(s > w for s, w in zip(self.stride, self.window)):
            raise ValueError(f"`stride` must not exceed `window` in either axis (every pixel "
                             f"must be covered), got stride={self.stride}, "
                             f"window={self.window}")
        if isinstance(fill, str):
            fill_ok = fill == "mean"
        else:
            fill_ok = (isinstance(fill, numbers.Real) and not isinstance(fill, bool)
                       and math.isfinite(fill))
        if not fill_ok:
            raise ValueError(f"`fill` must be a finite number (in network-input space) or "
                             f"'mean', got {fill!r}")
        if output not in OUTPUTS:
            raise ValueError(f"`output` must be one of {list(OUTPUTS)}, got {output!r}")
        self.fill, self.output = fill, output

    shares_units = True

    @property
    def rows_per_map(self) -> int:  # type: ignore[override]
        """Forward rows per map (windows + 1) for ``dnn.img_size`` inputs; ``batch_size``
        (one image per chunk) when the input size is unknown."""
        size = self.dnn.img_size
        if not size or size < max(self.window):
            return self.batch_size
        n = (len(_starts(size, self.window[0], self.stride[0]))
             * len(_starts(size, self.window[1], self.stride[1])))
        return n * (3 if self.output == "per_channel" else 1) + 1

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """:meth:`SaliencyImage.check_input`, and that ``window`` fits in the input."""
        super().check_input(shape)
        h, w = shape[-2:] if len(shape) >= 2 else (shape[0], 1)
        if self.window[0] > h or self.window[1] > w:
            raise ValueError(f"`window` {self.window} must fit in the input ({h}, {w})")

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, "Occlusion")
        b, ch, h, w = x.shape
        cover_y = _cover(_starts(h, self.window[0], self.stride[0]), self.window[0], h, x)
        cover_x = _cover(_starts(w, self.window[1], self.stride[1]), self.window[1], w, x)
        ny, nx = len(cover_y), len(cover_x)
        out = self.layer_output(x, self.layer)
        lay = self.target_layout(out, x)
        units = resolve_predicted(out, units, self.reduce, lay)
        units = list(units) * b if len(units) == 1 else list(units)
        base = select(out, units, self.layer, self.reduce, lay)
        nch = ch if self.output == "per_channel" else 1
        chans = torch.arange(ch, device=x.device)[None, :, None, None]

        def occlude(row: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
            c, iy, ix = win // (ny * nx), win % (ny * nx) // nx, win % nx
            mask = (cover_y[iy][:, :, None] * cover_x[ix][:, None, :] > 0)[:, None]
            if nch > 1:
                mask = mask & (chans == c[:, None, None, None])
            value = (x[row].mean((2, 3), keepdim=True) if self.fill == "mean"
                     else torch.tensor(float(self.fill), dtype=x.dtype, device=x.device))
            return torch.where(mask, value, x[row])

        scores = perturbed_scores(self, x, units, nch * ny * nx, occlude)
        grid = (base[:, None] - scores).view(b, nch, ny, nx)
        total = torch.einsum("yh,bcyx,xw->bchw", cover_y, grid, cover_x)
        count = cover_y.sum(0)[:, None] * cover_x.sum(0)[None, :]
        maps = total / count
        return maps[:, 0] if self.output == "map" else maps


class UpsampledActivation(SaliencyImage):
    """DNNBrain's upsampled activation map: the target channel's activation map at its
    layer, upsampled to the input size.

    Parameters
    ----------
    dnn : DNN
        The network.
    from_layer, from_chn : optional
        Target: a layer with spatial output ``(N, C, h, w)`` (or a token layer: its patch
        tokens on their grid, see :mod:`dnnbrain.dnn.tokens`) and a channel (int from 1)
        or ``'predicted'`` (the channel with the largest ``reduce``-d activation). A spatial
        unit ``(c, row, col)`` or a callable has no map and is rejected.
    batch_size : int or None
        Images per forward pass (None: 32).
    mode : {'bilinear', 'bicubic', 'nearest'}
        Interpolation (``align_corners=False``); DNNBrain offered bicubic too.

    Notes
    -----
    Cost: one forward pass per batch, stopped at the target layer; no gradient.
    :meth:`backprop` gives float32 ``(H, W)`` maps in the layer's activation units (not
    normalised). ``to_layer`` must be None.
    """

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, mode: str = "bilinear") -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        super().__init__(dnn, from_layer, from_chn, batch_size)

    def set_layer(self, layer: str, unit: Any, reduce: str = "mean",
                  call: Call = None, unit_base: int = 1) -> "UpsampledActivation":
        """Aim at channel ``unit`` (from 1, or ``'predicted'``) of ``layer``; see
        :meth:`SaliencyImage.set_layer`.

        Raises
        ------
        ValueError
            For a spatial unit or a callable: an activation map needs a whole channel.
        """
        for u in check_units(from_base(unit, unit_base))[0]:
            if not isinstance(u, int) and u not in ("predicted", "label"):
                raise ValueError(f"`unit` must be a channel (int from 1), 'predicted' or "
                                 f"'label' for UpsampledActivation (the map is a whole "
                                 f"channel), got {u!r}")
        super().set_layer(layer, unit, reduce, call, unit_base)
        return self

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """:meth:`SaliencyImage.check_input`, and that the target layer has spatial
        output with the target channels (a one-row no-grad probe)."""
        super().check_input(shape)
        x = self._probe(shape)
        self._check_output(self._grid(self.layer_output(x, self.layer), x),
                           self.probe_units())

    def _grid(self, out: Any, x: torch.Tensor) -> Any:
        """The target layer's output as ``(N, C, h, w)``: a token layer's patch tokens on
        their grid (:func:`dnnbrain.dnn.tokens.grid_map`), anything else as it is."""
        return grid_map(self.dnn, self.layer, out, tuple(x.shape[-2:])) \
            if isinstance(out, torch.Tensor) and out.ndim in (3, 4) else out

    def _check_output(self, out: Any, units: List[Unit]) -> None:
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise ValueError(f"UpsampledActivation needs a target layer with spatial output "
                             f"(N, C, H, W); layer {self.layer!r} gives "
                             f"{tuple(getattr(out, 'shape', ()))}")
        chn = [u for u in units if isinstance(u, int)]
        if chn and max(chn) > out.shape[1]:
            raise ValueError(f"`unit` must be in 1..{out.shape[1]} for layer {self.layer!r} "
                             f"(units count from 1), got {max(chn)}")

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, "UpsampledActivation")
        out = self._grid(self.layer_output(x, self.layer), x)
        self._check_output(out, units)
        units = resolve_predicted(out, units, self.reduce)
        units = list(units) * len(x) if len(units) == 1 else list(units)
        chn = torch.tensor([u - 1 for u in units], device=out.device)
        maps = out[torch.arange(len(out), device=out.device), chn][:, None]
        extra = {} if self.mode == "nearest" else {"align_corners": False}
        return F.interpolate(maps, size=tuple(x.shape[-2:]), mode=self.mode, **extra)[:, 0]
