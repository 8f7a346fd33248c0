"""The cells PAIR saliency owns (Blur IG, Guided IG, XRAI), and occlusion / Score-CAM at
dnnbrain's default settings: dnnbrain side by side with the reference on the same inputs,
target and parameters. :mod:`run_all` measures them like the cells of :mod:`suite`.

Settings that must match (see ``docs/benchmarks.md``):

* PAIR works in pixel space, one HWC image per call: its ``call_model_function``
  normalises with the network's own transform, and its gradients (w.r.t. pixels) times
  ``pixels - baseline`` are the attributions dnnbrain computes in network-input space (the
  affine normalisation cancels), so maps are compared as they are;
* Blur IG: PAIR's defaults (``max_sigma`` 50, 100 steps, ``grad_step`` 0.01), the steps in
  one batch in both; Guided IG: PAIR's defaults (200 steps, fraction 0.25, ``max_dist``
  0.02, black baseline); PAIR's Guided IG calls ``np.quantile(..., interpolation=)``,
  removed in numpy 2: :func:`pair` patches that one call (``method=``, same values);
* XRAI: 100 IG steps per baseline (PAIR's default) with PAIR's IG nodes (``linspace(0, 1,
  steps)``, equal weights; dnnbrain's default is the trapezoid rule at the same cost),
  black and white baselines (the inputs hold a 0 and a 1 pixel, so PAIR's min / max
  baselines are those), dilation radius 5 px (PAIR's, dnnbrain's own default at 224 px);
* the ``x1`` rows: the same dnnbrain method called image by image, against the batched
  call (Guided IG and XRAI walk every image's path together); dnnbrain's XRAI calls start
  with an empty segmentation cache (``SEGMENT_CACHE``), so they segment every image as
  PAIR does;
* ``*_default``: occlusion with dnnbrain's default window (11) and stride (2) and Score-CAM
  with its default ``batch_size`` (the memory budget's choice), against captum's occlusion
  with the same window (256 rows per pass) and pytorch-grad-cam's
  Score-CAM with its default ``batch_size`` (32).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np
import torch

from dnnbrain.dnn.algo import ScoreCAM, make_method
from dnnbrain.dnn.algo.integrated import pixel_affine
from dnnbrain.dnn.algo.xrai import SEGMENT_CACHE
from suite import Cell, Impl, _call, _Ctx, _np, _windows

METHODS = ("blur_ig", "guided_ig", "xrai", "occlusion_default", "scorecam_default")
BLUR_STEPS, GUIDED_STEPS, XRAI_STEPS = 100, 200, 100
OCCLUSION_CHUNK = 256  # captum's perturbations_per_eval x images, fixed (no search)


def pair() -> Any:
    """``saliency.core`` with its Guided IG made to run under numpy 2 (it passes
    ``interpolation=`` to ``np.quantile``; numpy 2 names that ``method=``)."""
    import saliency.core as sc
    import saliency.core.guided_ig as gig

    class _Numpy:
        def __getattr__(self, name: str) -> Any:
            return getattr(np, name)

        @staticmethod
        def quantile(a, q, interpolation="linear", **kw):
            return np.quantile(a, q, method=interpolation, **kw)

    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        gig.np = _Numpy()
    return sc


class _Pair:
    """PAIR's view of one cell: pixel-space HWC float64 images and the model function."""

    def __init__(self, c: _Ctx, n: int) -> None:
        self.sc = pair()
        scale, shift = pixel_affine(c.dnn)
        self.pixels = [p.permute(1, 2, 0).cpu().numpy().astype(np.float64)
                       for p in ((c.x[:n] - shift) / scale)]
        model, cls, dev = c.model, c.cls_idx, c.x.device
        key = self.sc.base.INPUT_OUTPUT_GRADIENTS

        def call_model(xb, call_model_args=None, expected_keys=None):
            t = torch.as_tensor(np.asarray(xb), dtype=torch.float32, device=dev)
            t = t.permute(0, 3, 1, 2).requires_grad_(True)
            out = model(t * scale + shift)[:, cls]
            grad, = torch.autograd.grad(out.sum(), t)
            return {key: grad.permute(0, 2, 3, 1).cpu().numpy()}
        self.call_model = call_model

    def maps(self, one: Callable[[np.ndarray], np.ndarray]) -> Callable[[], np.ndarray]:
        """The timed call: PAIR on each image in turn; maps channels first."""
        def run():
            out = np.stack([one(p) for p in self.pixels])
            return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
        return run


def _one_by_one(method: Any, x: torch.Tensor) -> Callable[[], np.ndarray]:
    return lambda: np.concatenate([method.backprop(x[i:i + 1], preprocessed=True)
                                   for i in range(len(x))])


def _cold(run: Callable[[], Any]) -> Callable[[], Any]:
    """``run`` with XRAI's segmentation cache emptied first."""
    def cold():
        SEGMENT_CACHE.clear()
        return run()
    return cold


