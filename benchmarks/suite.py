"""The cells of the benchmark suite: one (network, method, target) each, with dnnbrain and
the reference implementations (captum, pytorch-grad-cam) set up on the same inputs, the
same target and the same settings. :mod:`run_all` measures them.

Settings that must match (see ``docs/benchmarks.md``):

* targets: class ``c`` = dnnbrain unit ``c + 1`` of the output layer; the hidden unit is
  channel 7 of a conv stage (``reduce='mean'``) = captum selector ``o[:, 6].mean``;
* Integrated Gradients: 50 steps, ``'gausslegendre'`` nodes, baseline zeros in network
  input space (dnnbrain gets a zero baseline tensor; its ``'black'`` would be pixels 0);
* SmoothGrad: 25 samples, dnnbrain ``sigma_multiplier`` 0.15, captum ``stdevs`` = 0.15 x
  (max - min) of each input (:func:`harness.make_inputs` makes that the same for all);
* Grad-CAM family and Score-CAM: the same CAM layer (a non-in-place module's output);
* occlusion: the same window, stride and fill 0 (network input space);
* rows per pass ("chunk"): the reference's batching knob (``internal_batch_size``,
  ``nt_samples_batch_size`` x N, ``perturbations_per_eval`` x N, Score-CAM's
  ``batch_size``) and dnnbrain's ``batch_size`` get the same number of rows; where the
  reference has such a knob, the fastest of :data:`CHUNKS` is searched for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from dnnbrain.dnn.algo import (GradCAM, GradCAMPlusPlus, GuidedSaliencyImage, ScoreCAM,
                               VanillaSaliencyImage, make_method)
from dnnbrain.dnn.algo.integrated import IntegratedGradients
from dnnbrain.dnn.models import DNN

#: Rows-per-pass candidates searched for the reference's batching knob.
CHUNKS = (16, 50, 100, 200, 400)
STEPS, SAMPLES, SIGMA = 50, 25, 0.15
#: Score-CAM: masked images per forward pass, in both libraries.
SCORECAM_CHUNK = 64
METHODS = ("vanilla", "guided", "ig", "smoothgrad", "gradcam", "gradcam++", "scorecam",
           "occlusion")


def hidden_selector(o: torch.Tensor) -> torch.Tensor:
    """captum selector of the hidden unit: channel 7 (index 6), mean over space."""
    return o[:, 6].flatten(1).mean(1)


def token_selector(o: torch.Tensor) -> torch.Tensor:
    """captum selector of a ViT block's hidden unit: feature 7 (index 6), mean over the
    patch tokens (the class token left out), as dnnbrain reads unit 7 of a token layer."""
    return o[:, 1:, 6].mean(1)


def vit_reshape(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape transform: drop the class token, lay the
    patch tokens on their (14, 14) grid, channels first."""
    side = int(round((t.size(1) - 1) ** 0.5))
    return t[:, 1:, :].reshape(t.size(0), side, side, t.size(2)).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class NetSpec:
    """Targets of one network: class (dnnbrain layer, unit from 1, module path), hidden
    unit (layer, channel from 1, module path), CAM layer (name, path), occlusion window and
    stride, the number of CAM-layer channels (Score-CAM's forward rows per image), the
    captum selector of the hidden unit, and pytorch-grad-cam's reshape transform (a token
    CAM layer; captum's LayerGradCam, which takes (N, C, H, W) layers, is left out)."""

    cls: Tuple[str, int, str]
    hidden: Tuple[str, int, str]
    cam: Tuple[str, str]
    occ: Tuple[int, int]
    cam_channels: int
    selector: Callable[[torch.Tensor], torch.Tensor] = hidden_selector
    reshape: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


NETS: Dict[str, NetSpec] = {
    "alexnet": NetSpec(("fc3", 540, "classifier.6"), ("conv5", 7, "features.10"),
                       ("conv5_maxpool", "features.12"), (56, 28), 256),
    "resnet18": NetSpec(("fc", 540, "fc"), ("res3", 7, "layer3"), ("res4", "layer4"),
                        (56, 28), 512),
    "shapenet": NetSpec(("fc2", 2, "fc2"), ("conv3", 7, "conv3"),
                        ("conv3_maxpool", "conv3_maxpool"), (16, 8), 64),
    "vit_b_16": NetSpec(("head", 541, "heads.head"), ("block6", 7, "encoder.layers."
                                                                   "encoder_layer_5"),
                        ("block12_norm1", "encoder.layers.encoder_layer_11.ln_1"), (56, 28),
                        768, token_selector, vit_reshape),
}
#: Methods a network has no row for: guided backprop needs ReLU networks (ViT: GELU).
SKIP = {"vit_b_16": {"guided"}}


@dataclass
class Impl:
    """One implementation of a cell: ``make(chunk)`` gives the no-argument call that is
    timed; ``setting(chunk)`` describes its knobs; ``compare`` turns its output into the
    array compared with dnnbrain's (None: not compared)."""

    lib: str
    make: Callable[[int], Callable[[], Any]]
    setting: Callable[[int], str] = lambda chunk: ""
    compare: Optional[Callable[[Any], np.ndarray]] = None
    minmax: bool = False  # compare after per-map min-max scaling (pytorch-grad-cam)


