"""The unit report: probe_units, dnn_probe and the probe: section of a YAML run.

Values are checked against the pieces computed separately: the top/bottom tables are the
top-k of the activations, the receptive field is theoretical_rf's, the feature
visualisation drives the unit harder than the best stimulus, every link of every page
resolves to a file.
"""
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from dnnbrain.batch import run
from dnnbrain.batch.config import load_config
from dnnbrain.cli.probe import main
from dnnbrain.dnn.algo import VanillaSaliencyImage
from dnnbrain.dnn.models import build_network
from dnnbrain.io.stim import Stimulus, demo_stimulus_file
from dnnbrain.probe.activations import activations
from dnnbrain.probe.receptive import theoretical_rf
from dnnbrain.probe.report import probe_units, unit_folder
from dnnbrain.probe.reportfiles import draw_box

from .conftest import hook_dicts_empty


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        ref = attrs.get("src") if tag == "img" else attrs.get("href") if tag == "a" else None
        if ref is not None and not ref.startswith("#"):
            self.refs.append(ref)


def assert_links_resolve(page: Path) -> list:
    """Every img/a of ``page`` is a relative link to an existing file; returns them."""
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.refs, page
    for ref in parser.refs:
        assert "://" not in ref and not ref.startswith("/"), ref
        assert (page.parent / unquote(ref)).is_file(), (page, ref)
    return parser.refs


def assert_report_pages(out: Path, layer: str, units) -> None:
    refs = assert_links_resolve(out / "index.html")
    for u in units:
        page = out / unit_folder(layer, u) / "report.html"
        assert f"{unit_folder(layer, u)}/report.html" in refs
        assert_links_resolve(page)