def _path_cells(c: _Ctx, method: str, n: int) -> List[Cell]:
    xs, p = c.x[:n], _Pair(c, n)
    sc, f = p.sc, p.call_model
    if method == "blur_ig":
        ours = make_method(c.dnn, "blur_ig", c.layer, c.unit, steps=BLUR_STEPS,
                           batch_size=BLUR_STEPS)
        ref = p.maps(lambda im: sc.BlurIG().GetMask(im, f, steps=BLUR_STEPS,
                                                    batch_size=BLUR_STEPS))
        steps, note = BLUR_STEPS, f"{BLUR_STEPS} steps, max_sigma 50"
    elif method == "guided_ig":
        ours = make_method(c.dnn, "guided_ig", c.layer, c.unit, steps=GUIDED_STEPS,
                           batch_size=n)
        ref = p.maps(lambda im: sc.GuidedIG().GetMask(
            im, f, x_steps=GUIDED_STEPS, x_baseline=np.zeros_like(im)))
        steps, note = GUIDED_STEPS, f"{GUIDED_STEPS} steps, fraction 0.25, max_dist 0.02"
    else:
        ours = make_method(c.dnn, "xrai", c.layer, c.unit, steps=XRAI_STEPS,
                           dilation_radius=5, batch_size=2 * XRAI_STEPS)
        ours.alphas = np.linspace(0.0, 1.0, XRAI_STEPS)       # PAIR's IG nodes
        ours.weights = np.full(XRAI_STEPS, 1.0 / XRAI_STEPS)
        params = sc.XRAIParameters(steps=XRAI_STEPS)
        ref = p.maps(lambda im: sc.XRAI().GetMask(im, f, batch_size=XRAI_STEPS,
                                                  extra_parameters=params))
        steps, note = 2 * XRAI_STEPS, f"{XRAI_STEPS} IG steps x black/white, dilation 5"
    batched, single = _call(ours, xs), _one_by_one(ours, xs)
    if method == "xrai":  # every timed call segments its images, as PAIR's calls do
        batched, single = _cold(batched), _cold(single)
    refs = [Impl("PAIR saliency", lambda chunk: ref, compare=_np)]
    if method in ("guided_ig", "xrai") and n > 1:
        refs.append(Impl(f"dnnbrain x1", lambda chunk: single, compare=_np))
    return [Cell(c.net, method, c.target, n, n * steps,
                 Impl("dnnbrain", lambda chunk: batched), refs, chunk=n * steps,
                 floor=("grad", c.path, None), note=note)]


def _occlusion_default(c: _Ctx, n: int) -> List[Cell]:
    xs = c.x[:n]
    ours = make_method(c.dnn, "occlusion", c.layer, c.unit)   # batch_size: the budget's
    win, stride = ours.window[0], ours.stride[0]
    occ = c.captum.Occlusion(c.model)

    def ref(chunk):
        return lambda: _np(occ.attribute(
            xs, sliding_window_shapes=(3, win, win), strides=(3, stride, stride),
            baselines=0.0, target=c.cls_idx,
            perturbations_per_eval=max(1, chunk // n)))[:, 0]
    n_win = _windows(c.size, win, stride)
    return [Cell(c.net, "occlusion_default", c.target, n, n * (n_win + 1),
                 Impl("dnnbrain", lambda chunk: _call(ours, xs), setting=lambda k: "defaults"),
                 [Impl("captum", ref, setting=lambda k: f"perturbations_per_eval="
                                                       f"{max(1, k // n)}", compare=_np)],
                 chunk=min(OCCLUSION_CHUNK, n * (n_win + 1)), floor=("fwd", c.path, None),
                 note=f"window {win}, stride {stride} (dnnbrain's defaults): {n_win} windows; "
                      f"captum {OCCLUSION_CHUNK} rows per pass (its default, 1, would be "
                      "thousands of single-image passes)")]


def _scorecam_default(c: _Ctx, n: int) -> List[Cell]:
    xs = c.x[:n]
    ours = ScoreCAM(c.dnn, c.layer, c.unit, cam_layer=c.cam_name)
    return [Cell(c.net, "scorecam_default", c.target, n, n * c.spec.cam_channels,
                 Impl("dnnbrain", lambda chunk: _call(ours, xs), setting=lambda k: "defaults"),
                 [Impl("pytorch-grad-cam", lambda k: c.pgc_call(c.pgc.ScoreCAM, xs),
                       setting=lambda k: "batch_size=32 (default)", compare=_np,
                       minmax=True)],
                 chunk=c.spec.cam_channels, floor=("fwd", c.path, None),
                 note=f"CAM layer {c.cam_name}, default batch sizes")]


BUILDERS: Dict[str, Callable[[_Ctx, str, int], List[Cell]]] = {
    "blur_ig": _path_cells, "guided_ig": _path_cells, "xrai": _path_cells,
    "occlusion_default": lambda c, m, n: _occlusion_default(c, n),
    "scorecam_default": lambda c, m, n: _scorecam_default(c, n),
}


def cells(c: _Ctx, methods: List[str], n: int) -> List[Cell]:
    """The PAIR and default-settings cells of ``c``'s network on its first ``n`` images
    (0 skips them)."""
    return [cell for m in methods if m in BUILDERS and n for cell in BUILDERS[m](c, m, n)]
