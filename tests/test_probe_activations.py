"""Activations (dnnbrain.probe.activations / actstore, dnn_act): values against plain hooks,
pooling, one early-stopped forward per batch, no trace on the model, resume after SIGKILL,
shards, the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnnbrain.cli import act as act_cli
from dnnbrain.dnn.base import to_input
from dnnbrain.dnn.fingerprint import fingerprint, seeded
from dnnbrain.dnn.models import build_network
from dnnbrain.dnn.tokens import grid_map
from dnnbrain.io.stim import demo_stimulus_file
from dnnbrain.probe import activations, iter_activations, open_activations
from dnnbrain.probe.actstore import export_h5

from .conftest import hook_dicts_empty

STIM = str(demo_stimulus_file())
ROOT = Path(__file__).resolve().parent.parent


def hooked(dnn, x, layers):
    """Reference: every layer's output (last call) by plain forward hooks, whole forward."""
    caps = {}
    hs = [dnn.layer2module(l).register_forward_hook(
        lambda m, i, o, l=l: caps.__setitem__(l, o.detach().clone())) for l in layers]
    flags = [(m, m.training) for m in dnn.model.modules()]
    try:
        dnn.model.eval()
        with torch.no_grad():
            dnn.model(x)
    finally:
        for h in hs:
            h.remove()
        for m, f in flags:
            m.training = f
    return caps


@pytest.fixture(scope="module")
def resnet():
    with seeded(0):
        return build_network("Resnet18", pretrained=False)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, size in enumerate([(40, 50), (64, 64), (30, 20)]):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


def test_values_equal_plain_hooks_demo(shapenet, demo_stim):
    layers = ["conv2", "conv4_relu", "fc1"]
    x, _ = to_input(demo_stim, shapenet.test_transform)
    ref = hooked(shapenet, x, layers)
    got = activations(shapenet, STIM, layers, batch_size=5, channels_last=False)
    assert list(got) == layers
    for k in layers:
        assert got[k].dtype == np.float32 and got[k].shape == tuple(ref[k].shape)
        assert np.allclose(got[k], ref[k].numpy(), rtol=1e-5, atol=1e-5), k
    # pooling and unit subsets
    mean = activations(shapenet, demo_stim, layers, pool="mean", batch_size=12)
    mx = activations(shapenet, demo_stim, ["conv2"], pool="max", units=[3, 1])
    sp = activations(shapenet, demo_stim, ["conv4_relu"], units=[(2, 1, 1), (5, 8, 3)])
    assert np.allclose(mean["conv2"], ref["conv2"].mean((2, 3)).numpy(), atol=1e-5)
    assert np.allclose(mean["fc1"], ref["fc1"].numpy(), atol=1e-5)
    assert np.allclose(mx["conv2"], ref["conv2"].amax((2, 3))[:, [2, 0]].numpy(), atol=1e-5)
    r = ref["conv4_relu"]
    assert np.allclose(sp["conv4_relu"], torch.stack([r[:, 1, 0, 0], r[:, 4, 7, 2]], 1),
                       atol=1e-5)


def test_torchvision_folder_one_forward_per_batch(resnet, folder):
    layers = ["conv1_relu", "res1", "res2"]
    seen = {n: [] for n in ["conv1", "res1", "res2", "res3", "fc"]}
    hs = [resnet.layer2module(n).register_forward_pre_hook(
        lambda m, i, n=n: seen[n].append(i[0].shape[0])) for n in seen]
    try:
        got = activations(resnet, folder, layers, batch_size=2, channels_last=False)
        counts = {n: list(v) for n, v in seen.items()}
        for v in seen.values():
            v.clear()
        first = activations(resnet, folder, [f"{l}@first" for l in layers], batch_size=2)
    finally:
        for h in hs:
            h.remove()
    # one forward per batch (2 + 1 stimuli) for the requested layers, plus one one-row
    # pass counting their calls; nothing past res2 ever sees a batch
    assert counts["res1"] == [1, 2, 1] and counts["res2"] == [1, 2, 1]
    assert counts["res3"] == [1] and counts["fc"] == [1]
    assert seen["res2"] == [2, 1] and seen["res3"] == [] and seen["fc"] == []  # @first: no count
    paths = sorted(str(p) for p in folder.iterdir())
    ref = hooked(resnet, resnet.test_transform.batch(paths), layers)
    for k in layers:
        assert np.allclose(got[k], ref[k].numpy(), rtol=1e-4, atol=1e-5), k
        assert np.allclose(first[f"{k}@first"], got[k], rtol=1e-4, atol=1e-5)


def test_token_layer_pools_patch_tokens():
    vit = build_network("ShapeViT")
    x = torch.rand(3, 3, 64, 64)
    raw = hooked(vit, x, ["block2"])["block2"]
    grid = grid_map(vit, "block2", raw, (64, 64))
    got = activations(vit, x, ["block2"], pool="mean", preprocessed=True)
    none = activations(vit, x, ["block2"], preprocessed=True)
    assert np.allclose(got["block2"], grid.mean((2, 3)).numpy(), atol=1e-5)
    assert none["block2"].shape == tuple(grid.shape)


