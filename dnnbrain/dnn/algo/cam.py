"""Class activation maps at any (layer, unit): Grad-CAM, Grad-CAM++ and Score-CAM.

The CAM layer (where the map lives, ``cam_layer``) is chosen apart from the target
``(layer, unit)``, so a CAM explains a hidden unit (a conv channel of a deeper layer) as
well as a class. Every map is ``ReLU(sum_k w_k A_k)`` over the channels ``A_k`` of the CAM
layer's output; the methods differ in the channel weights ``w_k``.

>>> cam = GradCAM(dnn, cam_layer='conv4').set_layer('conv5', 12)   # a hidden unit
>>> maps = cam.backprop(images)        # (N, H, W) float32, not normalised
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models import DNN
from ..tokens import grid_map, layout_of, patch_embed, patches
from .budget import Budget
from .engine import SaliencyImage
from .passes import perturbed_scores
from .checks import TARGET_PARAMS, no_to_layer
from .target import Unit, select, static_size

log = logging.getLogger(__name__)


class _CAM(SaliencyImage):
    """Shared machinery of the CAM methods: finding and checking the CAM layer, the
    weighted sum of its channels, the ReLU and the upsampling. Not a method itself."""

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, cam_layer: Optional[str] = None,
                 relu: bool = True, upsample: bool = True, memory_budget: Budget = None
                 ) -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        if cam_layer is not None:
            if not isinstance(cam_layer, str):
                raise TypeError(f"`cam_layer` must be a str or None, got "
                                f"{type(cam_layer).__name__}")
            dnn.layer2module(cam_layer, "cam_layer")
        for name, value in (("relu", relu), ("upsample", upsample)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool, got {value!r}")
        self.cam_layer, self.relu, self.upsample = cam_layer, relu, upsample
        self._resolved: Dict[tuple, str] = {}  # (target layer, call) -> CAM layer (probe)

    def resolve_cam_layer(self, image: Any, preprocessed: bool = False) -> str:
        """The CAM layer used for the current target and ``image``.

        ``cam_layer`` when given (checked to run before the target layer, or to be it).
        Otherwise, in a transformer (a layer before the target gives a token sequence
        or channels-last map on a known patch grid, see :mod:`dnnbrain.dnn.tokens`):
        the last such token layer (token sequences: of the patch embedding's width, so
        not a fused q/k/v projection or an MLP's hidden layer), outside the target
        module, whose patch tokens still
        influence the target (non-zero gradient of the target unit for the first
        image; one extra forward and backward pass). For a ViT read out from its class
        token this is the input of the last block's attention (torchvision
        ``vit_b_16``: ``encoder.layers.encoder_layer_11.ln_1``; the last block's patch
        outputs get no gradient), for torchvision Swin its ``norm``, for a target
        inside block ``k`` the end of block ``k - 1``. Otherwise (CNNs) the last
        ``nn.Conv2d`` (other than the target module itself) whose forward call
        finishes before the target layer's output exists, in the model's actual forward
        order. Found once per target layer by a no-grad forward of one image with a hook
        on every module, stopped at the target layer.

        Parameters
        ----------
        image : image, batch or tensor
            As :meth:`backprop` takes it (only the first image runs).
        preprocessed : bool
            ``image`` is already ``test_transform`` output.

        Returns
        -------
        str
            A name from ``dnn.layers`` (or a dotted module path if the table has none).

        Raises
        ------
        ValueError
            If ``cam_layer`` does not run before the target layer, or no Conv2d does;
            the message lists the layers that do.
        """
        x, _ = self._prepare(image, preprocessed)
        return self._cam_name(x)

    def _cam_name(self, x: torch.Tensor) -> str:
        if (self.layer, self.call) in self._resolved:
            return self._resolved[self.layer, self.call]
        target = self.dnn.layer2module(self.layer)
        ran: List[nn.Module] = []
        shapes: Dict[int, torch.Size] = {}

        def seen(mod: nn.Module, inp: Any, out: Any) -> None:
            ran.append(mod)
            if isinstance(out, torch.Tensor):
                shapes[id(mod)] = out.shape

        with self._hooks(x=x[:1]) as cap, torch.no_grad():  # eval mode, stop at the target
            handles = []
            try:
                for m in self.dnn.model.modules():
                    if m is not target:
                        handles.append(m.register_forward_hook(seen))
                self._forward(x[:1])
            finally:
                for h in handles:
                    h.remove()
        self._target_output(cap)  # raises if the target layer did not run
        done = {id(m) for m in ran}
        before = [n for n in self.dnn.layers if id(self.dnn.layer2module(n)) in done]
        if self.cam_layer is not None:
            if self.dnn.layer2module(self.cam_layer) is not target and \
                    id(self.dnn.layer2module(self.cam_layer)) not in done:
                raise ValueError(f"`cam_layer` must run before the target layer "
                                 f"{self.layer!r} (or be it), i.e. be one of "
                                 f"{before + [self.layer]}, got {self.cam_layer!r}")
            name = self.cam_layer
        else:
            name = self._token_default(x[:1], ran, shapes, target)
            convs = [m for m in ran if isinstance(m, nn.Conv2d)]
            if name is not None:
                convs = []
            elif not convs:
                raise ValueError(f"no Conv2d runs before the target layer {self.layer!r}; "
                                 f"pass `cam_layer`, one of {before}")
            name = name if name is not None else self._name_of(convs[-1])
            log.info("%s: cam_layer %r for target layer %r", type(self).__name__, name,
                     self.layer)
        self._resolved[self.layer, self.call] = name
        return name

    def _token_default(self, x: torch.Tensor, ran: List[nn.Module],
                       shapes: Dict[int, torch.Size], target: nn.Module) -> Optional[str]:
        """The default CAM layer of a transformer (see :meth:`resolve_cam_layer`), or
        None when no token layer on a known grid runs before the target."""
        inside = {id(m) for m in target.modules()}
        embed = patch_embed(self.dnn.model)  # a ViT's residual width: q/k/v, MLP left out
        width = None if embed is None else embed.out_channels
        cands, done = [], set()
        for m in ran:  # finish order
            if id(m) in done or id(m) in inside or id(m) not in shapes:
                continue
            done.add(id(m))
            name = self._name_of(m)
            lay = layout_of(self.dnn, name, torch.empty(shapes[id(m)], device="meta"),
                            tuple(x.shape[-2:]))
            if lay is not None and lay.grid is not None and not (
                    lay.layout == "tokens" and width and shapes[id(m)][-1] != width):
                cands.append((name, m, lay))
        if not cands:
            return None
        outs: Dict[int, torch.Tensor] = {}

        def keep(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
            outs[id(mod)] = out

        with self._hooks(x=x) as cap, torch.enable_grad():
            handles = [m.register_forward_hook(keep) for _, m, _ in cands]
            try:
                self._forward(x.detach().requires_grad_(True))
            finally:
                for h in handles:
                    h.remove()
            out = self._target_output(cap)
            score = select(out, self.probe_units()[:1], self.layer, self.reduce,
                           self.target_layout(out, x))
            live = [(c, outs[id(c[1])]) for c in cands if id(c[1]) in outs and
                    outs[id(c[1])].requires_grad]
            grads = torch.autograd.grad(score.sum(), [t for _, t in live],
                                        allow_unused=True) if live else []
        for ((name, _, lay), _), g in reversed(list(zip(live, grads))):
            if g is not None and bool(patches(g, lay).abs().amax() > 0):
                return name
        log.warning("%s: no token layer's patch tokens get a gradient from the target "
                    "%r for this image (a zero head?); cam_layer %r", type(self).__name__,
                    self.layer, cands[-1][0])
        return cands[-1][0]

    def _grid(self, t: torch.Tensor, cam: str, x: torch.Tensor) -> torch.Tensor:
        """The CAM layer's output (or its gradient) as ``(B, C, h, w)``: a token layer's
        patch tokens on their grid (prefix tokens dropped), anything else as it is."""
        return grid_map(self.dnn, cam, t, tuple(x.shape[-2:]))

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """:meth:`SaliencyImage.check_input`, and that the CAM layer runs before the
        target and gives an ``(N, C, h, w)`` output (one-row no-grad probes, as
        :meth:`resolve_cam_layer`)."""
        super().check_input(shape)
        x = self._probe(shape)
        cam = self._cam_name(x)
        self._check_4d(self._grid(self.layer_output(x, cam), cam, x), cam)

    def _name_of(self, module: nn.Module) -> str:
        for name in self.dnn.layers:
            if self.dnn.layer2module(name) is module:
                return name
        return next(n for n, m in self.dnn.model.named_modules() if m is module)

    def _finish(self, weights: torch.Tensor, act: torch.Tensor,
                x: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` weights and ``(B, C, h, w)`` activation -> ``(B, H, W)`` map."""
        out = torch.einsum("bc,bchw->bhw", weights, act)
        if self.relu:
            out = out.clamp(min=0)
        if self.upsample:
            out = F.interpolate(out[:, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                align_corners=False)[:, 0]
        return out

    @staticmethod
    def _check_4d(act: torch.Tensor, cam: str) -> None:
        if act.ndim != 4:
            raise ValueError(f"`cam_layer` {cam!r} must give a (N, C, H, W) output, got "
                             f"shape {tuple(act.shape)}")

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, type(self).__name__)
        cam = self._cam_name(x)
        grad, act = self.gradient(x, units, at_output=cam)
        grad, act = self._grid(grad, cam, x), self._grid(act, cam, x)
        self._check_4d(act, cam)
        return self._finish(self._weights(grad, act), act, x)

    def _weights(self, grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


_PARAMS = TARGET_PARAMS + """
    batch_size : int or None
        Rows per forward pass (None: 32, or what fits in ``memory_budget``).
    cam_layer : str or None
        Layer whose output ``A`` (``(N, C, h, w)``, or a token layer's patch tokens on
        their ``h x w`` grid, class/register tokens dropped) the map is built on; it must
        run before the target layer, or be it. None: for CNNs the last ``nn.Conv2d`` that
        runs before the target layer in forward order, excluding the target module itself;
        for transformers the last token layer whose patch tokens influence the target
        (see :meth:`resolve_cam_layer`). For torchvision ResNets this is
        ``layer4.1.conv2`` (before its batch norm and the residual sum);
        ``cam_layer='layer4'`` is the common alternative. For torchvision ``vit_b_16``
        and a class it is ``encoder.layers.encoder_layer_11.ln_1``, for ``swin_t``
        ``norm``.
    relu : bool
        Apply the ReLU of the CAM (False keeps the signed map).
    upsample : bool
        Upsample the map bilinearly (``align_corners=False``) to the input size; False
        gives the raw map at the CAM layer's resolution ``(h, w)``.
    memory_budget : int, str or None
        As :class:`SaliencyImage` (Grad-CAM, Grad-CAM++); Score-CAM's masked forward
        passes take ``batch_size`` rows when it is given, else 128 per CPU thread (1024 on
        an accelerator), within the budget or 256 MiB
        (:func:`~dnnbrain.dnn.algo.passes.forward_rows`).

    Notes
    -----
    :meth:`backprop` gives float32 ``(H, W)`` per image and unit (``(h, w)`` with
    ``upsample=False``), not normalised: min-max scale it for display (``viz`` does).
    ``to_layer`` must be None. The default CAM layer costs one extra single-image forward
    pass, once per target layer."""


class GradCAM(_CAM):
    __doc__ = """Grad-CAM (Selvaraju et al., 2017, "Grad-CAM: Visual explanations from deep
    networks via gradient-based localization").

    ``w_k`` is the spatial mean of the gradient of the target unit w.r.t. channel ``k`` of
    the CAM layer's output; map ``= ReLU(sum_k w_k A_k)``. Cost: one forward pass (stopped
    at the target layer) and one backward pass per image x unit. Equals captum's
    ``LayerGradCam(relu_attributions=True)`` followed by bilinear
    ``LayerAttribution.interpolate``.
    """ + _PARAMS

    def _weights(self, grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return grad.mean((2, 3))


class GradCAMPlusPlus(_CAM):
    __doc__ = """Grad-CAM++ (Chattopadhay et al., 2018, "Grad-CAM++: Generalized gradient-based
    visual explanations for deep convolutional networks").

    With the paper's exponential-score assumption the higher derivatives are powers of the
    gradient ``g``: ``alpha = g**2 / (2 g**2 + sum_ij(A) g**3)`` (0 where the denominator
    is 0) and ``w_k = sum_ij alpha * ReLU(g)``, as pytorch-grad-cam computes it (its
    ``exp(score)`` factor is a per-map constant and is left out); map
    ``= ReLU(sum_k w_k A_k)``. pytorch-grad-cam adds 1e-6 to the denominator; this class
    does not, so the two differ where ``g**2`` is near 1e-6. Cost: as Grad-CAM.
    """ + _PARAMS

    def _weights(self, grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        g2 = grad * grad
        denom = 2 * g2 + act.sum((2, 3), keepdim=True) * g2 * grad
        ok = denom != 0
        alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
        return (alpha * grad.clamp(min=0)).sum((2, 3))


class ScoreCAM(_CAM):
    __doc__ = """Score-CAM (Wang et al., 2020, "Score-CAM: Score-weighted visual explanations
    for convolutional neural networks"), as pytorch-grad-cam's ``ScoreCAM`` computes it.

    Each channel ``A_k`` of the CAM layer is upsampled bilinearly to the input size (with
    ``align_corners=True``, as pytorch-grad-cam), min-max normalised to 0..1 (a constant
    channel gives a zero mask), and multiplies the input; ``s_k`` is the target unit's
    score for that masked input (no gradient; ``'predicted'`` is resolved on the unmasked
    image), ``w = softmax_k(s_k)`` over the channels and map ``= ReLU(sum_k w_k A_k)``.
    The paper instead weights by the increase in the class's softmax probability over a
    baseline; the raw-score softmax here keeps the method meaningful for hidden units.
    Cost: one forward pass to the CAM layer plus ``C`` forward passes (to the target layer,
    in chunks of masked images, see ``memory_budget``) per image, shared by all its units; no
    backward pass.
    """ + _PARAMS

    shares_units = True

    @property
    def rows_per_map(self) -> int:  # type: ignore[override]
        """Forward rows per map: the CAM layer's channels when known, else ``batch_size``."""
        name = self._resolved.get((self.layer, self.call), self.cam_layer) if self.layer else None
        n = static_size(self.dnn.layer2module(name)) if name is not None else 0
        return n if n > 0 else self.batch_size

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, type(self).__name__)
        cam = self._cam_name(x)
        act = self._grid(self.layer_output(x, cam), cam, x)
        self._check_4d(act, cam)
        if any(isinstance(u, str) for u in units):
            units = self.fixed_units(x, units)
        units = list(units) * len(x) if len(units) == 1 else list(units)
        c, size = act.shape[1], tuple(x.shape[-2:])

        def masked(row: torch.Tensor, chn: torch.Tensor) -> torch.Tensor:
            mask = F.interpolate(act[row, chn][:, None], size=size, mode="bilinear",
                                 align_corners=True)
            lo = mask.amin((2, 3), keepdim=True)
            span = mask.amax((2, 3), keepdim=True) - lo
            mask = torch.where(span > 0, (mask - lo) / torch.where(span > 0, span, 1.0), 0.0)
            return x[row] * mask

        scores = perturbed_scores(self, x, units, c, masked)
        weights = torch.softmax(scores, dim=1).to(act.dtype)
        return self._finish(weights, act, x)