def read_table(path: Path):
    """Rows of a .stim.csv (after its header lines) or a plain .csv, as dicts."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("data="))
    return list(csv.DictReader([lines[start][5:]] + lines[start + 1:]))


def expected_ranking(values: np.ndarray, k: int):
    """Top and bottom ``k`` rows of ``values`` (N,) by a stable full sort."""
    top = np.argsort(-values, kind="stable")[:k]
    bottom = np.argsort(values, kind="stable")[:k]
    return top, bottom


def model_state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()])


def assert_model_unchanged(model, before):
    state, flags = before
    assert flags == [m.training for m in model.modules()]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert hook_dicts_empty(model)


def test_draw_box_outlines_exactly_the_box():
    img = np.zeros((10, 12, 3), np.uint8)
    out = draw_box(img, (2, 3, 7, 9), colour=(255, 0, 0))
    mask = out[..., 0] == 255
    want = np.zeros((10, 12), bool)
    want[2, 3:9] = want[6, 3:9] = want[2:7, 3] = want[2:7, 8] = True
    np.testing.assert_array_equal(mask, want)
    assert not img.any()  # the input is not drawn on


def test_small_report_values_links_and_no_trace(shapenet, tmp_path):
    """fc2 (the class units) over 6 network inputs: tables equal the top-k of the
    activations, responses.npy equals them, every link resolves, the model is as it was."""
    stim = Stimulus.read(demo_stimulus_file())
    x = shapenet.test_transform.batch([str(p) for p in stim.paths[:6]])
    before, x0 = model_state(shapenet.model), x.clone()
    rep = probe_units(shapenet, x, "fc2", [2, 4], tmp_path, k=2, methods=["vanilla"],
                      featvis_steps=0, preprocessed=True)
    acts = activations(shapenet, x, ["fc2"], units=[2, 4], preprocessed=True)["fc2"]
    np.testing.assert_array_equal(np.load(tmp_path / "responses.npy"), acts)
    for u, unit in enumerate([2, 4]):
        folder = tmp_path / unit_folder("fc2", unit)
        top, bottom = expected_ranking(acts[:, u], 2)
        for which, rows in (("top", top), ("bottom", bottom)):
            with open(folder / f"{which}.csv", newline="") as fh:
                table = list(csv.DictReader(fh))
            assert [r["stimID"] for r in table] == [str(i) for i in rows]
            np.testing.assert_array_equal([float(r["value"]) for r in table], acts[rows, u])
            maps = np.load(folder / f"{which}_vanilla.npy")  # aimed at this unit
            want = VanillaSaliencyImage(shapenet, "fc2", unit).backprop(
                x[list(rows)], preprocessed=True)
            np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-7)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["unit"] == unit and summary["receptive_field"] is None
        assert summary["class"] == ["circle", "square", "triangle", "star"][unit - 1]
        assert summary["featvis"] is None and not (folder / "featvis.png").exists()
        np.testing.assert_array_equal(np.load(folder / "responses.npy"), acts[:, u])
    assert rep.files == sum(1 for f in tmp_path.rglob("*") if f.is_file())
    assert_report_pages(tmp_path, "fc2", [2, 4])
    again = probe_units(shapenet, x, "fc2", [2, 4], tmp_path, k=1, methods=[],
                        featvis_steps=0, preprocessed=True)  # an earlier report's files go
    assert not list(tmp_path.rglob("top_2*")) and not list(tmp_path.rglob("*_vanilla*"))
    assert again.files == sum(1 for f in tmp_path.rglob("*") if f.is_file())
    assert_model_unchanged(shapenet.model, before)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"units": [5]}, ValueError, "must be in 1..4 (units count from 1), got 5"),
    ({"units": [(1, 2, 2)]}, ValueError, "`units` must be a channel"),
    ({"units": [1, 1]}, ValueError, "names a unit more than once"),
    ({"layer": "nosuch"}, ValueError, "`layers` must be one of"),
    ({"methods": ["nosuch"]}, ValueError, "`method` must be one of"),
    ({"methods": [{"name": "gradcam", "nosuch": 1}]}, TypeError, "nosuch"),
    ({"k": 7}, ValueError, "`k` must be an int in 1..6"),
    ({"reduce": "median"}, ValueError, "`reduce` must be one of ['mean', 'max'] (how the "
     "unit's activation map becomes one number), got 'median'"),
    ({"featvis_steps": -1}, ValueError, "`featvis_steps` must be an int >= 0"),
    ({"methods": [{"name": "vanilla", "label": "../x"}]}, ValueError,
     "`methods` label must be letters, digits"),
])
def test_api_refuses_bad_input_before_writing(shapenet, tmp_path, kwargs, error, message):
    x = torch.rand(6, 3, 64, 64)
    args = dict({"layer": "fc2", "units": [1], "featvis_steps": 0}, **kwargs)
    with pytest.raises(error, match=re.escape(message)):
        probe_units(shapenet, x, out=tmp_path / "out", preprocessed=True, **args)
    assert not (tmp_path / "out").exists() and hook_dicts_empty(shapenet.model)


@pytest.mark.parametrize("argv,message", [
    (["-chn", "99"], "`-chn` must be in 1..4"),
    (["-chn", "0"], "`-chn` values count from 1, got 0"),
    (["-layer", "nosuch"], "`-layer` must be one of"),
    (["-meth", "nosuch"], "`-meth` must be among"),
    (["-top", "13"], "`-top` 13 is more than the 12 stimuli"),
    (["-param", "steps=4"], "`-param` 'steps' is not a parameter of any -meth method"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    base = {"-net": "ShapeNet", "-layer": "fc2", "-chn": "1",
            "-stim": str(demo_stimulus_file()), "-out": str(tmp_path / "out")}
    flags = dict(base, **{argv[0]: argv[1]})
    args = [a for kv in flags.items() for a in kv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnn_probe: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_quiet_without_methods_or_featvis(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "3", "-stim",
                 str(demo_stimulus_file()), "-top", "2", "-meth", "-featvis-steps", "0",
                 "-out", str(out), "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    folder = out / unit_folder("fc2", 3)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["methods"] == [] and summary["featvis"] is None
    assert summary["class"] == "triangle"
    assert len(read_table(folder / "top.stim.csv")) == 2
    assert_report_pages(out, "fc2", [3])


def test_yaml_probe_section_validated_before_work(tmp_path):
    cfg = {"model": {"name": "ShapeNet"}, "stimuli": str(demo_stimulus_file()),
           "targets": [{"layer": "fc2", "units": [1]}], "methods": ["vanilla"],
           "outputs": {"dir": str(tmp_path / "out")},
           "probe": {"layer": "conv4", "units": [1, 65], "k": 20, "featvis": 3,
                     "methods": ["vanilla", {"name": "gradcam", "nosuch": 1}],
                     "dir": "../elsewhere"}}
    with pytest.raises(ValueError) as err:
        run(cfg)
    text = str(err.value)
    for line in ("probe.featvis: unknown key 'featvis'",
                 "probe.units: must be in 1..64", "probe.k: must be at most the number of "
                 "stimuli (12), got 20", "probe.methods[1].nosuch: is not a parameter of "
                 "method 'gradcam'", "probe.dir: must be a relative folder"):
        assert line in text, text
    assert not (tmp_path / "out").exists()
    for where, clash, extra in (("vanilla", "vanilla", {}), ("eval/units", "eval", {}),
                                ("manifest.csv", "manifest.csv", {}),
                                ("results", "results/eval",
                                 {"evaluate": {"metrics": ["localisation"],
                                               "out_dir": "results/eval"}})):
        with pytest.raises(ValueError, match=f"probe.dir: '{where}' is, holds or lies in "
                                             f"'{clash}', which the run writes"):
            load_config(dict(cfg, probe={"layer": "conv4", "units": 3, "dir": where}, **extra))
    assert load_config(dict(cfg, probe={"layer": "conv4", "units": 3, "dir": "evaluation"})
                       )["probe"]["dir"] == "evaluation"  # a name that only begins alike
    good = dict(cfg, probe={"layer": "conv4", "units": 3})
    resolved = load_config(good)["probe"]
    assert resolved == {"layer": "conv4", "units": [3], "k": 8, "reduce": "max",
                        "featvis_steps": 256, "dir": "probe",
                        "methods": [{"name": "vanilla", "label": "vanilla"}]}
    assert load_config(dict(good, probe={**good["probe"], **resolved}))["probe"] == resolved
    assert "probe" not in load_config({k: v for k, v in cfg.items() if k != "probe"})


@pytest.mark.slow
def test_demo_report_matches_separate_pieces(shapenet, demo_stim, tmp_path):
    """conv4 channels over the shipped stimuli: tables, receptive field and its boxes,
    feature visualisation, histogram and pages."""
    before = model_state(shapenet.model)
    units, k = [1, 2], 3
    rep = probe_units(shapenet, demo_stimulus_file(), "conv4", units, tmp_path, k=k,
                      methods=["vanilla", {"name": "gradcam", "label": "cam"}],
                      featvis_steps=64, seed=0)
    vals = activations(shapenet, demo_stim, ["conv4"], pool="max", units=units)["conv4"]
    maps = activations(shapenet, demo_stim, ["conv4"], units=units)["conv4"]  # (N, U, h, w)
    rf = theoretical_rf(shapenet, "conv4", input_size=64)
    for u, unit in enumerate(units):
        folder = tmp_path / unit_folder("conv4", unit)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["receptive_field"] == {
            "size": list(rf.size), "jump": list(rf.jump), "start": list(rf.start),
            "grid": list(rf.grid), "input_size": [64, 64], "spans_input": False}
        assert summary["receptive_field"]["size"] == [38, 38]  # 3x3 convs and 2x2 pools
        for which, rows in zip(("top", "bottom"), expected_ranking(vals[:, u], k)):
            table = read_table(folder / f"{which}.stim.csv")
            assert [r["stimID"] for r in table] == [demo_stim.ids[i] for i in rows]
            np.testing.assert_allclose([float(r["value"]) for r in table], vals[rows, u],
                                       rtol=1e-6)
            for r, i, entry in zip(table, rows, summary[which]):
                peak = np.unravel_index(maps[i, u].argmax(), maps[i, u].shape)
                assert (int(r["row"]), int(r["col"])) == (peak[0] + 1, peak[1] + 1)
                assert entry["box"] == list(rf.box(*peak))
            assert np.load(folder / f"{which}_cam.npy").shape == (k, 64, 64)
            # the receptive field's outline is drawn in green on the stimulus picture
            pic = np.asarray(Image.open(folder / f"{which}_1.png"))
            top_, left, bottom, right = summary[which][0]["box"]
            assert (pic[top_, left:right] == [0, 255, 0]).all()
        fv = summary["featvis"]
        assert fv["activation"] > summary["top"][0]["value"] == pytest.approx(
            float(vals[:, u].max()))
        assert np.asarray(Image.open(folder / "featvis.png")).shape == (64, 64, 3)
        assert Image.open(folder / "histogram.png").size[0] > 100
    assert [r.unit for r in rep.units] == units and rep.rf == rf
    assert_report_pages(tmp_path, "conv4", units)
    assert_model_unchanged(shapenet.model, before)


@pytest.mark.slow
def test_cli_torchvision_random_weights_on_an_image_folder(tmp_path, capsys):
    """dnn_probe on a torchvision ResNet-18 (random weights) over a user's folder of
    images of several sizes."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(240, 320), (224, 224), (300, 200), (256, 256)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    out = tmp_path / "out"
    argv = ["-net", "Resnet18", "-random-weights", "-seed", "1", "-layer", "res3",
            "-chn", "5", "17", "-stim", str(folder), "-top", "2", "-meth", "vanilla",
            "-featvis-steps", "3", "-out", str(out), "-device", "cpu"]
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "2 channels of res3 over 4 stimuli" in line
    assert str(out / "index.html") in line
    with torch.random.fork_rng():
        torch.manual_seed(1)
        dnn = build_network("Resnet18", pretrained=False)
    stim = Stimulus.from_folder(folder)
    vals = activations(dnn, stim, ["res3"], pool="max", units=[5, 17])["res3"]
    rf = theoretical_rf(dnn, "res3")
    for u, unit in enumerate([5, 17]):
        d = out / unit_folder("res3", unit)
        top, bottom = expected_ranking(vals[:, u], 2)
        for which, rows in (("top", top), ("bottom", bottom)):
            table = read_table(d / f"{which}.stim.csv")
            assert [r["stimID"] for r in table] == [stim.ids[i] for i in rows]
            np.testing.assert_allclose([float(r["value"]) for r in table], vals[rows, u],
                                       rtol=1e-5)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["receptive_field"]["size"] == list(rf.size)
        assert summary["receptive_field"]["jump"] == list(rf.jump) == [16, 16]
        assert np.load(d / "top_vanilla.npy").shape == (2, 3, 224, 224)
    assert_report_pages(out, "res3", [5, 17])
    assert main(argv) == 2  # -out is not empty now
    assert "pass -force" in capsys.readouterr().err


