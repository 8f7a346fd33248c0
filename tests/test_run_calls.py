"""A run whose targets are two calls of one module (issue 11): the call must exist (checked
at validation), each call writes its own folder, and evaluation scores that call. The
network comes from a registered factory, so the run also saves it (network.pth)."""
import numpy as np
import pytest
import torch
from torch import nn

from dnnbrain.batch import load_config, register_factory, run, unregister_factory
from dnnbrain.batch.store import read_manifest
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN
from dnnbrain.evaluate.load import build_dnn, read_run
from dnnbrain.io.stim import demo_stimulus_file


class ConvTwice(nn.Module):
    """conv(conv(x)) -> mean over space -> fc: ``conv`` runs twice per forward pass."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


def build_twice():
    return DNN(ConvTwice(), layers={"conv": "conv", "fc": "fc"},
               test_transform=ImageTransform(64))


@pytest.fixture(scope="module")
def factory():
    register_factory("conv_twice_test", build_twice)
    yield "conv_twice_test"
    unregister_factory("conv_twice_test")


def config(factory, targets):
    stim = demo_stimulus_file()
    return {"model": {"factory": factory}, "stimuli": str(stim), "targets": targets,
            "methods": ["vanilla"], "outputs": {"save": ["npy"]}, "batch_size": 4, "seed": 3}


def test_a_call_the_layer_does_not_have_is_refused_at_validation(factory):
    cfg = config(factory, [{"layer": "conv", "units": [1], "call": 3}])
    with pytest.raises(ValueError) as err:
        load_config(cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith("  targets[0].call: ")
    assert "3 of layer 'conv': the layer runs 2 times" in lines[1]


def test_two_calls_of_one_layer_write_apart_and_are_evaluated_at_their_call(factory,
                                                                             tmp_path):
    from dnnbrain.evaluate import evaluate_run
    targets = [{"layer": "conv", "units": [1], "call": "first"},
               {"layer": "conv", "units": [1], "call": 2}]
    res = run(config(factory, targets), out=tmp_path / "out", progress=False)
    rows = read_manifest(res.manifest)
    by_target = {t: [r for r in rows if r["target"] == t] for t in ("0", "1")}
    assert {r["npy"].split("/")[1] for r in by_target["0"]} == {"conv@first"}
    assert {r["npy"].split("/")[1] for r in by_target["1"]} == {"conv@2"}
    # the saved network (factory-built: network.pth) gives each call's activation
    saved = read_run(res.out_dir)
    assert saved.config["network"]["weights"] == "network.pth"
    assert (res.out_dir / "network.pth").is_file()
    dnn = build_dnn(saved.config, run_dir=res.out_dir)
    x = dnn.test_transform.batch(saved.stim.paths[:1])
    with torch.no_grad():
        first = dnn.model.conv(x)
        second = dnn.model.conv(first)
    for t, act in (("0", first), ("1", second)):
        row = next(r for r in by_target[t] if r["stimulus"] == by_target[t][0]["stimulus"])
        assert float(row["activation"]) == pytest.approx(float(act[0, 0].mean()), rel=1e-5)
    assert not np.isclose(float(first[0, 0].mean()), float(second[0, 0].mean()))
    ev = evaluate_run(res.out_dir, metrics=["road"], out_dir=tmp_path / "ev",
                      road_percentages=[0.5], progress=False)
    act = {(r["target"], r["stimulus"]): float(r["activation"]) for r in rows}
    assert len(ev["maps"]) == len(rows)
    for m in ev["maps"]:
        assert m["road"]["original"] == pytest.approx(act[str(m["target"]),
                                                          m["stimulus"]], rel=1e-5, abs=1e-6)
