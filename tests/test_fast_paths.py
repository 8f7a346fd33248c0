"""The fast paths: the affine stem, channels-last passes and memory budgets give the same
maps as the plain passes, and a budget bounds the memory a call allocates."""
import numpy as np
import pytest
import torch
from torch import nn

from dnnbrain.dnn import zoo
from dnnbrain.dnn.algo import (DeconvSaliencyImage, GradientXInputImage, GuidedSaliencyImage,
                               VanillaSaliencyImage)
from dnnbrain.dnn.algo.budget import parse_budget
from dnnbrain.batch.unitstats import ends_network
from dnnbrain.dnn.algo.engine import SaliencyImage
from dnnbrain.dnn.algo.forward import input_format, input_layout
from dnnbrain.dnn.algo.integrated import IntegratedGradients
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN, build_network
from dnnbrain.probe.taps import Taps, parse_layers

from .conftest import hook_dicts_empty


def stem_net(stem="conv1", seed=0):
    """conv -> bn -> relu -> conv -> relu -> pool -> fc; affine up to ``bn``."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 5, stride=2, padding=2), nn.BatchNorm2d(6),
                        nn.ReLU(inplace=True), nn.Conv2d(6, 8, 3, padding=1),
                        nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 4))
    with torch.no_grad():  # a batch norm that is not the identity
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
    net.eval()
    return DNN(net, {"conv1": "0", "conv1_bn": "1", "conv1_relu": "2", "conv2": "3",
                     "conv2_relu": "4", "pool": "5", "fc": "7"},
               test_transform=ImageTransform(32), img_size=32, stem=stem, channels_last=True)


def inputs(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def affine_error(dnn, layer, size):
    """Relative failure of f(a u + (1 - a) v) = a f(u) + (1 - a) f(v) at ``layer``."""
    probe = VanillaSaliencyImage(dnn, dnn.layers[-1], 1)
    u, v = inputs(2, size, seed=1), inputs(2, size, seed=2)
    f = [probe.layer_output(t, layer) for t in (0.3 * u + 0.7 * v, u, v)]
    return float((f[0] - 0.3 * f[1] - 0.7 * f[2]).abs().max() / f[0].abs().max())


# --------------------------------------------------------------------------- the stem table
FAST_NETS = ("AlexNet", "Resnet18", "Googlenet", "ShapeNet", "ShapeViT", "Vgg11")


@pytest.mark.parametrize("name", [n if n in FAST_NETS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in zoo.network_names()])
def test_zoo_stems_are_affine(name):
    dnn = build_network(name, pretrained=False)
    stem = zoo.get_spec(name).stem
    assert dnn.stem == stem is not None
    size = {"InceptionV3": 96, "ViT_B_16": 224}.get(name, 64)
    assert affine_error(dnn, stem, size) < 1e-5
    # the check can fail: the layer after the stem's table entry is not affine
    names = dnn.layers
    after = names[names.index(stem) + 1] if stem in names else names[1]
    assert affine_error(dnn, after, size) > 1e-2


def test_after_stem_follows_the_table():
    dnn = build_network("Resnet18", pretrained=False)
    assert dnn.stem == "conv1_bn"
    assert not dnn.after_stem("conv1") and not dnn.after_stem("conv1_bn")
    assert dnn.after_stem("conv1_relu") and dnn.after_stem("fc")
    assert dnn.after_stem("layer3.1.conv2")       # a dotted path inside a table entry
    g = build_network("Googlenet", pretrained=False)
    assert g.stem == "conv1.bn" and not g.after_stem("conv1") and g.after_stem("conv2")
    assert not DNN(nn.Sequential(nn.Conv2d(3, 2, 1))).after_stem("0")  # no stem
    with pytest.raises(ValueError, match="layer"):
        DNN(nn.Sequential(nn.Conv2d(3, 2, 1)), stem="conv9")


# --------------------------------------------------------------------------- same maps
def plain(method):
    """The same method without the fast paths."""
    method.channels_last = False
    return method


@pytest.mark.parametrize("unit,layer", [(2, "fc"), (3, "conv2"), ("predicted", "fc")])
@pytest.mark.parametrize("base", [None, "guided"])
def test_ig_through_the_stem_equals_plain_ig(unit, layer, base, monkeypatch):
    x = inputs()
    fast_dnn, slow_dnn = stem_net("conv1_bn"), stem_net(None)
    kw = dict(steps=12, rule="gausslegendre", baseline=torch.zeros(3, 32, 32), base=base,
              batch_size=7)  # passes cut across images
    calls = []
    original = SaliencyImage.stem_backward
    monkeypatch.setattr(SaliencyImage, "stem_backward",
                        lambda self, *a: calls.append(1) or original(self, *a))
    fast = IntegratedGradients(fast_dnn, layer, unit, **kw).backprop(x, preprocessed=True)
    n_fast = len(calls)
    assert n_fast == 3, "one stem backward per image (one image per call here)"
    slow = plain(IntegratedGradients(slow_dnn, layer, unit, **kw)).backprop(
        x, preprocessed=True)
    assert len(calls) == n_fast  # only the fast network goes through the stem
    scale = np.abs(slow).max()
    assert scale > 0 and np.abs(fast - slow).max() <= 1e-5 * scale
    # convergence deltas (completeness) through the stem are those of the plain path
    delta = [m.convergence_delta(x, preprocessed=True) for m in (
        IntegratedGradients(fast_dnn, layer, unit, **kw),
        plain(IntegratedGradients(slow_dnn, layer, unit, **kw)))]
    assert np.allclose(delta[0], delta[1], rtol=0, atol=1e-5 * np.abs(slow).sum() / 3)


@pytest.mark.parametrize("cls", [VanillaSaliencyImage, GuidedSaliencyImage,
                                 DeconvSaliencyImage])
def test_smoothgrad_through_the_stem_equals_plain(cls):
    x = inputs(2)
    fast = cls(stem_net("conv1_bn"), "fc", [1, 4], batch_size=9).backprop_smooth(
        x, 6, 0.2, seed=3, preprocessed=True)
    slow = plain(cls(stem_net(None), "fc", [1, 4], batch_size=9)).backprop_smooth(
        x, 6, 0.2, seed=3, preprocessed=True)
    assert fast.shape == (2, 2, 3, 32, 32)
    assert np.abs(fast - slow).max() <= 1e-5 * np.abs(slow).max()


@pytest.mark.parametrize("cls,kwargs", [(VanillaSaliencyImage, dict(mode="squared")),
                                        (VanillaSaliencyImage, dict(to_layer="conv2")),
                                        (GradientXInputImage, dict())])
def test_maps_that_are_not_gradient_means_skip_the_stem(cls, kwargs, monkeypatch):
    monkeypatch.setattr(SaliencyImage, "stem_backward", lambda *a: pytest.fail("stem"))
    out = cls(stem_net("conv1_bn"), "fc", 2).backprop_smooth(inputs(1), 3, 0.1, seed=0,
                                                             preprocessed=True, **kwargs)
    assert np.abs(out).max() > 0


class ViewNet(nn.Module):
    """Flattens with ``.view``, as much older code does: no channels-last inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


