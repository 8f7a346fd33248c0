"""Occlusion (occluder discrepancy map) and the upsampled activation map: known answers,
captum agreement, batching, validation and invariants."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnbrain.dnn.algo import saliency
from dnnbrain.dnn.algo.occlusion import Occlusion, UpsampledActivation
from dnnbrain.dnn.models import DNN

from .conftest import hook_dicts_empty

captum_attr = pytest.importorskip("captum.attr")
LAYERS = {"conv1": "0", "relu1": "1", "pool1": "2", "conv2": "3", "relu2": "4",
          "gap": "5", "flat": "6", "fc": "7"}


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 5)).eval()


@pytest.fixture(scope="module")
def small():
    return DNN(make_net(), layers=LAYERS)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def region_net(size: int, rows: slice, cols: slice) -> DNN:
    """Unit 1 of 'fc' = the sum of all channels' pixels inside ``rows`` x ``cols``."""
    fc = nn.Linear(3 * size * size, 1, bias=False)
    weight = torch.zeros(3, size, size)
    weight[:, rows, cols] = 1.0
    with torch.no_grad():
        fc.weight.copy_(weight.flatten()[None])
    return DNN(nn.Sequential(nn.Flatten(), fc), layers={"flat": "0", "fc": "1"})


def close(ours: np.ndarray, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    """Agreement relative to the reference's largest magnitude."""
    ref = ref.detach().numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


# --------------------------------------------------------------------------- known answers


def test_occlusion_known_answer_tiles():
    """Non-overlapping 2x2 windows; the unit reads pixel (2, 3) only: occluding the tile
    rows 2-3, cols 2-3 drops it by 3 (three channels of ones), nothing else matters."""
    dnn = region_net(6, slice(2, 3), slice(3, 4))
    out = Occlusion(dnn, "fc", 1, window=2, stride=2).backprop(torch.ones(3, 6, 6),
                                                              preprocessed=True)
    expected = np.zeros((6, 6), np.float32)
    expected[2:4, 2:4] = 3.0
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("window, stride", [(3, 1), ((2, 3), (2, 2)), (4, 3)])
def test_occlusion_known_answer_overlapping(window, stride):
    """Unit = sum over a 2x2 region; fill 0.5 below every pixel: each window's drop is
    sum over (window & region) of (x - 0.5), each pixel averages its windows' drops (by
    hand, with loops; stride 3 with window 4 on 9 pixels clips the last window)."""
    size, rows, cols = 9, slice(3, 5), slice(4, 6)
    dnn = region_net(size, rows, cols)
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) + 1.0
    out = Occlusion(dnn, "fc", 1, window=window, stride=stride, fill=0.5).backprop(
        x, preprocessed=True)
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    region = np.zeros((size, size), bool)
    region[rows, cols] = True
    gain = (x.numpy() - 0.5).sum(0) * region
    total, count = np.zeros((size, size)), np.zeros((size, size))
    for y0 in range(0, sh * (math.ceil((size - wh) / sh) + 1), sh):
        for x0 in range(0, sw * (math.ceil((size - ww) / sw) + 1), sw):
            total[y0:y0 + wh, x0:x0 + ww] += gain[y0:y0 + wh, x0:x0 + ww].sum()
            count[y0:y0 + wh, x0:x0 + ww] += 1
    assert count.min() >= 1  # every pixel covered
    np.testing.assert_allclose(out, total / count, rtol=1e-5)
    touching = np.zeros((size, size), bool)  # pixels with a window that meets the region
    for (y, xx) in itertools.product(range(size), range(size)):
        touching[y, xx] = total[y, xx] > 0
    assert ((out > 0) == touching).all() and touching.sum() > region.sum()


# --------------------------------------------------------------------------- captum


@pytest.mark.parametrize("window, stride, fill, output", [
    (5, 4, 0.0, "map"),              # last window clipped at the border
    ((6, 4), (3, 2), 0.5, "map"),
    (4, 4, "mean", "map"),
    (5, 3, -0.25, "per_channel"),
])
@pytest.mark.parametrize("hidden", [False, True])
def test_occlusion_matches_captum(small, images, window, stride, fill, output, hidden):
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    layer, unit = ("conv2", 5) if hidden else ("fc", 3)
    ours = Occlusion(small, layer, unit, window=window, stride=stride, fill=fill,
                     output=output, batch_size=16).backprop(images, preprocessed=True)
    forward = ((lambda x: small.model[:4](x)[:, unit - 1].mean((1, 2))) if hidden
               else small.model)
    base = images.mean((2, 3), keepdim=True) if fill == "mean" else fill
    depth = 3 if output == "map" else 1
    with torch.no_grad():
        ref = captum_attr.Occlusion(forward).attribute(
            images, sliding_window_shapes=(depth, wh, ww), strides=(depth, sh, sw),
            baselines=base, target=None if hidden else unit - 1, perturbations_per_eval=32)
    if output == "map":
        assert torch.equal(ref[:, 0], ref[:, 2])
        ref = ref[:, 0]
    close(ours, ref)