@dataclass
class Cell:
    """One row group of the table."""

    net: str
    method: str
    target: str
    n: int
    rows: int                          # forward(+backward) rows the method needs
    ours: Impl
    refs: List[Impl]
    chunk: int                         # rows per pass when not searched
    search: bool = False               # search CHUNKS for refs[0]'s knob
    floor: Optional[Tuple[str, str, Optional[str]]] = None  # (kind, module, wrt)
    note: str = ""


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _call(method: Any, x: torch.Tensor) -> Callable[[], np.ndarray]:
    """The timed call of a dnnbrain method object: ``backprop`` of preprocessed ``x``."""
    return lambda: method.backprop(x, preprocessed=True)


def _windows(size: int, window: int, stride: int) -> int:
    return (math.ceil((size - window) / stride) + 1) ** 2


class _Ctx:
    """What every cell builder needs: the network, its spec, the inputs, the libraries."""

    def __init__(self, dnn: DNN, net: str, x: torch.Tensor) -> None:
        import captum.attr as captum
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        self.dnn, self.net, self.x, self.model = dnn, net, x, dnn.model
        self.spec, self.captum, self.pgc, self.target_cls = NETS[net], captum, pgc, \
            ClassifierOutputTarget
        self.layer, self.unit, self.path = self.spec.cls
        self.cls_idx, self.size = self.unit - 1, x.shape[-1]
        self.cam_name, self.cam_path = self.spec.cam
        self.cam_module = self.model.get_submodule(self.cam_path)
        self.target = f"{self.layer}:{self.unit}"

    def pgc_call(self, cls, xb: torch.Tensor, batch: Optional[int] = None
                 ) -> Callable[[], Any]:
        """pytorch-grad-cam's documented use: a ``with`` block per call (it hooks the model
        at construction and unhooks on exit)."""
        targets = [self.target_cls(self.cls_idx) for _ in range(len(xb))]
        model, layers, reshape = self.model, [self.cam_module], self.spec.reshape

        def run():
            with cls(model=model, target_layers=layers, reshape_transform=reshape) as cam:
                if batch is not None:
                    cam.batch_size = batch
                maps = cam(input_tensor=xb, targets=targets)
            model.zero_grad(set_to_none=True)  # it leaves .grad on every parameter
            return maps
        return run


def _gradient(c: _Ctx, method: str) -> List[Cell]:
    ours_cls = VanillaSaliencyImage if method == "vanilla" else GuidedSaliencyImage
    ref_cls = c.captum.NeuronGradient if method == "vanilla" else \
        c.captum.NeuronGuidedBackprop
    out, n = [], len(c.x)
    for (lay, u, p), sel in ((c.spec.cls, (c.cls_idx,)), (c.spec.hidden, c.spec.selector)):
        ours = ours_cls(c.dnn, lay, u, batch_size=n)
        ref = ref_cls(c.model, c.model.get_submodule(p))

        def ref_call(chunk, r=ref, s=sel):
            return lambda: _np(r.attribute(c.x, neuron_selector=s))
        out.append(Cell(c.net, method, f"{lay}:{u}", n, n,
                        Impl("dnnbrain", lambda chunk, o=ours: _call(o, c.x)),
                        [Impl("captum", ref_call, compare=_np)], chunk=n,
                        floor=("grad", p, None)))
    return out


def _gradcam(c: _Ctx, method: str) -> List[Cell]:
    n, x = len(c.x), c.x
    ours = (GradCAM if method == "gradcam" else GradCAMPlusPlus)(
        c.dnn, c.layer, c.unit, batch_size=n, cam_layer=c.cam_name)
    refs = []
    if method == "gradcam" and c.spec.reshape is None:
        lgc, interp = c.captum.LayerGradCam(c.model, c.cam_module), \
            c.captum.LayerAttribution.interpolate

        def captum_call(chunk):
            return lambda: _np(interp(lgc.attribute(x, target=c.cls_idx,
                                                    relu_attributions=True),
                                      (c.size, c.size), "bilinear"))[:, 0]
        refs.append(Impl("captum", captum_call, compare=_np))
    pcls = c.pgc.GradCAM if method == "gradcam" else c.pgc.GradCAMPlusPlus
    refs.append(Impl("pytorch-grad-cam", lambda chunk: c.pgc_call(pcls, x), compare=_np,
                     minmax=True))
    return [Cell(c.net, method, c.target, n, n,
                 Impl("dnnbrain", lambda chunk: _call(ours, x)),
                 refs, chunk=n, floor=("grad", c.path, c.cam_path),
                 note=f"CAM layer {c.cam_name}")]