def test_channels_last_only_where_the_network_accepts_it():
    x = inputs(2, 8)
    dnn = DNN(ViewNet(), ["conv", "fc"])
    assert dnn.channels_last is False and build_network("ShapeNet").channels_last is True
    sal = VanillaSaliencyImage(dnn, "fc", 2)
    got = sal.backprop_smooth(x, 3, 0.1, seed=0, preprocessed=True)  # default: no error
    sal.channels_last = True  # forced on a network that cannot take it: torch's error
    with pytest.raises(RuntimeError, match="view"):
        sal.backprop_smooth(x, 3, 0.1, seed=0, preprocessed=True)
    sal.channels_last = False
    assert np.array_equal(got, sal.backprop_smooth(x, 3, 0.1, seed=0, preprocessed=True))
    assert hook_dicts_empty(dnn.model)
    with pytest.raises(TypeError, match="`channels_last` must be a bool"):
        DNN(ViewNet(), channels_last="yes")


def test_one_channels_last_rule_for_methods_probes_and_runs():
    """Saliency passes, the probes' taps and a YAML run's forward pass all run 4-D CPU
    input channels-last exactly when the network accepts it (or when told to)."""
    x = inputs(2, 32)
    for accepts in (True, False):
        dnn = stem_net()
        dnn.channels_last = accepts
        runs = {
            "saliency": lambda: VanillaSaliencyImage(dnn, "fc", 1).backprop(x, preprocessed=True),
            "taps": lambda: Taps(dnn, parse_layers(dnn, ["conv2"]), "mean").run(x),
            "run": lambda: ends_network(dnn, {"layer": "fc"}, x),
            "taps forced": lambda: Taps(dnn, parse_layers(dnn, ["conv2"]), "mean",
                                        channels_last=not accepts).run(x)}
        for name, fn in runs.items():
            seen = []
            handle = dnn.model.register_forward_pre_hook(lambda m, a: seen.append(
                a[0].is_contiguous(memory_format=torch.channels_last)
                and not a[0].is_contiguous()))
            try:
                fn()
            finally:
                handle.remove()
            want = accepts != (name == "taps forced")
            assert seen and set(seen) == {want}, (accepts, name, seen)
        assert input_format(dnn, x[0]) is None  # 3-D input keeps its layout
        assert input_format(dnn, x, channels_last=True) is torch.channels_last
        assert input_layout(dnn, x, channels_last=False) is x


