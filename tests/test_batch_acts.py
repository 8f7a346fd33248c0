"""The manifest's activations and predicted classes from the methods' own clean passes
(SaliencyImage.clean_output, dnnbrain.batch.unitstats): the same values as the runner's
own forward pass, and that forward pass gone where the methods' passes give everything."""
import csv

import numpy as np
import pytest
import torch
from torch import nn

from dnnbrain.batch import run, runner
from dnnbrain.batch import unitstats
from dnnbrain.dnn.algo.registry import make_method
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN
from dnnbrain.io.stim import demo_stimulus_file

from .conftest import hook_dicts_empty

METHODS = ["vanilla", "guided", {"name": "gradcam", "cam_layer": "conv3"},
           {"name": "smoothgrad", "n_samples": 3}, {"name": "ig", "steps": 4}]
TARGETS = [{"layer": "fc2", "units": [1, 3]},                      # classes, output layer
           {"layer": "fc2", "units": "predicted"},
           {"layer": "fc2", "units": "label"},
           {"layer": "conv4", "units": [2, 5], "reduce": "mean"},   # conv channels
           {"layer": "conv4", "units": [7], "reduce": "max"},
           {"layer": "conv4", "units": "predicted", "reduce": "max"}]


def _config(targets, methods, batch_size=4):
    return {"model": {"name": "ShapeNet", "device": "cpu"}, "stimuli": str(demo_stimulus_file()),
            "targets": targets, "methods": methods, "outputs": {"save": ["npy"]},
            "batch_size": batch_size}


def _manifest(result):
    with open(result.manifest, newline="") as f:
        return list(csv.DictReader(f))


