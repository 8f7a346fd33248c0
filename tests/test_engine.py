"""The saliency engine: known answers, targets, batching, early exit, ReLU rules, hygiene."""
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnbrain.dnn.algo import (DeconvSaliencyImage, GradientXInputImage, GuidedSaliencyImage,
                               VanillaSaliencyImage)
from dnnbrain.dnn.algo.integrated import IntegratedGradients
from dnnbrain.dnn.algo.relu import DeconvReLU, GuidedReLU
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN

from .conftest import hook_dicts_empty


class Linear2(nn.Module):
    """out = W2 relu(W1 x): gradients are hand-computable."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3 * 2 * 2, 2, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.arange(24.0).view(2, 12) - 12)
            self.fc2.weight.copy_(torch.tensor([[1.0, 2.0], [-3.0, 4.0]]))

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


def tiny_dnn(model=None):
    model = model or Linear2()
    return DNN(model, layers={"fc1": "fc1", "relu": "relu", "fc2": "fc2"},
               test_transform=ImageTransform(None))


def test_vanilla_known_answer():
    dnn = tiny_dnn()
    x = torch.ones(1, 3, 2, 2)
    # fc1 pre-activations: row0 = sum(-12..-1) < 0 (dead), row1 = sum(0..11) > 0
    got = VanillaSaliencyImage(dnn).set_layer("fc2", 2).backprop(x, preprocessed=True)
    expect = (4.0 * (torch.arange(24.0).view(2, 12)[1] - 12)).view(3, 2, 2).numpy()
    assert got.shape == (1, 3, 2, 2) and got.dtype == np.float32
    assert np.allclose(got[0], expect)
    # fc1 unit 2 directly: gradient is its weight row
    got = VanillaSaliencyImage(dnn, "fc1", 2).backprop(x[0], preprocessed=True)
    assert np.allclose(got, (torch.arange(12.0, 24.0) - 12).view(3, 2, 2).numpy())


def test_gradient_x_input_and_to_layer():
    dnn = tiny_dnn()
    x = torch.rand(3, 3, 2, 2)
    g = VanillaSaliencyImage(dnn, "fc2", 1).backprop(x, preprocessed=True)
    gx = GradientXInputImage(dnn, "fc2", 1).backprop(x, preprocessed=True)
    assert np.allclose(gx, g * x.numpy(), atol=1e-6)
    at_relu = VanillaSaliencyImage(dnn, "fc2", 2).backprop(x, to_layer="relu", preprocessed=True)
    h = dnn.model.fc1(x.flatten(1))
    assert np.allclose(at_relu, np.where(h.detach().numpy() > 0, [2.0, 4.0], 0.0))
    with pytest.raises(ValueError, match="`to_layer` 'fc2' does not run before"):
        VanillaSaliencyImage(dnn, "fc1", 1).backprop(x, to_layer="fc2", preprocessed=True)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture
def conv_dnn():
    return DNN(ConvNet(), layers={"conv": "conv", "relu": "relu", "fc": "fc"},
               test_transform=ImageTransform(6))


def manual_grad(model, x, score_fn):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score_fn(model, xg).sum(), xg)
    return g.numpy()


def test_unit_forms(conv_dnn):
    m, x = conv_dnn.model, torch.randn(2, 3, 6, 6)
    sal = VanillaSaliencyImage(conv_dnn)
    cases = [
        (("relu", 3, "mean"), lambda m, v: m.relu(m.conv(v))[:, 2].mean((1, 2))),
        (("relu", 3, "max"), lambda m, v: m.relu(m.conv(v))[:, 2].amax((1, 2))),
        (("conv", (2, 3, 5), "mean"), lambda m, v: m.conv(v)[:, 1, 2, 4]),
        (("conv", lambda out: out[:, 0].sum((1, 2)), "mean"),
         lambda m, v: m.conv(v)[:, 0].sum((1, 2))),
    ]
    for (layer, unit, reduce), fn in cases:
        got = sal.set_layer(layer, unit, reduce).backprop(x, preprocessed=True)
        assert np.allclose(got, manual_grad(m, x, fn), atol=1e-6), (layer, unit, reduce)
    pred = m(x).argmax(1)
    got = sal.set_layer("fc", "predicted").backprop(x, preprocessed=True)
    exp = manual_grad(m, x, lambda m, v: m(v).gather(1, pred[:, None])[:, 0])
    assert np.allclose(got, exp, atol=1e-6)


def test_many_units_and_batch_equals_one_by_one(conv_dnn):
    x = torch.randn(5, 3, 6, 6)
    sal = GuidedSaliencyImage(conv_dnn, batch_size=3).set_layer("fc", [1, 3])
    many = sal.backprop(x, preprocessed=True)
    assert many.shape == (5, 2, 3, 6, 6)
    for i in range(5):
        for k, unit in enumerate([1, 3]):
            one = GuidedSaliencyImage(conv_dnn, "fc", unit).backprop(x[i], preprocessed=True)
            assert one.shape == (3, 6, 6)
            assert np.allclose(many[i, k], one, atol=1e-6)
    assert sal.get_layer() == ("fc", [1, 3])


def test_bad_targets_say_what_is_valid(conv_dnn):
    sal = VanillaSaliencyImage(conv_dnn)
    with pytest.raises(ValueError, match=r"`unit` must be in 1..3 \(units count from 1\), got 0"):
        sal.set_layer("fc", 0)
    with pytest.raises(ValueError, match=r"`unit` must be in 1..3 .* got 4"):
        sal.set_layer("fc", 4)
    with pytest.raises(ValueError, match=r"`layer` must be one of \['conv', 'relu', 'fc'\]"):
        sal.set_layer("conv6", 1)
    with pytest.raises(ValueError, match=r"`unit\[1\]` must be in 1..4"):
        sal.set_layer("conv", [1, 9])
    with pytest.raises(TypeError, match="`unit` must be an int"):
        sal.set_layer("conv", "first")
    with pytest.raises(ValueError, match="`reduce` must be one of"):
        sal.set_layer("conv", 1, reduce="median")
    sal.set_layer("relu", 9)  # size unknown statically: checked at run time
    with pytest.raises(ValueError, match=r"1..4 for layer 'relu'"):
        sal.backprop(torch.zeros(3, 6, 6), preprocessed=True)
    with pytest.raises(ValueError, match="row 1..6, col 1..6"):
        sal.set_layer("conv", (1, 7, 1)).backprop(torch.zeros(3, 6, 6), preprocessed=True)
    with pytest.raises(ValueError, match="set_layer"):
        VanillaSaliencyImage(conv_dnn).backprop(torch.zeros(3, 6, 6))


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("a layer after the target ran")


def test_forward_stops_at_target_layer():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), Boom())
    dnn = DNN(model, layers={"conv": "0", "relu": "1", "boom": "2"},
              test_transform=ImageTransform(None))
    for cls in (VanillaSaliencyImage, GuidedSaliencyImage):
        out = cls(dnn, "relu", 2).backprop(torch.randn(2, 3, 5, 5), preprocessed=True)
        assert np.isfinite(out).all() and np.abs(out).sum() > 0
    assert VanillaSaliencyImage(dnn, "conv", 1).activation(torch.randn(2, 3, 5, 5), [1]).shape == (2,)


class AllReLUs(nn.Module):
    """Every way a ReLU runs: module, in-place module, a module called twice, F.relu,
    torch.relu, Tensor.relu. With ``rule`` set, each is replaced by hand (the reference)."""

    def __init__(self, rule=None):
        super().__init__()
        torch.manual_seed(3)
        self.rule = rule
        self.c1, self.c2, self.c3 = (nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1),
                                     nn.Conv2d(6, 6, 3, padding=1))
        self.relu = nn.ReLU()
        self.relu_inplace = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6 * 16, 5)

    def r(self, x, how):
        return self.rule.apply(x) if self.rule else how(x)

    def forward(self, x):
        x = self.r(self.c1(x), self.relu)
        x = self.r(self.c2(x), self.relu_inplace) + x
        x = self.r(x, self.relu)                       # the same module again
        x = self.r(self.c3(x), F.relu)
        x = self.r(x - 0.1, torch.relu)
        x = self.r(F.max_pool2d(x, 2), lambda t: t.relu())
        return self.fc(self.r(x.flatten(1) - 0.05, lambda t: F.relu(t, inplace=True)))


@pytest.mark.parametrize("cls,rule", [(GuidedSaliencyImage, GuidedReLU),
                                      (DeconvSaliencyImage, DeconvReLU)])
@pytest.mark.parametrize("target", [("fc", 2), ("c3", 4)])
def test_relu_rules_reach_every_relu(cls, rule, target):
    layers = {"c1": "c1", "c3": "c3", "fc": "fc"}
    dnn = DNN(AllReLUs(), layers=layers, test_transform=ImageTransform(None))
    ref = DNN(AllReLUs(rule), layers=layers, test_transform=ImageTransform(None))
    x = torch.randn(3, 3, 8, 8)
    got = cls(dnn, *target).backprop(x, preprocessed=True)
    expect = VanillaSaliencyImage(ref, *target).backprop(x, preprocessed=True)
    plain = VanillaSaliencyImage(dnn, *target).backprop(x, preprocessed=True)
    scale = np.abs(expect).max()
    assert scale > 0 and np.abs(got - expect).max() <= 1e-6 * scale
    assert np.abs(got - plain).max() > 1e-3 * scale  # the rule really changed something


def test_no_trace_on_model_or_input(conv_dnn):
    model = conv_dnn.model
    model.train()
    model.fc.weight.requires_grad_(False)
    state = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    x = torch.randn(2, 3, 6, 6)
    x0 = x.clone()
    for cls in (VanillaSaliencyImage, GuidedSaliencyImage, GradientXInputImage):
        sal = cls(conv_dnn, "fc", [1, 2])
        sal.backprop(x, preprocessed=True)
        sal.backprop_smooth(x, 3, seed=1, preprocessed=True)
        sal.backprop(x, to_layer="relu", preprocessed=True)
        with pytest.raises(ValueError):
            sal.set_layer("relu", 99).backprop(x, preprocessed=True)  # error mid-call
        with pytest.raises(ValueError):
            cls(conv_dnn, "conv", 1).backprop(x, to_layer="fc", preprocessed=True)
    assert hook_dicts_empty(model)
    assert [m.training for m in model.modules()] == flags
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(x, x0) and not x.requires_grad


def test_works_under_no_grad(conv_dnn):
    with torch.no_grad():
        out = VanillaSaliencyImage(conv_dnn, "fc", 1).backprop(torch.randn(3, 6, 6),
                                                               preprocessed=True)
        assert not torch.is_grad_enabled()
    assert np.abs(out).sum() > 0


def test_smoothgrad_seeded_and_exact_limits(conv_dnn):
    x = torch.randn(3, 3, 6, 6)
    x0 = x.clone()
    sal = VanillaSaliencyImage(conv_dnn, "fc", 2, batch_size=4)
    a = sal.backprop_smooth(x, 6, 0.2, seed=7, preprocessed=True)
    b = sal.backprop_smooth(x, 6, 0.2, seed=7, preprocessed=True)
    c = sal.backprop_smooth(x, 6, 0.2, seed=8, preprocessed=True)
    assert np.array_equal(a, b) and not np.allclose(a, c) and torch.equal(x, x0)
    for i in range(3):  # batch == one by one (noise does not depend on the batch)
        one = sal.backprop_smooth(x[i], 6, 0.2, seed=7, preprocessed=True)
        assert np.allclose(one, a[i], atol=1e-6)
    plain = sal.backprop(x, preprocessed=True)
    assert np.allclose(sal.backprop_smooth(x, 4, 0.0, seed=0, preprocessed=True), plain, atol=1e-6)
    sq = sal.backprop_smooth(x, 4, 0.0, seed=0, mode="squared", preprocessed=True)
    assert np.allclose(sq, plain ** 2, atol=1e-6)
    var = sal.backprop_smooth(x, 4, 0.0, seed=0, mode="vargrad", preprocessed=True)
    assert np.allclose(var, 0, atol=1e-9)
    # by hand: mean of gradients at x + sigma * noise, with the same seeded noise
    noise = torch.randn((6, 3, 6, 6), generator=torch.Generator().manual_seed(7))
    span = (x[0].max() - x[0].min()) * 0.2
    hand = np.mean([sal.backprop(x[0] + span * n, preprocessed=True) for n in noise], 0)
    assert np.allclose(a[0], hand, atol=1e-6)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        sal.backprop_smooth(x, 2, mode="median", preprocessed=True)
    with pytest.raises(ValueError, match="`n_iter` must be a positive int"):
        sal.backprop_smooth(x, 0, preprocessed=True)


@pytest.mark.cuda
def test_runs_on_cuda(conv_dnn):
    dnn = DNN(copy.deepcopy(conv_dnn.model).cuda(), layers={"fc": "fc"},
              test_transform=ImageTransform(6))
    x = torch.randn(2, 3, 6, 6)
    gpu = GuidedSaliencyImage(dnn, "fc", 1).backprop(x, preprocessed=True)
    cpu = GuidedSaliencyImage(conv_dnn, "fc", 1).backprop(x, preprocessed=True)
    assert isinstance(gpu, np.ndarray) and np.allclose(gpu, cpu, atol=1e-5)


def test_smoothgrad_predicted_is_fixed_on_the_clean_image(conv_dnn):
    x = torch.randn(2, 3, 6, 6)
    pred = conv_dnn.model(x).argmax(1) + 1
    sal = VanillaSaliencyImage(conv_dnn, "fc", "predicted")
    got = sal.backprop_smooth(x, 5, 2.0, seed=3, preprocessed=True)  # very noisy copies
    for i in range(2):
        fixed = VanillaSaliencyImage(conv_dnn, "fc", int(pred[i]))
        assert np.allclose(got[i], fixed.backprop_smooth(x[i], 5, 2.0, seed=3,
                                                         preprocessed=True), atol=1e-6)


# ------------------------------------------------------------------ a target called twice
class Counter(nn.Module):
    """Identity that counts its calls (shows what ran past the target)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def forward(self, x):
        self.n += 1
        return x


