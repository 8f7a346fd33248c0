"""Integrated Gradients, Blur IG, Guided IG: known answers, completeness, captum, hygiene."""
import copy

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from dnnbrain.dnn.algo import SmoothGrad, get_method
from dnnbrain.dnn.algo.guided_ig import GuidedIG
from dnnbrain.dnn.algo.integrated import BlurIG, IntegratedGradients, approximation, gaussian_blur
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN

from .conftest import hook_dicts_empty

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
METHODS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
           "gausslegendre"]


def conv_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    return DNN(net, layers={"conv1": "0", "relu1": "1", "conv2": "2", "relu2": "3",
                            "fc": "6"}, test_transform=ImageTransform(16, MEAN, STD))


def linear_net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    return DNN(net, layers={"fc": "1"}, test_transform=ImageTransform(16, MEAN, STD))


def pixels(n=2, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def normalize(p):
    return (p - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def score(dnn, x, layer, unit):
    """The unit's value computed by hand (independent of the engine)."""
    net = dnn.model
    with torch.no_grad():
        if layer == "fc":
            return net(x)[:, unit - 1]
        return net[:3](x)[:, unit - 1].mean((1, 2))


@pytest.fixture(scope="module")
def dnn():
    return conv_net()


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("method", METHODS)
def test_rules_nodes_match_captum_and_weights_sum_to_one(method):
    from captum.attr._utils.approximation_methods import approximation_parameters
    sizes, alphas = approximation_parameters(method)
    a, w = approximation(method, 7)
    assert np.allclose(a, alphas(7), atol=1e-7)
    assert np.isclose(w.sum(), 1.0)
    factor = 6 / 7 if method == "riemann_trapezoid" else 1.0  # captum's sum to 1 - 1/n
    assert np.allclose(w * factor, sizes(7), atol=1e-12)


def test_rules_errors():
    with pytest.raises(ValueError, match="`rule`.*riemann_left"):
        approximation("simpson", 10)
    with pytest.raises(ValueError, match="`steps`"):
        approximation("riemann_left", 1)


# --------------------------------------------------------------------------- IG


@pytest.mark.parametrize("method", METHODS)
def test_ig_linear_model_known_answer(method):
    dnn = linear_net()
    w = dnn.model[1].weight[1].detach().view(3, 16, 16)
    p = pixels(2)
    x = normalize(p)
    for baseline, base_pixels in (("black", 0.0), ("white", 1.0)):
        ig = IntegratedGradients(dnn, "fc", 2, steps=5, rule=method, baseline=baseline)
        got = ig.backprop(p)
        expect = (x - normalize(torch.full_like(p, base_pixels))) * w
        assert np.allclose(got, expect.numpy(), rtol=1e-5, atol=1e-6)
    user = torch.randn(3, 16, 16)
    got = IntegratedGradients(dnn, "fc", 2, steps=3, rule=method,
                              baseline=user.numpy()).backprop(x, preprocessed=True)
    assert np.allclose(got, ((x - user) * w).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
@pytest.mark.parametrize("layer,unit", [("conv2", 3), ("fc", 2)])
def test_ig_completeness(dnn, method, layer, unit):
    p = pixels(2, seed=3)
    x = normalize(p)
    ig = IntegratedGradients(dnn, layer, unit, steps=256, rule=method, batch_size=256)
    total = ig.backprop(p).reshape(2, -1).sum(1)
    change = (score(dnn, x, layer, unit) - score(dnn, normalize(torch.zeros_like(p)),
                                                 layer, unit)).numpy()
    assert np.all(np.abs(change) > 1e-3)
    assert np.allclose(total, change, rtol=0.01, atol=0)
    delta = ig.convergence_delta(p)
    assert delta.shape == (2,)
    assert np.allclose(delta, total - change, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer,unit", [("conv2", 2), ("fc", 3)])
def test_ig_matches_captum(dnn, method, layer, unit):
    from captum.attr import IntegratedGradients as CaptumIG
    x = normalize(pixels(2, seed=5))
    black = normalize(torch.zeros_like(x))
    # the unit as a scalar function of the input: plain IG in captum (a hidden channel is
    # its mean over space, as our reduce='mean'), so both integrate the same gradient
    ref = CaptumIG(lambda inp: score_fn(dnn, inp, layer, unit)).attribute(
        x, baselines=black, n_steps=12, method=method, internal_batch_size=7)
    if method == "riemann_trapezoid":
        ref = ref * 12 / 11  # captum's trapezoid weights sum to 11/12, ours to 1
    got = IntegratedGradients(dnn, layer, unit, steps=12, rule=method,
                              batch_size=10).backprop(x, preprocessed=True)
    # float32 sums of the same 12 gradients in a different order: ~1e-7 relative error
    scale = float(ref.abs().max())
    assert np.allclose(got, ref.detach().numpy(), atol=1e-5 * scale, rtol=0)


def score_fn(dnn, inp, layer, unit):
    net = dnn.model
    return net(inp)[:, unit - 1] if layer == "fc" else net[:3](inp)[:, unit - 1].mean((1, 2))


@pytest.mark.parametrize("kwargs", [dict(baseline="uniform", seed=4),
                                    dict(baseline="blur", blur_sigma=2.0),
                                    dict(baseline="white", rule="gausslegendre")])
def test_ig_batch_equals_one_by_one(dnn, kwargs):
    p = pixels(3, seed=7)
    ig = IntegratedGradients(dnn, "fc", [1, 3], steps=8, batch_size=5, **kwargs)
    batch = ig.backprop(p)
    assert batch.shape == (3, 2, 3, 16, 16) and batch.dtype == np.float32
    for i in range(3):
        assert np.allclose(batch[i], ig.backprop(p[i]), atol=1e-6)


def test_ig_uniform_seed(dnn):
    p = pixels(1)
    a = IntegratedGradients(dnn, "fc", 1, steps=4, baseline="uniform", seed=1).backprop(p)
    b = IntegratedGradients(dnn, "fc", 1, steps=4, baseline="uniform", seed=1).backprop(p)
    c = IntegratedGradients(dnn, "fc", 1, steps=4, baseline="uniform", seed=2).backprop(p)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_ig_blur_and_per_image_baselines():
    dnn = linear_net()
    w = dnn.model[1].weight[0].detach().view(3, 16, 16)
    p = pixels(2, seed=2)
    got = IntegratedGradients(dnn, "fc", 1, steps=3, baseline="blur",
                              blur_sigma=1.5).backprop(p)
    blurred = ndimage.gaussian_filter(p.numpy(), sigma=(0, 0, 1.5, 1.5), mode="constant")
    expect = (normalize(p) - normalize(torch.from_numpy(blurred))) * w
    assert np.allclose(got, expect.numpy(), rtol=1e-4, atol=1e-5)
    bases = torch.randn(2, 3, 16, 16)
    ig = IntegratedGradients(dnn, "fc", 1, steps=3, baseline=bases)
    got = ig.backprop(p)
    for i in range(2):
        one = IntegratedGradients(dnn, "fc", 1, steps=3, baseline=bases[i]).backprop(p[i])
        assert np.allclose(got[i], one, atol=1e-6)
    with pytest.raises(ValueError, match="`baseline` batch has 2 images"):
        ig.backprop(pixels(3))
    with pytest.raises(ValueError, match="backprop_smooth"):
        ig.backprop_smooth(p, n_iter=2, seed=0)
    with pytest.raises(ValueError, match="`baseline` must have the input's shape"):
        IntegratedGradients(dnn, "fc", 1, baseline=torch.zeros(3, 8, 8)).backprop(p)


def test_ig_predicted_unit_is_fixed_along_the_path(dnn):
    x = normalize(pixels(2, seed=9))
    units = dnn(x).argmax(1) + 1
    ig = IntegratedGradients(dnn, "fc", "predicted", steps=6)
    got = ig.backprop(x, preprocessed=True)
    for i in range(2):
        ig.set_layer("fc", int(units[i]))
        assert np.allclose(got[i], ig.backprop(x[i], preprocessed=True), atol=1e-6)


def test_ig_guided_base_and_smoothgrad(dnn):
    p = pixels(2)
    guided = IntegratedGradients(dnn, "conv2", 1, steps=4, base="guided").backprop(p)
    plain = IntegratedGradients(dnn, "conv2", 1, steps=4).backprop(p)
    assert np.isfinite(guided).all() and not np.allclose(guided, plain)
    ig = IntegratedGradients(dnn, "fc", 2, steps=4, batch_size=8)
    smooth = ig.backprop_smooth(p, n_iter=3, seed=0)
    assert smooth.shape == (2, 3, 16, 16) and np.isfinite(smooth).all()
    assert np.array_equal(smooth, ig.backprop_smooth(p, n_iter=3, seed=0))
    assert np.allclose(ig.backprop_smooth(p, n_iter=2, sigma_multiplier=0.0, seed=0),
                       ig.backprop(p), atol=1e-6)
    wrapped = SmoothGrad(dnn, "fc", 2, base="ig", n_samples=3, seed=0, steps=4,
                         sigma_multiplier=0.1).backprop(p)
    assert np.allclose(wrapped, ig.backprop_smooth(p, 3, 0.1, seed=0), atol=1e-6)


def test_registry_and_hygiene(dnn):
    model = dnn.model
    model.train()
    state = copy.deepcopy(model.state_dict())
    x = normalize(pixels(2))
    x0 = x.clone()
    for name, cls, kw in (("ig", IntegratedGradients, dict(steps=3)),
                          ("blur_ig", BlurIG, dict(steps=3)),
                          ("guided_ig", GuidedIG, dict(steps=3))):
        method = get_method(name)(dnn, "fc", 1, **kw)
        assert type(method) is cls
        method.backprop(x, preprocessed=True)
        method.convergence_delta(x, preprocessed=True)
        with pytest.raises(ValueError, match="`to_layer` must be None"):
            method.backprop(x, to_layer="conv2", preprocessed=True)
    assert hook_dicts_empty(model) and model.training
    assert all(m.training for m in model.modules())
    assert torch.equal(x, x0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


@pytest.mark.parametrize("cls,kwargs,match", [
    (IntegratedGradients, dict(steps=0), "`steps`"),
    (IntegratedGradients, dict(rule="simpson"), "`rule`"),
    (IntegratedGradients, dict(baseline="grey"), "`baseline` must be one of"),
    (IntegratedGradients, dict(baseline=np.zeros((16, 16))), "`baseline` as an array"),
    (IntegratedGradients, dict(blur_sigma=0), "`blur_sigma`"),
    (IntegratedGradients, dict(seed="a"), "`seed`"),
    (IntegratedGradients, dict(base="deconv"), "`base`"),
    (BlurIG, dict(max_sigma=-1), "`max_sigma`"),
    (BlurIG, dict(steps=2.5), "`steps`"),
    (BlurIG, dict(grad_step=0), "`grad_step`"),
    (BlurIG, dict(sqrt="yes"), "`sqrt`"),
    (GuidedIG, dict(fraction=0), "`fraction`"),
    (GuidedIG, dict(max_dist=1.5), "`max_dist`"),
    (GuidedIG, dict(steps=-3), "`steps`"),
])
def test_bad_parameters(dnn, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(dnn, "fc", 1, **kwargs)


# --------------------------------------------------------------------------- Blur IG


@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0, 2.7, 40.0])
def test_gaussian_blur_matches_scipy(sigma):
    x = torch.rand(2, 3, 9, 13, dtype=torch.float64)
    got = gaussian_blur(x, [sigma, sigma / 2])
    for i, s in enumerate([sigma, sigma / 2]):
        ref = ndimage.gaussian_filter(x[i].numpy(), sigma=(0, s, s), mode="constant")
        assert np.allclose(got[i].numpy(), ref, atol=1e-12)


def blur_ig_reference(dnn, p, unit, max_sigma, steps, grad_step):
    """Blur IG written plainly (one image, scipy blur in pixel space, autograd)."""
    sigmas = np.arange(steps + 1) * max_sigma / steps
    total = np.zeros((3, 16, 16))

    def blur(s):
        return ndimage.gaussian_filter(p.numpy().astype(np.float64), (0, s, s), mode="constant")

    for i in range(steps):
        xs = normalize(torch.from_numpy(blur(sigmas[i])).float()[None])
        dx = (normalize(torch.from_numpy(blur(sigmas[i] + grad_step)).float()[None])
              - xs)[0].double().numpy() / grad_step
        xs.requires_grad_(True)
        (g,) = torch.autograd.grad(dnn.model(xs)[0, unit - 1], xs)
        total += (sigmas[i + 1] - sigmas[i]) * dx * g[0].double().numpy()
    return -total


def test_blur_ig_matches_reference_and_batches(dnn):
    p = pixels(2, seed=11)
    blur = BlurIG(dnn, "fc", 2, max_sigma=6.0, steps=10, batch_size=7)
    got = blur.backprop(p)
    for i in range(2):
        ref = blur_ig_reference(dnn, p[i], 2, 6.0, 10, 0.01)
        assert np.allclose(got[i], ref, atol=2e-3 * np.abs(ref).max())
        assert np.allclose(got[i], blur.backprop(p[i]), atol=1e-6)


def test_blur_ig_completeness(dnn):
    p = pixels(2, seed=12)
    blur = BlurIG(dnn, "conv2", 4, max_sigma=8.0, steps=128, batch_size=128)
    maps = blur.backprop(p)
    assert np.isfinite(maps).all()
    total = maps.reshape(2, -1).sum(1)
    blurred = ndimage.gaussian_filter(p.numpy(), sigma=(0, 0, 8.0, 8.0), mode="constant")
    change = (score(dnn, normalize(p), "conv2", 4)
              - score(dnn, normalize(torch.from_numpy(blurred)), "conv2", 4)).numpy()
    assert np.allclose(total, change, rtol=0.03, atol=0)
    assert np.allclose(blur.convergence_delta(p), total - change, atol=1e-4)
    sq = BlurIG(dnn, "conv2", 4, max_sigma=8.0, steps=6, sqrt=True)
    assert np.allclose(sq.sigmas[-1], np.sqrt(8.0)) and np.isfinite(sq.backprop(p)).all()


# --------------------------------------------------------------------------- Guided IG


def guided_ig_reference(grad_fn, x, base, steps, fraction, max_dist):
    """Guided IG for one input, feature by feature in numpy float64 (PAIR's algorithm)."""
    x, base = x.ravel().astype(np.float64), base.ravel().astype(np.float64)
    cur, attr = base.copy(), np.zeros_like(x)
    diff, l1_total = x - base, np.abs(x - base).sum()
    for step in range(steps):
        g = grad_fn(cur)
        alpha = (step + 1) / steps
        lo, hi = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_lo, x_hi = base + diff * lo, base + diff * hi
        target = l1_total * (1 - alpha)
        while True:
            old = cur.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                where = np.where(diff != 0, (cur - base) / diff, hi)
            cur[where < lo] = x_lo[where < lo]
            l1 = np.abs(cur - x).sum()
            if np.isclose(l1, target, rtol=1e-9, atol=1e-9):
                attr += (cur - old) * g
                break
            ga = np.where(cur == x_hi, np.inf, np.abs(g))
            pick = (ga <= np.quantile(ga, fraction, method="lower")) & np.isfinite(ga)
            room = (np.abs(cur - x_hi) * pick).sum()
            gamma = (l1 - target) / room if room > 0 else np.inf
            cur[pick] = x_hi[pick] if gamma > 1 else (cur + (x_hi - cur) * gamma)[pick]
            attr += (cur - old) * g
            if gamma <= 1:
                break
    return attr


@pytest.mark.parametrize("max_dist", [0.1, 1.0])
def test_guided_ig_matches_reference(dnn, max_dist):
    # PAIR's algorithm on pixels, as PAIR is called (the model function normalises): the
    # test net's normalisation differs by channel, so this also pins the pixel space
    p = pixels(2, seed=13)
    gig = GuidedIG(dnn, "fc", 1, steps=8, fraction=0.25, max_dist=max_dist, batch_size=2)
    got = gig.backprop(normalize(p), preprocessed=True)
    for i in range(2):
        def grad_fn(v):
            t = torch.tensor(v, dtype=torch.float32).view(1, 3, 16, 16).requires_grad_(True)
            return torch.autograd.grad(dnn.model(normalize(t))[0, 0], t)[0].double().numpy().ravel()
        ref = guided_ig_reference(grad_fn, p[i].numpy(), np.zeros((3, 16, 16)), 8, 0.25,
                                  max_dist)
        assert np.allclose(got[i].ravel(), ref, atol=1e-5 * np.abs(ref).max())
        one = GuidedIG(dnn, "fc", 1, steps=8, max_dist=max_dist).backprop(normalize(p[i]),
                                                                         preprocessed=True)
        assert np.allclose(got[i], one, atol=1e-6)


def test_guided_ig_batch_of_eight_equals_eight_single_calls(dnn):
    # every image walks its own path: the batch shares the passes, not the bookkeeping
    p = pixels(8, seed=16)
    gig = GuidedIG(dnn, "fc", 2, steps=8, max_dist=0.05, batch_size=8)
    maps = gig.backprop(p)
    ones = np.stack([gig.backprop(p[i]) for i in range(8)])
    assert np.abs(maps).max() > 0
    assert np.allclose(maps, ones, rtol=0, atol=1e-6 * np.abs(maps).max())


def test_guided_ig_without_deviation_is_left_riemann_ig(dnn):
    p = pixels(2, seed=14)
    gig = GuidedIG(dnn, "conv2", 2, steps=10, max_dist=0.0).backprop(p)
    ig = IntegratedGradients(dnn, "conv2", 2, steps=10, rule="riemann_left").backprop(p)
    assert np.allclose(gig, ig, atol=1e-5 * np.abs(ig).max())


@pytest.mark.parametrize("layer,unit", [("conv2", 1), ("fc", 3)])
def test_guided_ig_completeness(dnn, layer, unit):
    # the path ends at the input, so the sum approaches f(x) - f(baseline) as steps grow;
    # each step is a left Riemann sum over jumps of single features, hence a few % at 128
    p = pixels(2, seed=15)
    gig = GuidedIG(dnn, layer, unit, steps=128, max_dist=0.02, batch_size=2)
    maps = gig.backprop(p)
    assert np.isfinite(maps).all()
    total = maps.reshape(2, -1).sum(1)
    change = (score(dnn, normalize(p), layer, unit)
              - score(dnn, normalize(torch.zeros_like(p)), layer, unit)).numpy()
    assert np.allclose(total, change, rtol=0.03, atol=0)


# --------------------------------------------------------------------------- zoo network


def test_path_methods_on_the_demo_network():
    from dnnbrain.dnn.models import ShapeNet
    torch.manual_seed(0)
    dnn = ShapeNet(pretrained=False)
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
              for i in range(2)]
    ig = IntegratedGradients(dnn, "fc2", "predicted", steps=32, rule="gausslegendre",
                             batch_size=64)
    maps = ig.backprop(images)
    x = torch.stack([dnn.test_transform(im) for im in images])
    black = dnn.test_transform.normalize(torch.zeros_like(x))
    with torch.no_grad():
        unit = dnn(x).argmax(1)
        change = (dnn(x) - dnn(black)).gather(1, unit[:, None])[:, 0].numpy()
    assert maps.shape == (2, 3, 64, 64)
    assert np.allclose(maps.reshape(2, -1).sum(1), change, rtol=0.01, atol=1e-4)
    for method in (BlurIG(dnn, "conv3", 5, steps=8, max_sigma=10.0),
                   GuidedIG(dnn, "conv3", 5, steps=8)):
        out = method.backprop(images)
        assert out.shape == (2, 3, 64, 64) and np.isfinite(out).all()
        assert np.abs(out).max() > 0