def _counting(monkeypatch):
    """Record every completed forward of the run's network (a hook on the whole model:
    the engine's passes stop at the target layer and never complete one) by its rows,
    and keep the network for the hook checks afterwards."""
    seen = {"rows": [], "dnn": None}
    prepare = runner.prepare

    def counted(*args, **kwargs):
        prep = prepare(*args, **kwargs)
        seen["dnn"] = prep.dnn
        return prep

    real = unitstats._outputs

    def outputs(dnn, layers, x, fn):
        handle = dnn.model.register_forward_hook(lambda m, i, o: seen["rows"].append(len(i[0])))
        try:
            return real(dnn, layers, x, fn)
        finally:
            handle.remove()

    monkeypatch.setattr(runner, "prepare", counted)
    monkeypatch.setattr(unitstats, "_outputs", outputs)
    return seen


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same run with the methods' clean passes used (the default) and with the
    runner's own forward pass for every batch (BatchStats.wants always False: the
    manifest as it was computed before)."""
    cfg = _config(TARGETS, METHODS)
    fast = run(cfg, out=tmp_path_factory.mktemp("fast") / "out", progress=False)
    mp = pytest.MonkeyPatch()
    mp.setattr(unitstats.BatchStats, "wants", lambda self, t: False)
    try:
        slow = run(cfg, out=tmp_path_factory.mktemp("slow") / "out", progress=False)
    finally:
        mp.undo()
    return _manifest(fast), _manifest(slow), fast, slow


def test_manifest_identical_with_and_without_the_clean_passes(both):
    fast, slow, _, _ = both
    assert len(fast) == len(slow) == 12 * (2 + 1 + 1 + 2 + 1 + 1) * len(METHODS)
    for a, b in zip(fast, slow):
        key = (a["stimulus"], a["target"], a["method"], a["requested_unit"])
        assert {k: v for k, v in a.items() if k != "activation"} == \
            {k: v for k, v in b.items() if k != "activation"}, key
        assert np.isclose(float(a["activation"]), float(b["activation"]),
                          rtol=1e-6, atol=1e-6), key
        assert a["activation"] == f"{float(a['activation']):.9g}", key  # the same format
    # every target's activations are the same numbers in every method's rows
    by = {}
    for r in fast:
        by.setdefault((r["stimulus"], r["target"], r["unit"]), set()).add(r["activation"])
    assert all(len(v) == 1 for v in by.values())
    # 'predicted' on the output layer is the predicted class
    pred = [r for r in fast if r["target"] == "1"]
    assert pred and all(r["unit"] == r["predicted_class"] for r in pred)


def test_manifest_activations_are_the_networks(both):
    """Independent of both paths: the activations of the network called directly."""
    fast, _, result, _ = both
    from dnnbrain.dnn.models import ShapeNet
    from dnnbrain.io.stim import Stimulus
    dnn = ShapeNet()
    stim = Stimulus.read(demo_stimulus_file())
    x = dnn.test_transform.batch([str(p) for p in stim.paths])
    acts = {}
    def keep(n):  # a copy: the in-place ReLU after conv4 overwrites its output
        return lambda m, i, o: acts.__setitem__(n, o.clone())

    hooks = [dnn.layer2module(n).register_forward_hook(keep(n)) for n in ("conv4", "fc2")]
    try:
        with torch.no_grad():
            dnn.eval()
            logits = dnn.model(x)
    finally:
        for h in hooks:
            h.remove()
    ids = list(stim.ids)
    for r in fast:
        i, t = ids.index(r["stimulus"]), TARGETS[int(r["target"])]
        out = acts[t["layer"]][i]
        unit = int(r["unit"])
        want = out[unit - 1] if out.ndim == 1 else (
            out[unit - 1].mean() if t.get("reduce", "mean") == "mean" else out[unit - 1].amax())
        assert np.isclose(float(r["activation"]), float(want), rtol=1e-5, atol=1e-5), r
        assert int(r["predicted_class"]) == int(logits[i].argmax()) + 1


def test_forward_pass_gone_for_vanilla_at_the_output_layer(tmp_path, monkeypatch):
    seen = _counting(monkeypatch)
    result = run(_config([{"layer": "fc2", "units": [1, 2]}], ["vanilla"]),
                 out=tmp_path / "out", progress=False)
    # one one-row probe per run (does fc2 give the network's output?), no batch forward
    assert seen["rows"] == [1]
    assert hook_dicts_empty(seen["dnn"].model)
    assert len(_manifest(result)) == 24 and result.forward_s < result.compute_s


def test_forward_pass_kept_where_the_passes_do_not_give_everything(tmp_path, monkeypatch):
    # a hidden target: the predicted class needs the network's output, one forward a batch
    seen = _counting(monkeypatch)
    run(_config([{"layer": "conv4", "units": [1]}], ["vanilla"]), out=tmp_path / "a",
        progress=False)
    assert seen["rows"] == [1, 4, 4, 4]
    # SmoothGrad of fixed units never runs the clean stimuli: one forward a batch
    seen["rows"].clear()
    run(_config([{"layer": "fc2", "units": [1]}], [{"name": "smoothgrad", "n_samples": 2}]),
        out=tmp_path / "b", progress=False)
    assert seen["rows"] == [1, 4, 4, 4]
    # ... but with a vanilla item of the same target first in each batch, none
    seen["rows"].clear()
    run(_config([{"layer": "fc2", "units": [1]}],
                ["vanilla", {"name": "smoothgrad", "n_samples": 2}]),
        out=tmp_path / "c", progress=False)
    assert seen["rows"] == [1]
    assert hook_dicts_empty(seen["dnn"].model)


@pytest.mark.parametrize("name, kw, units, clean", [
    ("vanilla", {}, [1, 3], True), ("guided", {}, [2], True),
    ("deconv", {}, "predicted", True), ("grad_x_input", {}, [1, "predicted"], True),
    ("gradcam", {"cam_layer": "conv3"}, [1, 2], True),
    ("gradcam++", {"cam_layer": "conv3"}, "predicted", True),
    ("smoothgrad", {"n_samples": 2, "seed": 0}, [1], False),
    ("smoothgrad", {"n_samples": 2, "seed": 0}, "predicted", True),
    ("ig", {"steps": 3}, [1, 2], False), ("ig", {"steps": 3}, "predicted", True),
    ("occlusion", {"window": 16, "stride": 16}, [1], False),
    ("occlusion", {"window": 16, "stride": 16}, "predicted", True)])
@pytest.mark.parametrize("layer", ["fc2", "conv4"])
def test_clean_output_is_the_target_layers_output(shapenet, name, kw, units, clean, layer):
    x = torch.randn(5, 3, 64, 64)
    obj = make_method(shapenet, name, layer, units, "mean", 3, **kw)
    training = shapenet.model.training
    with obj.clean_output() as got:
        assert got.output is None
        maps = obj.backprop(x, preprocessed=True)
    base = getattr(obj, "method", obj)
    want = base.layer_output(x, layer)
    if clean:
        assert got.output.shape == want.shape
        assert torch.allclose(got.output, want, rtol=1e-5, atol=1e-5)
    else:
        assert got.output is None
    assert base._clean is None and hook_dicts_empty(shapenet.model)
    assert shapenet.model.training == training
    # recording changes no map
    assert np.allclose(maps, obj.backprop(x, preprocessed=True), rtol=1e-5, atol=1e-6)


def test_a_perturbed_call_after_a_clean_one_gives_none(shapenet):
    x = torch.randn(2, 3, 64, 64)
    ig = make_method(shapenet, "ig", "fc2", [1], steps=3)
    with ig.clean_output() as got:
        ig.backprop(x, preprocessed=True)
        assert got.output is None
        ig.set_layer("fc2", "predicted")
        ig.backprop(x, preprocessed=True)
        assert got.output is not None
        ig.set_layer("fc2", [2])
        ig.backprop(x, preprocessed=True)
        assert got.output is None


class _Twice(nn.Module):
    def __init__(self, after=None):
        super().__init__()
        self.flat, self.fc, self.after = nn.Flatten(), nn.Linear(12, 12), after

    def forward(self, x):
        z = self.fc(self.fc(self.flat(x)))
        return z if self.after is None else (self.after(z), z)


@pytest.mark.parametrize("after, layer, call, ends", [
    (None, "fc", None, True), (None, "fc", "first", False), (None, "fc", -1, True),
    (None, "flat", None, False), (nn.Softmax(1), "fc", None, False),
    (nn.Softmax(1), "after", None, True)])  # a tuple's first item is the output
def test_ends_network(after, layer, call, ends):
    names = {"flat": "flat", "fc": "fc", **({} if after is None else {"after": "after"})}
    dnn = DNN(_Twice(after), layers=names,
              test_transform=ImageTransform(None))
    x = torch.randn(3, 3, 2, 2)
    target = {"layer": layer, "units": [1], "reduce": "mean", "call": call}
    assert unitstats.ends_network(dnn, target, x) is ends
    assert hook_dicts_empty(dnn.model)


class _ConvTwice(nn.Module):
    """conv(conv(x)) -> mean over space -> fc: ``conv`` runs twice per forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