# --------------------------------------------------------------------------- batching, units


@pytest.mark.parametrize("output", ["map", "per_channel"])
def test_occlusion_batch_equals_one_by_one(small, images, output):
    occ = Occlusion(small, "fc", [2, 5], window=6, stride=5, output=output, batch_size=7)
    both = occ.backprop(images, preprocessed=True)
    assert both.shape == (2, 2) + ((3,) if output == "per_channel" else ()) + (16, 16)
    for i, (j, unit) in itertools.product(range(2), enumerate([2, 5])):
        one = Occlusion(small, "fc", unit, window=6, stride=5, output=output).backprop(
            images[i], preprocessed=True)
        # drops are differences of O(1) float32 scores: ~1e-7 absolute rounding that depends
        # on how the occluded copies were batched
        np.testing.assert_allclose(both[i, j], one, rtol=1e-5,
                                   atol=max(1e-6 * np.abs(one).max(), 2e-7))


def test_occlusion_predicted_unit_is_resolved_on_the_clean_image(small, images):
    pred = small.model(images).argmax(1) + 1
    maps = Occlusion(small, "fc", "predicted", window=8, stride=8).backprop(
        images, preprocessed=True)
    for i in range(len(images)):
        one = Occlusion(small, "fc", int(pred[i]), window=8, stride=8).backprop(
            images[i], preprocessed=True)
        np.testing.assert_allclose(maps[i], one, rtol=1e-5, atol=1e-7)
    via_registry = saliency(small, images, method="occlusion", layer="fc", unit=None,
                            preprocessed=True, window=8, stride=8)
    np.testing.assert_array_equal(via_registry, maps)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 0}, "`window` must be a positive int"),
    ({"window": (3,)}, "`window` must be a positive int"),
    ({"window": (2, 2, 2)}, "`window` must be a positive int"),
    ({"window": 2.5}, "`window` must be a positive int"),
    ({"window": True}, "`window` must be a positive int"),
    ({"stride": -1}, "`stride` must be a positive int"),
    ({"stride": (1, 0)}, "`stride` must be a positive int"),
    ({"window": 4, "stride": 5}, "`stride` must not exceed `window`"),
    ({"window": (4, 2), "stride": 3}, "`stride` must not exceed `window`"),
    ({"fill": "zero"}, "`fill` must be a finite number"),
    ({"fill": float("nan")}, "`fill` must be a finite number"),
    ({"fill": None}, "`fill` must be a finite number"),
    ({"output": "sum"}, r"`output` must be one of \['map', 'per_channel'\]"),
])
def test_occlusion_bad_parameters(small, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Occlusion(small, "fc", 1, **kwargs)


def test_occlusion_call_errors(small, images):
    with pytest.raises(ValueError, match=r"`window` \(20, 20\) must fit in the input"):
        Occlusion(small, "fc", 1, window=20, stride=2).backprop(images, preprocessed=True)
    with pytest.raises(ValueError, match="`to_layer` must be None"):
        Occlusion(small, "fc", 1, window=4, stride=4).backprop(images, to_layer="conv2",
                                                               preprocessed=True)
    assert hook_dicts_empty(small.model)


@pytest.mark.parametrize("method", ["occlusion", "upsampled_activation"])
def test_no_trace_on_model_or_input(method):
    net = make_net().train()
    dnn = DNN(net, layers=LAYERS)
    x = torch.randn(2, 3, 16, 16)
    x0 = x.clone()
    params = {"window": 8, "stride": 4} if method == "occlusion" else {}
    saliency(dnn, x, method=method, layer="conv2", unit=2, preprocessed=True, **params)
    assert hook_dicts_empty(net) and all(m.training for m in net.modules())
    assert torch.equal(x, x0)


# --------------------------------------------------------------------------- upsampled activation


@pytest.mark.parametrize("layer, index", [("conv1", 1), ("relu2", 5)])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_upsampled_activation_by_hand(small, images, layer, index, mode):
    up = UpsampledActivation(small, layer, [1, 3], mode=mode).backprop(images,
                                                                      preprocessed=True)
    assert up.shape == (2, 2, 16, 16) and up.dtype == np.float32
    with torch.no_grad():
        act = small.model[:index](images)[:, [0, 2]]
    extra = {} if mode == "nearest" else {"align_corners": False}
    np.testing.assert_allclose(up, F.interpolate(act, size=(16, 16), mode=mode,
                                                 **extra).numpy(), rtol=1e-6, atol=1e-7)


def test_upsampled_activation_predicted_and_batch(small, images):
    with torch.no_grad():
        act = small.model[:5](images)
    pred = act.mean((2, 3)).argmax(1)
    up = UpsampledActivation(small, "relu2", "predicted", batch_size=1).backprop(
        images, preprocessed=True)
    expected = F.interpolate(act[torch.arange(2), pred][:, None], size=(16, 16),
                             mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(up, expected.numpy(), rtol=1e-6, atol=1e-7)
    one = UpsampledActivation(small, "relu2", int(pred[1]) + 1).backprop(images[1],
                                                                         preprocessed=True)
    np.testing.assert_array_equal(up[1], one)


def test_upsampled_activation_errors(small, images):
    with pytest.raises(ValueError, match="`unit` must be a channel"):
        UpsampledActivation(small, "conv2", (1, 2, 2))
    with pytest.raises(ValueError, match="`unit` must be a channel"):
        UpsampledActivation(small).set_layer("conv2", [1, lambda out: out.sum((1, 2, 3))])
    with pytest.raises(ValueError, match="`mode` must be one of"):
        UpsampledActivation(small, mode="linear")
    with pytest.raises(ValueError, match="needs a target layer with spatial output"):
        UpsampledActivation(small, "fc", 1).backprop(images, preprocessed=True)
    with pytest.raises(ValueError, match=r"`unit` must be in 1\.\.6"):
        UpsampledActivation(small, "relu2", 7).backprop(images, preprocessed=True)
    with pytest.raises(ValueError, match="`to_layer` must be None"):
        UpsampledActivation(small, "conv2", 1).backprop(images, to_layer="conv1",
                                                        preprocessed=True)
    assert hook_dicts_empty(small.model)


def test_units_of_one_image_share_the_occluded_passes(monkeypatch):
    """Several units (and 'predicted') of the same image: the same maps as one unit at a
    time, from one set of occluded forward passes instead of one per unit."""
    from dnnbrain.dnn.models import ShapeNet
    dnn = ShapeNet()
    x = torch.rand(3, 3, 64, 64)
    units = [1, 3, "predicted", 4]
    occ = Occlusion(dnn, "fc2", units, batch_size=7, window=16, stride=16)
    calls = []
    real = occ.layer_output
    monkeypatch.setattr(occ, "layer_output", lambda t, layer: calls.append(len(t)) or
                        real(t, layer))
    together = occ.backprop(x, preprocessed=True)
    assert together.shape == (3, 4, 64, 64)
    assert sum(calls) <= 3 * 16 + 3 * 4 * 2  # occluded rows once per image, not per unit
    for k, u in enumerate(units):
        alone = Occlusion(dnn, "fc2", u, batch_size=5, window=16, stride=16)
        assert np.allclose(together[:, k], alone.backprop(x, preprocessed=True), atol=1e-5)


def test_default_passes_grow_with_threads_within_the_memory_cap(small, images, monkeypatch):
    """Without ``batch_size`` the occluded copies go through passes of 128 rows per CPU
    thread, capped by FORWARD_BYTES (two of the largest layer outputs and two inputs per
    row); the maps equal small passes' and captum's, and no probe hook is left behind."""
    from dnnbrain.dnn.algo import passes
    sizes = []
    real = Occlusion.layer_output

    def counted(self, t, layer):
        sizes.append(len(t))
        return real(self, t, layer)

    monkeypatch.setattr(Occlusion, "layer_output", counted)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    occ = Occlusion(small, "fc", 3, window=2, stride=1)      # 225 windows per image
    default = occ.backprop(images, preprocessed=True)
    assert max(sizes) == 256 and hook_dicts_empty(small.model)
    # the cap: conv1's output (4 x 16 x 16 float32) is the largest; 40 rows fit
    per_row = 2 * 4 * 16 * 16 * 4 + 2 * 3 * 16 * 16 * 4
    monkeypatch.setattr(passes, "FORWARD_BYTES", 40 * per_row + 1)
    sizes.clear()
    capped = Occlusion(small, "fc", 3, window=2, stride=1).backprop(images, preprocessed=True)
    assert max(sizes) == 40
    sizes.clear()
    small_passes = Occlusion(small, "fc", 3, window=2, stride=1, batch_size=50).backprop(
        images, preprocessed=True)
    assert max(sizes) == 50
    np.testing.assert_allclose(default, small_passes, rtol=0, atol=1e-6)
    np.testing.assert_allclose(capped, small_passes, rtol=0, atol=1e-6)
    with torch.no_grad():
        ref = captum_attr.Occlusion(small.model).attribute(
            images, sliding_window_shapes=(3, 2, 2), strides=(3, 1, 1), baselines=0.0,
            target=2, perturbations_per_eval=50)[:, 0]
    close(default, ref, rtol=1e-4)   # 2 x 2 windows: drops of 1e-4, float32 cancellation
