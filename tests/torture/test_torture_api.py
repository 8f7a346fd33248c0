"""Torture: bad arguments to the Python API (targets, units, methods and their parameters,
memory budgets, images and preprocessed tensors) on the demo network."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dnnbrain.dnn.algo.registry import make_method, saliency
from dnnbrain.dnn.models import DNN, build_network

from .helpers import Case, check_refused, guarded, params

NAN, INF = float("nan"), float("inf")


def bp(method="vanilla", layer="fc2", unit=1, reduce="mean", batch_size=None, image=None,
       to_layer=None, **kw):
    """A call: build ``method`` aimed at ``(layer, unit)`` and take its map of ``image``
    (default: the case's preprocessed batch ``ctx.x``; a function of ctx otherwise, not
    preprocessed unless it returns ``(tensor, True)``)."""
    def call(c):
        img, pre = (c.x, True) if image is None else image(c)
        extra = {} if to_layer is None else {"to_layer": to_layer}
        obj = make_method(c.dnn, method, layer, unit, reduce, batch_size, **kw)
        return obj.backprop(img, preprocessed=pre, **extra)
    return call


def pre(t):
    """An image function giving an already preprocessed tensor."""
    return lambda c: (t() if callable(t) else t, True)


def raw(v):
    """An image function giving pixels (or a path ...) to be preprocessed."""
    return lambda c: (v(c) if callable(v) else v, False)


def _smooth_n_iter(c):
    return make_method(c.dnn, "vanilla", "fc2", 1).backprop_smooth(c.x, n_iter=0,
                                                                   preprocessed=True)


CASES = [
    # batch_size
    *[Case(f"batch_size={v!r}", bp(batch_size=v), ("batch_size",))
      for v in (True, 0, -1, 1.5, "8")],
    # layers
    Case("layer=conv9", bp(layer="conv9"), ("layer", "conv9")),
    Case("layer=int", bp(layer=3), ("layer",)),
    Case("layer=empty", bp(layer=""), ("layer",)),
    Case("layer=dotted-missing", bp(layer="conv1.weight.x"), ("layer",)),
    # units
    *[Case(f"unit={v!r}", bp(unit=v), ("unit",))
      for v in (0, 5, -1, 1.5, True, "predictd", None, (1, 0, 1), (1, 2), [])],
    Case("unit=list-bad-second", bp(unit=[1, "x"]), ("unit[1]",)),
    Case("unit=list-past-size", bp(unit=[1, 9]), ("unit[1]",)),
    Case("unit=spatial-past-rows", bp(layer="conv1", unit=(1, 99, 1)), ("unit",)),
    Case("unit=spatial-on-fc", bp(layer="fc1", unit=(1, 1, 1)), ("unit",)),
    Case("unit=callable-wrong-shape", bp(unit=lambda out: out.sum()), ("unit",)),
    Case("unit=ndarray-float", bp(unit=np.array([1.5])), ("unit",)),
    # reduce, method names, to_layer
    Case("reduce=median", bp(reduce="median"), ("reduce",)),
    Case("reduce=None", bp(reduce=None), ("reduce",)),
    Case("method=nope", lambda c: saliency(c.dnn, c.x, method="nope", preprocessed=True),
         ("method",)),
    Case("method=None", lambda c: saliency(c.dnn, c.x, method=None, preprocessed=True),
         ("method",)),
    Case("to_layer=nope", bp(to_layer="nope"), ("to_layer",)),
    Case("to_layer=after-target", bp(layer="conv2", to_layer="fc2"), ("to_layer",)),
    Case("to_layer=gradcam", bp("gradcam", to_layer="conv1"), ("to_layer",)),
    # integrated gradients and relatives
    Case("ig-steps=0", bp("ig", steps=0), ("steps",)),
    Case("ig-steps=1.5", bp("ig", steps=1.5), ("steps",)),
    Case("ig-baseline=purple", bp("ig", baseline="purple"), ("baseline",)),
    Case("ig-baseline=all-nan", bp("ig", steps=2, baseline=torch.full((3, 64, 64), NAN)),
         ("baseline",)),
    Case("ig-baseline=wrong-shape", bp("ig", steps=2, baseline=torch.zeros(3, 8, 8)),
         ("baseline",)),
    Case("ig-rule=simpson", bp("ig", rule="simpson"), ("rule",)),
    Case("ig-blur_sigma=-1", bp("ig", baseline="blur", blur_sigma=-1.0), ("blur_sigma",)),
    Case("ig-base=deconv", bp("ig", base="deconv"), ("base",)),
    Case("blur_ig-max_sigma=-1", bp("blur_ig", max_sigma=-1.0), ("max_sigma",)),
    Case("guided_ig-fraction=0", bp("guided_ig", fraction=0.0), ("fraction",)),
    Case("guided_ig-max_dist=nan", bp("guided_ig", max_dist=NAN), ("max_dist",)),
    Case("xrai-area_threshold=2", bp("xrai", area_threshold=2.0), ("area_threshold",)),
    # SmoothGrad
    *[Case(f"smoothgrad-n_samples={v!r}", bp("smoothgrad", n_samples=v), ("n_samples",))
      for v in (0, 2.5, True, -3)],
    *[Case(f"smoothgrad-sigma_multiplier={v!r}", bp("smoothgrad", n_samples=2,
                                                     sigma_multiplier=v),
           ("sigma_multiplier",)) for v in (-0.1, NAN, INF, "0.1")],
    Case("smoothgrad-base=nope", bp("smoothgrad", base="nope"), ("base",)),
    Case("smoothgrad-base=smoothgrad", bp("smoothgrad", base="smoothgrad"), ("base",)),
    Case("smoothgrad-mode=median", bp("smoothgrad", mode="median"), ("mode",)),
    Case("backprop_smooth-n_iter=0", _smooth_n_iter, ("n_iter",)),
    # memory budgets
    *[Case(f"memory_budget={v!r}", bp("ig", steps=4, memory_budget=v), ("memory_budget",))
      for v in (0, -5, INF, NAN, True, "lots", "5 parsecs", "1e999", "-1GB", "10kB")],
    # CAMs
    Case("gradcam-cam_layer-after-target", bp("gradcam", layer="conv3", cam_layer="conv4"),
         ("cam_layer",)),
    Case("gradcam-cam_layer=nope", bp("gradcam", layer="fc2", cam_layer="nope"),
         ("cam_layer",)),
    Case("gradcam-cam_layer=int", bp("gradcam", cam_layer=3), ("cam_layer",)),
    Case("gradcam-relu=yes", bp("gradcam", relu="yes"), ("relu",)),
    Case("scorecam-upsample=1", bp("scorecam", upsample=1), ("upsample",)),
    # occlusion and upsampled activation
    Case("occlusion-window>image", bp("occlusion", window=100, stride=50), ("window",)),
    Case("occlusion-window=0", bp("occlusion", window=0), ("window",)),
    Case("occlusion-stride-zero", bp("occlusion", window=8, stride=(3, 0)), ("stride",)),
    Case("occlusion-stride>window", bp("occlusion", window=8, stride=20), ("stride",)),
    Case("occlusion-fill=nan", bp("occlusion", fill=NAN), ("fill",)),
    Case("occlusion-output=both", bp("occlusion", output="both"), ("output",)),
    Case("upsampled_activation-on-fc", bp("upsampled_activation", layer="fc1"),
         ("fc1",)),
    Case("upsampled_activation-mode", bp("upsampled_activation", layer="conv4",
                                         mode="lanczos"), ("mode",)),
    Case("upsampled_activation-spatial-unit", bp("upsampled_activation", layer="conv4",
                                                 unit=(1, 1, 1)), ("unit",)),
    # preprocessed tensors
    Case("pre-1-channel", bp(image=pre(lambda: torch.zeros(2, 1, 64, 64))),
         ("image|preprocessed",)),
    Case("pre-4-channels", bp(image=pre(lambda: torch.zeros(2, 4, 64, 64))),
         ("image|preprocessed",)),
    Case("pre-too-small", bp(image=pre(lambda: torch.zeros(2, 3, 4, 4))),
         ("image|preprocessed",)),
    Case("pre-1-d", bp(image=pre(lambda: torch.zeros(64))), ("image|preprocessed",)),
    Case("pre-5-d", bp(image=pre(lambda: torch.zeros(1, 2, 3, 64, 64))),
         ("image|preprocessed",)),
    Case("pre-nan", bp(image=pre(lambda: torch.full((2, 3, 64, 64), NAN))),
         ("image|preprocessed",)),
    Case("pre-inf", bp(image=pre(lambda: torch.full((1, 3, 64, 64), INF))),
         ("image|preprocessed",)),
    Case("pre-complex", bp(image=pre(lambda: torch.zeros(1, 3, 64, 64, dtype=torch.cfloat))),
         ("image|preprocessed",)),
    Case("pre-list", bp(image=pre(lambda: [torch.zeros(3, 64, 64)])), ("image|preprocessed",)),
    # pixels
    Case("pixels-float>1", bp(image=raw(lambda c: np.full((64, 64, 3), 2.0))), ("image",)),
    Case("pixels-5-channels", bp(image=raw(lambda c: np.zeros((64, 64, 5), np.uint8))),
         ("image",)),
    Case("pixels-int>255", bp(image=raw(lambda c: np.full((8, 8), 300))), ("image",)),
    Case("pixels-empty", bp(image=raw(lambda c: np.zeros((0, 0, 3), np.uint8))), ("image",)),
    Case("image=dict", bp(image=raw({"a": 1})), ("image",)),
    Case("image=None-in-list", bp(image=raw([None])), ("image",)),
    Case("image=empty-list", bp(image=raw([])), ("image",)),
    Case("image=missing-path", bp(image=raw(lambda c: str(c.tmp / "absent.png"))),
         ("absent.png",), exc=(FileNotFoundError,)),
    Case("image=folder", bp(image=raw(lambda c: str(c.tmp))), ("image|" + "tmp",)),
    # networks
    Case("DNN-model=object", lambda c: DNN(object()), ("model",)),
    Case("DNN-layers-bad-path", lambda c: DNN(c.dnn.model, {"a": "nope"}), ("nope",)),
    Case("DNN-stem-missing", lambda c: DNN(c.dnn.model, stem="nope"), ("stem|nope",)),
    Case("build_network-NoNet", lambda c: build_network("NoNet"), ("NoNet",)),
    Case("build_network-name=int", lambda c: build_network(5), ("name|net",)),
]


@pytest.mark.parametrize("case", params(CASES))
def test_api_refuses(case, ctx):
    """The call raises a user error naming the parameter, and leaves the model, the input,
    the files and the global state as they were."""
    check_refused(case, ctx, ctx.dnn.model, [ctx.x])


def test_valid_call_passes(ctx):
    """The control: the base call the cases spoil works and leaves everything alone."""
    with guarded([ctx.tmp], ctx.dnn.model, [ctx.x]) as guard:
        maps = bp("ig", steps=4, memory_budget="64MiB")(ctx)
    guard.check()
    assert maps.shape == (2, 3, 64, 64) and np.isfinite(maps).all() and math.isfinite(
        float(np.abs(maps).sum())) and np.abs(maps).sum() > 0