def test_channels_last_gives_the_same_maps_and_leaves_the_input(shapenet):
    x = inputs(4, 64, seed=5)
    before = x.clone()
    for cls in (VanillaSaliencyImage, GuidedSaliencyImage):
        fast = cls(shapenet, "conv3", [2, 9]).backprop(x, preprocessed=True)
        slow = plain(cls(shapenet, "conv3", [2, 9])).backprop(x, preprocessed=True)
        assert fast.flags.c_contiguous and fast.dtype == np.float32
        assert np.abs(fast - slow).max() <= 1e-5 * np.abs(slow).max()
    assert torch.equal(x, before) and x.is_contiguous()
    assert hook_dicts_empty(shapenet.model)


# --------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("text,bytes_", [("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000),
                                         (" 2 gib ", 2 * 2**30), (4096, 4096),
                                         ("800k", 800_000), (None, None)])
def test_parse_budget(text, bytes_):
    assert parse_budget(text) == bytes_


@pytest.mark.parametrize("bad", ["", "abc", "-1MiB", "5 parsecs", 0, -3, True, [1]])
def test_parse_budget_errors(bad):
    with pytest.raises(ValueError, match="`memory_budget` must be .*'512MiB'"):
        parse_budget(bad)


def test_rows_per_pass_follow_the_budget(shapenet):
    x = inputs(1, 64)
    rows = [VanillaSaliencyImage(shapenet, "fc2", 1, memory_budget=b).rows_per_pass(x, [1])
            for b in ("4MiB", "16MiB", "64MiB")]
    assert 1 <= rows[0] < rows[1] < rows[2]
    assert 3.5 < rows[2] / rows[1] < 4.5  # the cost per row is fixed
    capped = VanillaSaliencyImage(shapenet, "fc2", 1, batch_size=5, memory_budget="64MiB")
    assert capped.rows_per_pass(x, [1]) == 5
    assert VanillaSaliencyImage(shapenet, "fc2", 1).rows_per_pass(x, [1]) == 32
    with pytest.raises(ValueError, match="too small.*one row needs about"):
        VanillaSaliencyImage(shapenet, "fc2", 1, memory_budget="100kB").rows_per_pass(
            x, [1])
    assert hook_dicts_empty(shapenet.model)
    assert all(p.requires_grad for p in shapenet.model.parameters())


def peak_mib(fn):
    """Peak of torch's CPU allocations during ``fn()`` above the level before, MiB."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # the profiler's event list is not a public API: skip where it moved
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
                  and e.device_type() == torch.autograd.DeviceType.CPU]
    except AttributeError:
        pytest.skip("this torch's profiler gives no memory events")
    if not events:
        pytest.skip("this torch's profiler recorded no memory events")
    level = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        level += e.nbytes()
        peak = max(peak, level)
    return peak / 2**20


@pytest.mark.parametrize("budget", [12, 48])
def test_ig_peak_memory_stays_within_the_budget(shapenet, budget):
    x = inputs(16, 64, seed=2)
    kw = dict(steps=50, rule="gausslegendre", baseline=torch.zeros(3, 64, 64))
    ig = IntegratedGradients(shapenet, "fc2", 2, memory_budget=f"{budget}MiB", **kw)
    ig.backprop(x[:1], preprocessed=True)  # warm-up: the probe and oneDNN's caches
    out = []
    peak = peak_mib(lambda: out.append(ig.backprop(x, preprocessed=True)))
    assert peak <= budget
    rows = ig.rows_per_pass(x, [2], at_output=shapenet.stem, images=1)
    assert rows > 1
    ref = IntegratedGradients(shapenet, "fc2", 2, batch_size=100, **kw).backprop(
        x, preprocessed=True)
    assert np.abs(out[0] - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.cuda
def test_fast_paths_on_cuda():
    cpu_dnn, gpu_dnn = stem_net("conv1_bn"), stem_net("conv1_bn").to("cuda")
    x = inputs(3)
    kw = dict(steps=10, baseline=torch.zeros(3, 32, 32), memory_budget="64MiB")
    for make in (lambda d: IntegratedGradients(d, "fc", [1, 3], **kw),
                 lambda d: VanillaSaliencyImage(d, "conv2", 2)):
        ref = make(cpu_dnn).backprop(x, preprocessed=True)
        got = make(gpu_dnn).backprop(x, preprocessed=True)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    smooth = [VanillaSaliencyImage(d, "fc", 2).backprop_smooth(x, 4, 0.1, seed=1,
                                                               preprocessed=True)
              for d in (cpu_dnn, gpu_dnn)]
    assert np.abs(smooth[0] - smooth[1]).max() <= 1e-4 * np.abs(smooth[0]).max()


@pytest.mark.parametrize("layer", ["conv1", "conv2_maxpool", "flatten"])  # flatten: a view
def test_gradient_without_values_equals_the_copying_leaf(shapenet, layer):
    x = inputs(3, 64, seed=4)
    sal = VanillaSaliencyImage(shapenet, "fc2", 3)
    ref, values = sal.gradient(x, [3], at_output=layer)
    got, none = sal.gradient(x, [3], at_output=layer, keep_values=False)
    assert none is None and values is not None and got.shape == values.shape
    assert torch.allclose(got, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
    assert hook_dicts_empty(shapenet.model)