@pytest.mark.slow
def test_yaml_run_writes_linked_reports_and_skips_them_when_done(tmp_path):
    out = tmp_path / "run"
    cfg = {"model": {"name": "ShapeNet"}, "stimuli": str(demo_stimulus_file()),
           "targets": [{"layer": "fc2", "units": [1]}], "methods": ["vanilla"],
           "outputs": {"dir": str(out), "save": ["png"]}, "seed": 2,
           "probe": {"layer": "conv3", "units": [4], "k": 2, "featvis_steps": 4,
                     "methods": ["vanilla", {"name": "smoothgrad", "n_samples": 2}]}}
    run(cfg)
    refs = assert_links_resolve(out / "index.html")
    assert "probe/index.html" in refs
    assert_report_pages(out / "probe", "conv3", [4])
    summary = json.loads((out / "probe" / "conv3_chn4" / "summary.json").read_text())
    vals = activations(build_network("ShapeNet"), demo_stimulus_file(), ["conv3"],
                       pool="max", units=[4])["conv3"][:, 0]
    top, _ = expected_ranking(vals, 2)
    assert [r["index"] for r in summary["top"]] == top.tolist()
    assert summary["featvis"]["seed"] == 2 and summary["methods"] == ["vanilla", "smoothgrad"]
    stamp = (out / "probe" / "index.html").stat().st_mtime_ns
    run(cfg)  # complete: neither the maps nor the reports are redone
    assert (out / "probe" / "index.html").stat().st_mtime_ns == stamp
    assert "probe/index.html" in assert_links_resolve(out / "index.html")