def _scorecam(c: _Ctx, n: int) -> List[Cell]:
    xs = c.x[:n]

    def ours(chunk):
        return _call(ScoreCAM(c.dnn, c.layer, c.unit, batch_size=chunk,
                              cam_layer=c.cam_name), xs)
    return [Cell(c.net, "scorecam", c.target, n, n * c.spec.cam_channels,
                 Impl("dnnbrain", ours, setting=lambda k: f"batch_size={k}"),
                 [Impl("pytorch-grad-cam", lambda k: c.pgc_call(c.pgc.ScoreCAM, xs, k),
                       setting=lambda k: f"batch_size={k}", compare=_np, minmax=True)],
                 chunk=SCORECAM_CHUNK, floor=("fwd", c.path, None),
                 note=f"CAM layer {c.cam_name}: {c.spec.cam_channels} masked forwards "
                      "per image")]


def _ig(c: _Ctx, n: int) -> List[Cell]:
    xh, base = c.x[:n], torch.zeros(c.x.shape[1:])
    ig = c.captum.IntegratedGradients(c.model)

    def ours(chunk):
        return _call(IntegratedGradients(
            c.dnn, c.layer, c.unit, batch_size=chunk, steps=STEPS, baseline=base,
            rule="gausslegendre"), xh)

    def ref(chunk):
        return lambda: _np(ig.attribute(xh, baselines=0.0, target=c.cls_idx, n_steps=STEPS,
                                        method="gausslegendre", internal_batch_size=chunk))
    return [Cell(c.net, "ig", c.target, n, n * STEPS,
                 Impl("dnnbrain", ours, setting=lambda k: f"batch_size={k}"),
                 [Impl("captum", ref, setting=lambda k: f"internal_batch_size={k}",
                       compare=_np)],
                 chunk=n * STEPS, search=True, floor=("grad", c.path, None),
                 note=f"{STEPS} steps, gausslegendre, zero baseline")]


def _smoothgrad(c: _Ctx, n: int) -> List[Cell]:
    xh = c.x[:n]
    span = float((xh.flatten(1).amax(1) - xh.flatten(1).amin(1))[0])
    nt = c.captum.NoiseTunnel(c.captum.Saliency(c.model))
    obj = VanillaSaliencyImage(c.dnn, c.layer, c.unit)

    def ours(chunk):
        obj.batch_size = chunk
        return lambda: obj.backprop_smooth(xh, SAMPLES, SIGMA, seed=0, preprocessed=True)

    def ref(chunk):
        return lambda: _np(nt.attribute(xh, nt_type="smoothgrad", nt_samples=SAMPLES,
                                        stdevs=SIGMA * span, target=c.cls_idx, abs=False,
                                        nt_samples_batch_size=max(1, chunk // n)))
    return [Cell(c.net, "smoothgrad", c.target, n, n * SAMPLES,
                 Impl("dnnbrain", ours, setting=lambda k: f"batch_size={k}"),
                 [Impl("captum", ref, setting=lambda k: f"nt_samples_batch_size="
                                                        f"{max(1, k // n)}")],
                 chunk=n * SAMPLES, search=True, floor=("grad", c.path, None),
                 note=f"{SAMPLES} samples, stdev {SIGMA} x range = {SIGMA * span:.3f}")]


def _occlusion(c: _Ctx, n: int) -> List[Cell]:
    xh = c.x[:n]
    win, stride = c.spec.occ
    occ = c.captum.Occlusion(c.model)
    n_win = _windows(c.size, win, stride)

    def ours(chunk):
        return _call(make_method(c.dnn, "occlusion", c.layer, c.unit, batch_size=chunk,
                                 window=win, stride=stride, fill=0.0), xh)

    def ref(chunk):
        return lambda: _np(occ.attribute(
            xh, sliding_window_shapes=(3, win, win), strides=(3, stride, stride),
            baselines=0.0, target=c.cls_idx,
            perturbations_per_eval=max(1, chunk // n)))[:, 0]
    return [Cell(c.net, "occlusion", c.target, n, n * (n_win + 1),
                 Impl("dnnbrain", ours, setting=lambda k: f"batch_size={k}"),
                 [Impl("captum", ref, setting=lambda k: f"perturbations_per_eval="
                                                        f"{max(1, k // n)}", compare=_np)],
                 chunk=n * (n_win + 1), search=True, floor=("fwd", c.path, None),
                 note=f"window {win}, stride {stride}: {n_win} windows")]


def cells(dnn: DNN, net: str, x: torch.Tensor, methods: List[str], n_heavy: int,
          n_scorecam: int) -> List[Cell]:
    """The cells of ``net`` for ``methods``; ``x``: ``(N, 3, S, S)`` inputs. One-pass
    methods (vanilla, guided, Grad-CAM, Grad-CAM++) use all N images; IG, SmoothGrad and
    occlusion the first ``n_heavy``, Score-CAM the first ``n_scorecam`` (0 skips it)."""
    c = _Ctx(dnn, net, x)
    out: List[Cell] = []
    for method in (m for m in methods if m not in SKIP.get(net, ())):
        if method in ("vanilla", "guided"):
            out += _gradient(c, method)
        elif method in ("gradcam", "gradcam++"):
            out += _gradcam(c, method)
        elif method == "scorecam" and n_scorecam:
            out += _scorecam(c, n_scorecam)
        elif method in ("ig", "smoothgrad", "occlusion") and n_heavy:
            out += {"ig": _ig, "smoothgrad": _smoothgrad, "occlusion": _occlusion}[method](
                c, n_heavy)
    return out