class Twice(nn.Module):
    """z = W0 x; a = lin(z); b = lin(a); out = head(b): ``lin`` runs twice."""

    W0 = torch.tensor([[1., 0., -1., 2., 0., 1., 0., 0., 1., -2., 0., 1.],
                       [0., 1., 1., 0., -1., 0., 2., 1., 0., 0., 1., -1.]])
    L = torch.tensor([[1., 2.], [-1., 1.]])
    H = torch.tensor([[1., 0.], [2., -1.]])

    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(12, 2, bias=False)
        self.lin, self.head = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
        self.after = Counter()
        with torch.no_grad():
            for m, w in ((self.fc0, self.W0), (self.lin, self.L), (self.head, self.H)):
                m.weight.copy_(w)

    def forward(self, x):
        return self.after(self.head(self.lin(self.lin(self.fc0(x.flatten(1))))))


def twice_dnn():
    return DNN(Twice(), layers={"fc0": "fc0", "lin": "lin", "head": "head", "after": "after"},
               test_transform=ImageTransform(None))


def flat(a):
    return np.asarray(a).reshape(len(a), -1)


def test_target_called_twice_explains_the_chosen_call():
    dnn, x = twice_dnn(), torch.randn(3, 3, 2, 2)
    W0, L = Twice.W0, Twice.L
    first = {u: (L @ W0)[u - 1].numpy() for u in (1, 2)}         # d lin(z)[u] / dx
    last = {u: (L @ L @ W0)[u - 1].numpy() for u in (1, 2)}      # d lin(lin(z))[u] / dx
    assert not np.allclose(first[1], last[1])
    sal = VanillaSaliencyImage(dnn)
    with pytest.warns(UserWarning, match=r"'lin' runs 2 times .* last call .* call='first'"):
        got = sal.set_layer("lin", 1).backprop(x, preprocessed=True)  # default: the last
    assert np.allclose(flat(got), last[1], atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per method object and layer
        sal.set_layer("lin", 2).backprop(x[:1], preprocessed=True)
        for call, expect in (("first", first), (1, first), (-2, first), ("last", last),
                             (2, last), (-1, last)):
            fresh = VanillaSaliencyImage(dnn).set_layer("lin", 2, call=call)  # no warning
            assert fresh.call == call
            assert np.allclose(flat(fresh.backprop(x, preprocessed=True)), expect[2],
                               atol=1e-6), call
        z = x.flatten(1) @ W0.T
        act = VanillaSaliencyImage(dnn).set_layer("lin", 1, call="first").activation(x, [1])
        assert torch.allclose(act, (z @ L.T)[:, 0])
        act = VanillaSaliencyImage(dnn).set_layer("lin", 1, call=-1).activation(x, [1])
        assert torch.allclose(act, (z @ L.T @ L.T)[:, 0])
        # a guided map and IG follow the same call
        ig = IntegratedGradients(dnn, steps=4).set_layer("lin", 1, call="first")
        assert np.allclose(ig.backprop(x, preprocessed=True).sum((1, 2, 3)),
                           (z @ L.T)[:, 0].numpy(), atol=1e-5)  # completeness, zero baseline
    assert hook_dicts_empty(dnn.model)


def test_bad_call_says_what_is_valid():
    dnn, x = twice_dnn(), torch.randn(2, 3, 2, 2)
    sal = VanillaSaliencyImage(dnn)
    with pytest.raises(ValueError, match=r"`call` must be a nonzero int .* got 0"):
        sal.set_layer("lin", 1, call=0)
    with pytest.raises(ValueError, match=r"must be one of \['first', 'last'\] .* 'middle'"):
        sal.set_layer("lin", 1, call="middle")
    for bad in (1.5, True, [1]):
        with pytest.raises(TypeError, match="`call` must be 'first', 'last' or a nonzero int"):
            sal.set_layer("lin", 1, call=bad)
    for call in (3, -3):
        with pytest.raises(ValueError, match=rf"`call` {call} of layer 'lin': .* runs 2 times"):
            sal.set_layer("lin", 1, call=call).backprop(x, preprocessed=True)
        assert hook_dicts_empty(dnn.model)  # after an error, too
    with pytest.raises(ValueError, match=r"`call` 2 of layer 'head': the layer runs 1 time "):
        sal.set_layer("head", 1, call=2).backprop(x, preprocessed=True)
    assert hook_dicts_empty(dnn.model)


def test_leaves_are_the_latest_call_before_the_explained_one():
    dnn, x = twice_dnn(), torch.randn(2, 3, 2, 2)
    L, H = Twice.L, Twice.H
    sal = VanillaSaliencyImage(dnn, "head", 2)
    # to_layer: lin's input at its second call (the one that feeds head), not at its first
    got = sal.backprop(x, to_layer="lin", preprocessed=True)
    assert np.allclose(got, np.broadcast_to((H @ L)[1].numpy(), (2, 2)), atol=1e-6)
    grad, act = sal.gradient(x, [2], at_output="lin")
    z = x.flatten(1) @ Twice.W0.T
    assert torch.allclose(grad, H[1].expand(2, 2)) and torch.allclose(act, z @ L.T @ L.T)
    assert torch.allclose(sal.layer_output(x, "lin"), z @ L.T @ L.T)
    # the leaf is the target itself: the explained call's own output
    for call, expect in (("first", z @ L.T), ("last", z @ L.T @ L.T)):
        sal = VanillaSaliencyImage(dnn).set_layer("lin", 1, call=call)
        grad, act = sal.gradient(x, [1], at_output="lin")
        assert torch.allclose(act, expect) and torch.allclose(grad, torch.tensor([1., 0.]))
        assert torch.allclose(sal.layer_output(x, "lin"), expect)
    assert hook_dicts_empty(dnn.model)


def test_call_count_probe_runs_once_per_shape_and_first_never_runs_past():
    dnn, x = twice_dnn(), torch.randn(4, 3, 2, 2)
    counter = dnn.model.after
    sal = VanillaSaliencyImage(dnn, "lin", 1, batch_size=2).set_layer("lin", 1, call="first")
    sal.backprop(x, preprocessed=True)
    sal.backprop_smooth(x, 3, seed=0, preprocessed=True)
    assert counter.n == 0  # stopped at the target: nothing after it ran
    sal = VanillaSaliencyImage(dnn, "head", 1, batch_size=2)  # runs once: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            sal.backprop(x, preprocessed=True)
        assert counter.n == 1  # one probe (one row, full forward) for this shape
        sal.backprop(torch.randn(1, 3, 4, 1), preprocessed=True)
        assert counter.n == 2  # a new input shape is counted again
    assert hook_dicts_empty(dnn.model)


def test_call_reaches_the_registry_smoothgrad_and_cams():
    from dnnbrain.dnn.algo import saliency
    from dnnbrain.dnn.algo.registry import make_method
    dnn, x = twice_dnn(), torch.randn(2, 3, 2, 2)
    first = (Twice.L @ Twice.W0)[0].numpy()
    got = saliency(dnn, x, "vanilla", layer="lin", unit=1, call="first", preprocessed=True)
    assert np.allclose(flat(got), first, atol=1e-6)
    sg = make_method(dnn, "smoothgrad", "lin", 1, call=1, n_samples=2, sigma_multiplier=0.0)
    assert sg.method.call == 1
    assert np.allclose(flat(sg.backprop(x, preprocessed=True)), first, atol=1e-6)
    with pytest.raises(ValueError, match="`call` 'first' needs a target `layer`"):
        make_method(dnn, "vanilla", call="first")


class ConvTwice(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


def test_cams_on_a_conv_called_twice_use_the_explained_call():
    from dnnbrain.dnn.algo.cam import GradCAM, ScoreCAM
    from dnnbrain.dnn.algo.occlusion import UpsampledActivation
    dnn = DNN(ConvTwice(), layers={"conv": "conv", "fc": "fc"},
              test_transform=ImageTransform(None))
    x, conv = torch.randn(2, 3, 6, 6), dnn.model.conv
    with torch.no_grad():
        acts = {"first": conv(x), "last": conv(conv(x))}
    for call, act in acts.items():
        # Grad-CAM of channel 2 (mean) at its own layer: weight 1/36 on channel 2 only
        cam = GradCAM(dnn, cam_layer="conv").set_layer("conv", 2, call=call)
        got = cam.backprop(x, preprocessed=True)
        assert np.allclose(got, act[:, 1].clamp(min=0).numpy() / 36, atol=1e-6), call
        up = UpsampledActivation(dnn).set_layer("conv", 2, call=call)
        assert np.allclose(up.backprop(x, preprocessed=True), act[:, 1].numpy(), atol=1e-6)
    # Score-CAM's CAM layer before a target that runs once: the CAM layer's latest call
    sc = ScoreCAM(dnn, cam_layer="conv").set_layer("fc", 1)
    assert torch.allclose(sc.layer_output(x, "conv"), acts["last"])
    assert sc.backprop(x, preprocessed=True).shape == (2, 6, 6)
    assert hook_dicts_empty(dnn.model)


def test_run_config_call_key_checked_and_used_by_the_runner():
    from dnnbrain.batch import load_config
    from dnnbrain.batch.unitstats import forward_stats
    from dnnbrain.io.stim import demo_stimulus_file
    base = {"model": {"name": "ShapeNet"}, "stimuli": str(demo_stimulus_file()),
            "targets": [{"layer": "fc2", "units": [1]}], "methods": ["vanilla"]}
    for bad, hint in (("middle", "must be one of ['first', 'last']"), (0, "nonzero int"),
                      (1.5, "nonzero int"), (3, "3 of layer 'fc2': the layer runs 1 time"),
                      (-2, "-2 of layer 'fc2': the layer runs 1 time")):
        cfg = dict(base, targets=[{"layer": "fc2", "units": [1], "call": bad}])
        with pytest.raises(ValueError, match=r"targets\[0\]\.call: ") as err:
            load_config(cfg)
        assert hint in str(err.value) and str(err.value).count("\n") == 1, str(err.value)
    cfg = load_config(dict(base, targets=[{"layer": "fc2", "units": [1], "call": "first"}]))
    assert cfg["targets"][0]["call"] == "first"
    assert "call" not in load_config(base)["targets"][0]  # the default leaves digests alone
    # the manifest's activation is the explained call's
    dnn, x = twice_dnn(), torch.randn(3, 3, 2, 2)
    targets = [{"layer": "lin", "units": [1, 2], "reduce": "mean", "call": c}
               for c in ("first", None, 2)]
    _, stats = forward_stats(dnn, targets, x, None)
    z = x.flatten(1) @ Twice.W0.T
    assert np.allclose(stats[0][0], (z @ Twice.L.T).numpy(), atol=1e-6)
    for t in (1, 2):
        assert np.allclose(stats[t][0], (z @ Twice.L.T @ Twice.L.T).numpy(), atol=1e-6)
    assert hook_dicts_empty(dnn.model)


def test_hooks_never_outlive_a_call_when_the_model_fails():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2), Boom())
    dnn = DNN(model, layers={"fc": "1", "boom": "2"}, test_transform=ImageTransform(None))
    x = torch.randn(2, 3, 2, 2)
    # the call-count probe runs past the target into Boom: counted up to the failure
    out = VanillaSaliencyImage(dnn, "fc", 1).backprop(x, preprocessed=True)
    assert np.allclose(flat(out), model[1].weight[0].detach().numpy())
    assert hook_dicts_empty(model)
    for cls in (VanillaSaliencyImage, GuidedSaliencyImage):
        with pytest.raises(RuntimeError, match="a layer after the target ran"):
            cls(dnn, "boom", 1).backprop(x, preprocessed=True)  # fails in the probe
        with pytest.raises(RuntimeError, match="a layer after the target ran"):
            cls(dnn, "boom", 1).set_layer("boom", 1, call="first").backprop(
                x, preprocessed=True)  # fails in the pass
        assert hook_dicts_empty(model)