def test_explained_calls_from_the_passes_equal_the_forward_pass(tmp_path, monkeypatch):
    """The output layer first gives the predicted class, so both calls of ``conv`` take
    their activations from the vanilla passes (each stopped at its own call)."""
    from dnnbrain.batch import register_factory, unregister_factory
    register_factory("acts_conv_twice", lambda: DNN(
        _ConvTwice(), layers={"conv": "conv", "fc": "fc"}, test_transform=ImageTransform(64)))
    try:
        cfg = {"model": {"factory": "acts_conv_twice"}, "stimuli": str(demo_stimulus_file()),
               "targets": [{"layer": "fc", "units": "predicted"},
                           {"layer": "conv", "units": [1, 3], "call": "first"},
                           {"layer": "conv", "units": [2], "call": 2, "reduce": "max"}],
               "methods": ["vanilla"], "outputs": {"save": ["npy"]}, "batch_size": 4}
        seen = _counting(monkeypatch)
        fast = _manifest(run(cfg, out=tmp_path / "fast", progress=False))
        assert seen["rows"] == [1]  # the probe of fc only: no forward pass of a batch
        monkeypatch.setattr(unitstats.BatchStats, "wants", lambda self, t: False)
        slow = _manifest(run(cfg, out=tmp_path / "slow", progress=False))
    finally:
        unregister_factory("acts_conv_twice")
    assert len(fast) == len(slow) == 12 * 4
    for a, b in zip(fast, slow):
        assert {k: v for k, v in a.items() if k != "activation"} == \
            {k: v for k, v in b.items() if k != "activation"}
        assert np.isclose(float(a["activation"]), float(b["activation"]), rtol=1e-6, atol=1e-6)
    first = {r["stimulus"]: r["activation"] for r in fast if r["target"] == "1"}
    second = {r["stimulus"]: r["activation"] for r in fast if r["target"] == "2"}
    assert first.keys() == second.keys() and first != second