def test_no_trace_on_model_after_success_and_error(shapenet):
    model = shapenet.model
    model.train()
    model.conv1.eval()
    flags = [m.training for m in model.modules()]
    before = fingerprint(model)
    x = torch.rand(4, 3, 64, 64)
    x0 = x.clone()
    activations(shapenet, x, ["conv1", "fc1"], preprocessed=True, batch_size=3)
    with pytest.raises(ValueError, match=r"`units` \(1, 9, 9\) is out of range"):
        activations(shapenet, x, ["conv4"], units=[(1, 9, 9)], preprocessed=True)
    with pytest.raises(ValueError, match="`layers` must be one of"):
        activations(shapenet, x, ["conv1", "nope"], preprocessed=True)
    assert hook_dicts_empty(model)
    assert [m.training for m in model.modules()] == flags
    assert fingerprint(model) == before and torch.equal(x, x0)
    model.eval()


def test_iter_activations_stream(shapenet, demo_stim):
    it = iter_activations(shapenet, demo_stim, ["conv3", "fc2"], pool="max", batch_size=5)
    starts = []
    for start, acts in it:
        starts.append(start)
        assert set(acts) == {"conv3", "fc2"} and acts["conv3"].device == shapenet.device
        assert isinstance(acts["fc2"], torch.Tensor) and acts["fc2"].shape[1] == 4
        assert hook_dicts_empty(shapenet.model)  # nothing left between batches
        break  # an abandoned stream leaves nothing either
    assert starts == [0] and hook_dicts_empty(shapenet.model)
    only = list(iter_activations(shapenet, demo_stim, "fc2", batch_size=5, batches=[2]))
    assert [s for s, _ in only] == [10] and only[0][1]["fc2"].shape == (2, 4)
    with pytest.raises(ValueError, match="`pool` must be one of"):  # raised at the call
        iter_activations(shapenet, demo_stim, "fc2", pool="median")
    with pytest.raises(ValueError, match="`batches` must be batch indices"):
        iter_activations(shapenet, demo_stim, "fc2", batches=[3])


def _bytes(d, layers):
    return {k: (Path(d) / f"{k}.npy").read_bytes() for k in layers}


def test_store_shards_and_reader(shapenet, tmp_path, monkeypatch):
    layers = ["conv2", "fc1"]
    one = activations(shapenet, STIM, layers, batch_size=5, out=tmp_path / "one")
    assert one.complete and one.ids == open_activations(tmp_path / "one").ids
    mem = activations(shapenet, STIM, layers, batch_size=5)
    assert all(np.array_equal(one[k], mem[k]) for k in layers)
    assert isinstance(one["conv2"], np.memmap)
    s0 = activations(shapenet, STIM, layers, batch_size=5, out=tmp_path / "sh", shard="0/2")
    assert not s0.complete and s0.done == [[0, 5], [10, 12]]
    with pytest.raises(ValueError, match="incomplete: 5 of 12 rows"):
        open_activations(tmp_path / "sh")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    s1 = activations(shapenet, STIM, layers, batch_size=5, out=tmp_path / "sh")
    assert s1.complete and _bytes(tmp_path / "sh", layers) == _bytes(tmp_path / "one", layers)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(FileExistsError, match=r"other settings \(differing: \['layers'"):
        activations(shapenet, STIM, ["fc1"], batch_size=5, out=tmp_path / "one")
    again = activations(shapenet, STIM, ["fc1"], batch_size=5, out=tmp_path / "one",
                        force=True)
    assert list(again) == ["fc1"] and not (tmp_path / "one" / "conv2.npy").exists()


def test_h5_export(shapenet, tmp_path):
    h5py = pytest.importorskip("h5py")
    store = activations(shapenet, STIM, ["conv3", "fc2"], pool="mean", out=tmp_path / "s")
    f = export_h5(store, tmp_path / "a.act.h5")
    with h5py.File(f) as h:
        assert h["conv3"].shape == (12, 64, 1, 1) and h["fc2"].shape == (12, 4, 1, 1)
        assert np.array_equal(h["fc2"][:, :, 0, 0], store["fc2"])


KILLED = """
import sys, time
from dnnbrain.probe import actsource
load = actsource.Source.load
def slow(self, a, b):
    time.sleep(0.3)
    return load(self, a, b)
actsource.Source.load = slow
from dnnbrain.cli.act import main
sys.exit(main(sys.argv[1:]))
"""


def _rows_done(part):
    try:
        return sum(b - a for a, b in json.loads(part.read_text())["done"])
    except ValueError:  # replaced while read
        return 0


