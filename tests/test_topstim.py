"""Top stimuli: streaming top-k equals a stable full sort; the dnn_topstim command."""
import numpy as np
import pytest
import torch
from PIL import Image

from dnnbrain.cli.topstim import main
from dnnbrain.io.stim import Stimulus, demo_stimulus_file
from dnnbrain.probe.activations import activations
from dnnbrain.probe.topstim import RunningTopK, top_stimuli

from .conftest import hook_dicts_empty


def test_running_topk_ties_by_stimulus_order():
    vals = torch.tensor([3., 1., 3., 2., 3., 1., float("nan"), 3.])[:, None]
    top, low = RunningTopK(3, largest=True), RunningTopK(3, largest=False)
    for start in range(0, 8, 2):  # batches of 2
        for state in (top, low):
            state.update(vals[start:start + 2], start)
            assert state.values.shape[1] <= 3 and state.index.shape == state.values.shape
    assert top.index.tolist() == [[0, 2, 4]] and top.values.tolist() == [[3., 3., 3.]]
    assert low.index.tolist() == [[1, 5, 3]] and low.values.tolist() == [[1., 1., 2.]]


@pytest.fixture(scope="module")
def tied_inputs(shapenet):
    """23 network inputs with exact duplicates (rows 1 = 6 = 17, 3 = 9)."""
    from dnnbrain.io.stim import Stimulus
    stim = Stimulus.read(demo_stimulus_file())
    x = shapenet.test_transform.batch([str(p) for p in stim.paths])
    x = torch.cat([x, x[:11].flip(-1)])
    x[6], x[17], x[9] = x[1], x[1], x[3]
    return x


def _stable_order(v, largest):
    return np.argsort(-v if largest else v, axis=0, kind="stable").T


@pytest.mark.parametrize("layer,units,reduce", [
    ("conv2_relu", [1, 5, 9, 17], "max"), ("conv2_relu", [2, 3], "mean"),
    ("conv3_relu", [(1, 4, 4), (7, 1, 8), (30, 8, 2)], "max"), ("fc1_relu", None, "max"),
])
def test_streaming_equals_full_sort(shapenet, tied_inputs, layer, units, reduce):
    model = shapenet.model
    flags = [m.training for m in model.modules()]
    before = tied_inputs.clone()
    k = 7
    got = top_stimuli(shapenet, tied_inputs, layer, units, k=k, reduce=reduce,
                      bottom=True, batch_size=4, preprocessed=True, keep_values=True)
    spatial = units is not None and isinstance(units[0], tuple)
    stored = activations(shapenet, tied_inputs, [layer], units=units, batch_size=4,
                         preprocessed=True)[layer]  # (N, U, ...)
    maps = stored.reshape(len(stored), stored.shape[1], -1)
    v = activations(shapenet, tied_inputs, [layer], pool=reduce, units=units,
                    batch_size=4, preprocessed=True)[layer]  # (N, U), the stored values
    # exact ties (duplicate images, ReLU zeros) inside the selections: order matters
    assert any(len(set(col[o])) < k for col, o in zip(v.T, _stable_order(v, False)[:, :k]))
    np.testing.assert_array_equal(got.values, v.T)  # every value, from the same pass
    for ranking, largest in ((got.top, True), (got.bottom, False)):
        order = _stable_order(v, largest)[:, :k]
        np.testing.assert_array_equal(ranking.index, order)
        np.testing.assert_array_equal(ranking.value, np.take_along_axis(v.T, order, 1))
    if stored.ndim == 4 and not spatial:  # the location of the maximum, from 1
        flat = np.take_along_axis(maps.transpose(1, 0, 2), got.top.index[..., None], 1)
        where = flat.argmax(-1)
        w = stored.shape[-1]
        np.testing.assert_array_equal(got.top.location[..., 0], where // w + 1)
        np.testing.assert_array_equal(got.top.location[..., 1], where % w + 1)
        peak = np.take_along_axis(flat, where[..., None], -1)[..., 0]
        if reduce == "max":
            np.testing.assert_array_equal(peak, got.top.value)
    if spatial:
        assert got.top.location[2].tolist() == [[8, 2]] * k
    if units is None:
        assert got.units == list(range(1, stored.shape[1] + 1)) and got.top.location is None
    assert torch.equal(tied_inputs, before) and hook_dicts_empty(model)
    assert flags == [m.training for m in model.modules()]


def test_memory_state_does_not_grow_with_stimuli(shapenet, tied_inputs):
    state = RunningTopK(5)
    gen = torch.Generator().manual_seed(0)
    for start in range(0, 4000, 200):  # 20 batches of 200 stimuli, 64 units
        state.update(torch.randn(200, 64, generator=gen), start,
                     torch.zeros(200, 64, 2, dtype=torch.long))
        assert state.values.shape == state.index.shape == (64, 5)
        assert state.location.shape == (64, 5, 2)
    small = top_stimuli(shapenet, tied_inputs[:6], "conv4", k=3, preprocessed=True)
    big = top_stimuli(shapenet, tied_inputs, "conv4", k=3, preprocessed=True)
    assert small.top.index.shape == big.top.index.shape == (64, 3)


def test_errors_leave_no_hooks(shapenet, tied_inputs):
    with pytest.raises(ValueError, match=r"1\.\.64"):
        top_stimuli(shapenet, tied_inputs, "conv4", [999], k=2, preprocessed=True)
    with pytest.raises(ValueError, match=r"`k` must be an int in 1\.\.23"):
        top_stimuli(shapenet, tied_inputs, "conv4", k=24, preprocessed=True)
    with pytest.raises(ValueError, match=r"^`reduce` must be one of \['mean', 'max'\] \(.*\), "
                                         r"got 'median'$"):
        top_stimuli(shapenet, tied_inputs, "conv4", k=2, reduce="median")
    assert hook_dicts_empty(shapenet.model)


def test_cli_demo(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["-net", "ShapeNet", "-layer", "conv4", "-chn", "2", "7", "-top", "4",
                 "-stim", str(demo_stimulus_file()), "-out", str(out), "-bottom"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("dnn_topstim: top and bottom 4 of 12") and "\n" not in line
    stim = Stimulus.read(demo_stimulus_file())
    api = top_stimuli(__import__("dnnbrain.dnn.models").dnn.models.ShapeNet(), stim,
                      "conv4", [2, 7], k=4, bottom=True)
    for u, chn in enumerate([2, 7]):
        top = Stimulus.read(out / f"conv4_chn{chn}_top4.stim.csv")
        assert list(top.ids) == api.selected_ids(u)
        assert list(top.data["class"]) == list(stim.data["class"][api.top.index[u]])
        np.testing.assert_allclose(top.data["value"], api.top.value[u], rtol=1e-6)
        assert (np.diff(top.data["value"]) <= 0).all()
        assert list(top.data["row"]) == list(api.top.location[u, :, 0])
        low = Stimulus.read(out / f"conv4_chn{chn}_bottom4.stim.csv")
        assert (np.diff(low.data["value"]) >= 0).all()
        for which in ("top", "bottom"):
            img = Image.open(out / f"conv4_chn{chn}_{which}4.png")
            assert img.size[0] > 200


def test_cli_user_folder_torchvision(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            folder / f"im{i}.png")
    out = tmp_path / "out"
    assert main(["-net", "Resnet18", "-random-weights", "-seed", "3", "-layer", "res1",
                 "-chn", "5", "-top", "2", "-stim", str(folder), "-out", str(out),
                 "-reduce", "mean", "-device", "cpu", "-batch-size", "2"]) == 0
    assert "reduce mean" in capsys.readouterr().out
    table = Stimulus.read(out / "res1_chn5_top2.stim.csv")
    assert len(table) == 2 and set(table.ids) <= {f"im{i}.png" for i in range(5)}
    assert (out / "res1_chn5_top2.png").is_file()


@pytest.mark.parametrize("argv,match", [
    (["-top", "0"], "`-top` must be >= 1"),
    (["-top", "13"], "more than the 12 stimuli"),
    (["-chn", "0"], "`-chn` values count from 1"),
    (["-layer", "nope"], "`layers` must be one of"),
    (["-chn", "65"], r"1\.\.64"),
    (["-stim", "missing.stim.csv"], "not found"),
])
def test_cli_bad_input_exit_2(tmp_path, capsys, argv, match):
    args = {"-net": "ShapeNet", "-layer": "conv4", "-chn": "1", "-top": "3",
            "-stim": str(demo_stimulus_file()), "-out": str(tmp_path / "o")}
    args.update(dict(zip(argv[::2], argv[1::2])))
    assert main([t for kv in args.items() for t in kv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnn_topstim: error:") and "\n" not in err
    assert __import__("re").search(match, err), err