def test_sigkill_then_resume_is_byte_identical(tmp_path):
    """A real SIGKILL of dnn_act mid-run (its stimulus loading slowed by this test), then a
    plain rerun: the .npy files equal an uninterrupted run's, byte for byte."""
    argv = ["-net", "ShapeNet", "-layer", "conv1_relu", "conv3", "fc2", "-stim", STIM,
            "-batch-size", "1", "-no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, *argv, "-out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / ".progress" / "part0of1.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if part.is_file() and _rows_done(part) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "dnn_act finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    store = open_activations(out, complete=False)
    assert not store.complete and 3 <= sum(b - a for a, b in store.done) < 12
    assert act_cli.main(argv + ["-out", str(out)]) == 0
    assert act_cli.main(argv + ["-out", str(tmp_path / "whole")]) == 0
    layers = ["conv1_relu", "conv3", "fc2"]
    assert _bytes(out, layers) == _bytes(tmp_path / "whole", layers)
    assert open_activations(out).complete


def test_cli_runs_and_summarises(tmp_path, folder, capsys):
    out = tmp_path / "o"
    rc = act_cli.main(["-net", "ShapeNet", "-layer", "conv2", "fc1", "-stim", STIM,
                       "-pool", "max", "-chn", "1", "2", "-out", str(out), "-no-progress"])
    assert rc == 0
    assert capsys.readouterr().out == (f"dnn_act: activations of 2 layers (conv2 (2,), fc1 "
                                       f"(2,); pool max) for 12 stimuli -> {out}/\n")
    assert np.load(out / "fc1.npy").shape == (12, 2)
    rc = act_cli.main(["-net", "resnet18", "-random-weights", "-seed", "1", "-layer", "res1",
                       "-stim", str(folder), "-pool", "mean", "-out", str(tmp_path / "r"),
                       "-device", "cpu", "-no-progress"])
    assert rc == 0 and np.load(tmp_path / "r" / "res1.npy").shape == (3, 64)


@pytest.mark.parametrize("over,needle", [
    ({"-layer": ["conv9"]}, "`layers` must be one of ['conv1'"),
    ({"-chn": ["0"]}, "`units of layer 'fc1'` must be in 1..64 (units count from 1), got 0"),
    ({"-batch-size": ["0"]}, "`-batch-size` must be >= 1, got 0"),
    ({"-shard": ["2/2"]}, "`shard` must be 'k/n' with 0 <= k < n, got 2/2"),
    ({"-stim": ["nowhere.stim.csv"]}, "`stim` not found: 'nowhere.stim.csv'"),
    ({"-seed": ["3"]}, "`-seed` 3 seeds only -random-weights"),
    ({"-h5": ["x.h5"]}, "`-h5` must end with '.act.h5', got 'x.h5'"),
    ({"-out": "FILE"}, "is a file, not a folder"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, over, needle):
    (tmp_path / "f").write_text("x")
    opts = {"-net": ["ShapeNet"], "-layer": ["fc1"], "-stim": [STIM],
            "-out": [str(tmp_path / "out")]}
    opts.update({k: ([str(tmp_path / "f")] if v == "FILE" else v) for k, v in over.items()})
    argv = [a for k, v in opts.items() for a in (k, *v)]
    assert act_cli.main(argv + ["-no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnn_act: error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_module_called_twice_takes_the_asked_call(resnet):
    """torchvision's BasicBlock calls its relu twice: default the last call (a warning),
    ``@1``/``@first`` the first, as the saliency engine counts calls."""
    x = torch.rand(2, 3, 64, 64)
    outs = []
    h = resnet.model.layer1[0].relu.register_forward_hook(lambda m, i, o: outs.append(o.clone()))
    try:
        with pytest.warns(UserWarning, match="runs 2 times in one forward pass"):
            last = activations(resnet, x, ["layer1.0.relu"], preprocessed=True,
                               channels_last=False)
        outs.clear()
        got = activations(resnet, x, ["layer1.0.relu@first", "layer1.0.relu@2"],
                          preprocessed=True, channels_last=False)
    finally:
        h.remove()
    assert np.allclose(got["layer1.0.relu@first"], outs[0].numpy(), atol=1e-6)
    assert np.allclose(got["layer1.0.relu@2"], outs[1].numpy(), atol=1e-6)
    assert np.allclose(last["layer1.0.relu"], outs[1].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="the part after '@' must be"):
        activations(resnet, x, ["layer1.0.relu@second"], preprocessed=True)


@pytest.mark.slow
def test_benchmark_script_runs(tmp_path):
    out = tmp_path / "b.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_activations.py"),
                           "--n", "8", "--batch", "4", "--size", "64", "--no-refs",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["impl"] for r in rows} == {"bare", "bare-cl", "dnnbrain", "dnnbrain-store", "rss"}
    assert all(r["s"] > 0 for r in rows if r["impl"] != "rss")
