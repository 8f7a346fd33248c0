"""dnn_saliency_eval / dnnbrain.evaluate: metrics over the maps of a run folder.

Fast tests use a hand-made run folder whose maps have known answers (a map equal to the
ground-truth box, a flat map); the slow ones run the batch runner on 4 demo stimuli and
the whole evaluation through the CLI.
"""
import contextlib
import csv
import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dnnbrain.batch.store import write_manifest
from dnnbrain.cli.saliency_eval import main
from dnnbrain.evaluate import METRICS, check_options, compute, evaluate_run
from dnnbrain.io.stim import Stimulus, demo_stimulus_file
from dnnbrain.metrics import (average_saliency_focus, boxes_to_mask, pointing_game,
                              proportional_energy, relevance_rank_accuracy)

PLOTS = ("localisation.png", "road.png", "deletion_insertion.png", "randomisation.png")


def _call(argv):
    """main(argv) -> (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _size(stim, i):
    with Image.open(stim.paths[i]) as img:
        return img.height, img.width


def _gt(stim, i, shape=(64, 64)):
    return boxes_to_mask(stim.boxes(i), shape, scale=_size(stim, i))


# --------------------------------------------------------------- a hand-made run folder


def _fake_run(root, stim_file=None, n=4):
    """A run folder without any network call: method 'box' saved each stimulus's
    ground-truth box as its map, method 'flat' a constant (3, 64, 64) map."""
    stim = Stimulus.read(stim_file or demo_stimulus_file())
    cfg = {"title": "fake", "model": {"name": "ShapeNet", "weights": None,
                                      "pretrained": True, "device": "cpu"},
           "stimuli": str(stim_file or demo_stimulus_file()),
           "targets": [{"layer": "fc2", "units": [1], "reduce": "mean"}],
           "methods": [{"name": "vanilla", "label": "box"},
                       {"name": "vanilla", "label": "flat"}],
           "outputs": {"dir": str(root), "save": ["npy"]}, "batch_size": 32, "seed": 0}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.resolved.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rows = []
    for label in ("box", "flat"):
        for i in range(n):
            sid = stim.ids[i]
            rel = f"{label}/fc2/unit1/{sid[:-4]}.npy"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            m = (_gt(stim, i).astype(np.float32) if label == "box"
                 else np.ones((3, 64, 64), np.float32))
            np.save(root / rel, m)
            rows.append({"stimulus": sid, "target": "0", "layer": "fc2", "unit": "1",
                         "requested_unit": "1", "reduce": "mean", "method": label,
                         "activation": "0.5", "predicted_class": "1", "npy": rel})
    write_manifest(root / "manifest.csv", rows, ["npy"])
    return root, stim


@pytest.fixture
def fake_run(tmp_path):
    return _fake_run(tmp_path / "run")


def test_localisation_known_answers(fake_run, monkeypatch):
    run, stim = fake_run

    def no_network(*a, **k):
        raise AssertionError("localisation alone must not build the network")
    monkeypatch.setattr("dnnbrain.evaluate.core.build_dnn", no_network)
    # the keyword arguments a YAML `evaluate:` mapping would hold
    opts = yaml.safe_load(f"metrics: [localisation]\nout_dir: {run / 'ev'}\nprogress: false")
    res = evaluate_run(run, **opts)
    area = [float(_gt(stim, i).mean()) for i in range(4)]
    by = {(m["method"], m["stimulus"]): m["localisation"] for m in res["maps"]}
    for i in range(4):
        box, flat = by["box", stim.ids[i]], by["flat", stim.ids[i]]
        assert box == {"proportional_energy": 1.0, "average_saliency_focus": 1.0,
                       "pointing_game": True, "relevance_rank_accuracy": 1.0,
                       "gt_area_fraction": pytest.approx(area[i])}
        assert flat["proportional_energy"] == pytest.approx(area[i])
        assert flat["relevance_rank_accuracy"] == pytest.approx(area[i])
        assert flat["average_saliency_focus"] == 1.0 and flat["pointing_game"] is False
    agg = {a["method"]: a["metrics"] for a in res["aggregate"]}
    assert agg["flat"]["proportional_energy"]["mean"] == pytest.approx(np.mean(area))
    assert agg["flat"]["proportional_energy"]["std"] == pytest.approx(np.std(area, ddof=1))
    assert agg["box"]["pointing_game"] == {"mean": 1.0, "std": 0.0, "n": 4}
    assert res["targets"][0]["chance"] == pytest.approx(np.mean(area))
    assert "road" not in res["maps"][0] and "randomisation" not in res["aggregate"][0]
    assert sorted(p.name for p in (run / "ev").iterdir()) == [
        "localisation.png", "metrics.json", "table.csv", "table.md"]
    assert "| *random map* |" in res["table"] and f"{np.mean(area):.3f}" in res["table"]


def test_missing_ground_truth_is_skipped_and_masks_are_used(tmp_path, caplog):
    text = demo_stimulus_file().read_text(encoding="utf-8").splitlines()
    data = text.index(next(line for line in text if line.startswith("data="))) + 1
    no_gt = text[data + 1].split(",")                     # shape_01: no box, no mask
    text[data + 1] = ",".join(no_gt[:3] + ["", ""])
    mask_only = text[data + 2].split(",")                 # shape_02: its mask only
    text[data + 2] = ",".join(mask_only[:3] + ["", mask_only[4]])
    stim_file = tmp_path / "gt.stim.csv"
    stim_file.write_text("\n".join(text).replace(
        "path=.", f"path={demo_stimulus_file().parent}") + "\n", encoding="utf-8")
    run, _ = _fake_run(tmp_path / "run")
    stim = Stimulus.read(stim_file)
    with caplog.at_level(logging.WARNING, logger="dnnbrain.evaluate"):
        res = evaluate_run(run, metrics=["localisation"], stim=stim_file, plots=False,
                           progress=False)
    assert "shape_01.png" in caplog.text and "no ground truth" in caplog.text
    by = {(m["method"], m["stimulus"]): m["localisation"] for m in res["maps"]}
    assert by["box", "shape_01.png"] is None
    assert {a["method"]: a["metrics"]["proportional_energy"]["n"]
            for a in res["aggregate"]} == {"box": 3, "flat": 3}
    flat = np.ones((64, 64))
    assert by["flat", "shape_02.png"]["proportional_energy"] == pytest.approx(
        proportional_energy(flat, stim.mask(2)))


@pytest.mark.parametrize("argv, needle", [
    (["{tmp}/nowhere"], "`run_dir` not found"),
    (["{tmp}"], "has no manifest.csv"),
    (["{run}", "-metrics", "localisation", "bogus"],
     "`metrics` must be a non-empty list of ['localisation', 'road'"),
    (["{run}", "-batch-size", "0"], "`batch_size` must be an int >= 1"),
    (["{run}", "-road-percentages", "0.5", "1.2"], "`road_percentages` must be"),
])
def test_user_errors_exit_2(tmp_path, argv, needle):
    run, _ = _fake_run(tmp_path / "run")
    rc, out, err = _call([a.format(tmp=tmp_path, run=run) for a in argv])
    assert rc == 2 and out == ""
    assert err.startswith("dnn_saliency_eval: error: ") and needle in err
    assert err.count("\n") == 1


def test_missing_map_file_is_named(tmp_path):
    run, _ = _fake_run(tmp_path / "run")
    (run / "flat/fc2/unit1/shape_02.npy").unlink()
    rc, out, err = _call([run, "-metrics", "localisation"])
    assert rc == 2 and "flat/fc2/unit1/shape_02.npy" in err and "not found" in err


def test_existing_results_need_force(tmp_path):
    run, _ = _fake_run(tmp_path / "run")
    assert _call([run, "-metrics", "localisation", "-no-plots"])[0] == 0
    rc, _, err = _call([run, "-metrics", "localisation"])
    assert rc == 2 and "already holds metrics.json" in err and "-force" in err
    rc, out, _ = _call([run, "-metrics", "localisation", "-force"])
    table = (run / "eval" / "table.md").read_text(encoding="utf-8")
    assert rc == 0 and out == table + (
        f"dnn_saliency_eval: localisation of 8 maps (2 methods) -> {run / 'eval'}/ "
        "(metrics.json, table.csv, table.md, 1 plot)\n")


def test_unknown_stimulus_in_manifest(tmp_path):
    run, _ = _fake_run(tmp_path / "run")
    other = Stimulus.read(demo_stimulus_file())[[5, 6]].write(tmp_path / "two.stim.csv")
    rc, _, err = _call([run, "-metrics", "localisation", "-stim", other])
    assert rc == 2 and "shape_00.png" in err and "`stim`" in err


def test_check_options():
    assert check_options("road", (0.5,), 0.0, 1, 1, 0, 1, 0).metrics == ("road",)
    assert check_options(["randomisation", "localisation"], (0.1, 0.2), 0.01, 4, 2, 1.5,
                         8, 3).metrics == ("localisation", "randomisation")  # table order
    for kwargs, name in [({"metrics": []}, "metrics"), ({"road_percentages": []},
                                                        "road_percentages"),
                         ({"road_percentages": (0.5, 0.2)}, "road_percentages"),
                         ({"n_steps": 0}, "n_steps"), ({"seed": -1}, "seed"),
                         ({"randomisation_images": True}, "randomisation_images"),
                         ({"road_noise": float("nan")}, "road_noise")]:
        args = dict(metrics=METRICS, road_percentages=(0.5,), road_noise=0.01, n_steps=4,
                    randomisation_images=2, pointing_tolerance=0, batch_size=4, seed=0)
        args.update(kwargs)
        with pytest.raises(ValueError, match=f"`{name}`"):
            check_options(**args)


# --------------------------------------------------------- a real run on 4 demo stimuli


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """guided and Grad-CAM maps of the predicted class of 4 demo stimuli, then the whole
    evaluation through the CLI (3 ROAD percentages, 8 steps, 2 randomisation images)."""
    from dnnbrain.batch import run as batch_run
    root = tmp_path_factory.mktemp("evalrun")
    stim = Stimulus.read(demo_stimulus_file())[[0, 1, 2, 3]]
    cfg = {"model": {"name": "ShapeNet", "device": "cpu"},
           "stimuli": str(stim.write(root / "four.stim.csv")),
           "targets": [{"layer": "fc2", "units": "predicted"}],
           "methods": ["guided", {"name": "gradcam", "cam_layer": "conv4"}],
           "outputs": {"dir": str(root / "run"), "save": ["npy"]}, "batch_size": 4}
    batch_run(cfg, progress=False, workers=0)
    manifest = (root / "run" / "manifest.csv").read_bytes()
    rng = torch.get_rng_state()
    rc, out, err = _call([root / "run", "-road-percentages", 0.2, 0.5, 0.8, "-steps", 8,
                          "-rand-images", 2, "-batch-size", 16])
    assert torch.equal(rng, torch.get_rng_state())  # global random state untouched
    assert (root / "run" / "manifest.csv").read_bytes() == manifest
    return {"run": root / "run", "stim": stim, "rc": rc, "out": out, "err": err,
            "json": json.loads((root / "run" / "eval" / "metrics.json").read_text())}


@pytest.mark.slow
def test_cli_writes_json_table_and_plots(real_run):
    assert real_run["rc"] == 0, real_run["err"]
    ev = real_run["run"] / "eval"
    assert real_run["out"].startswith((ev / "table.md").read_text(encoding="utf-8"))
    assert "| guided | 4 |" in real_run["out"] and "| gradcam | 4 |" in real_run["out"]
    for name in PLOTS:
        with Image.open(ev / name) as img:
            img.verify()
        with Image.open(ev / name) as img:
            assert img.format == "PNG" and min(img.size) > 200
    with open(ev / "table.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["guided", "gradcam"]
    agg = {a["method"]: a["metrics"] for a in real_run["json"]["aggregate"]}
    for r in rows:
        for key in ("proportional_energy", "road_morf_auc", "deletion_auc",
                    "randomisation_spearman"):
            assert float(r[key]) == pytest.approx(agg[r["method"]][key]["mean"], rel=1e-5)


@pytest.mark.slow
def test_metrics_json_values(real_run):
    res, stim, run = real_run["json"], real_run["stim"], real_run["run"]
    assert set(res) == {"run", "settings", "targets", "methods", "maps", "aggregate"}
    assert res["methods"] == ["guided", "gradcam"] and len(res["maps"]) == 8
    assert res["settings"]["road_percentages"] == [0.2, 0.5, 0.8]
    assert len(res["settings"]["deletion_insertion_x"]) == 9
    for m in res["maps"]:
        i = stim.ids.index(m["stimulus"])
        saved = np.load(run / m["map"])
        mask = _gt(stim, i, saved.shape[-2:])
        loc = m["localisation"]
        assert loc["proportional_energy"] == pytest.approx(proportional_energy(saved, mask))
        assert loc["average_saliency_focus"] == pytest.approx(
            average_saliency_focus(saved, mask))
        assert loc["pointing_game"] == pointing_game(saved, mask)
        assert loc["relevance_rank_accuracy"] == pytest.approx(
            relevance_rank_accuracy(saved, mask))
        assert isinstance(m["unit"], int) and 1 <= m["unit"] <= 4  # predicted, resolved
        assert len(m["road"]["morf"]) == 3 and len(m["deletion_insertion"]["deletion"]) == 9
        d = m["deletion_insertion"]["deletion"]
        assert d[0] == pytest.approx(m["road"]["original"], rel=1e-4, abs=1e-4)
        assert d[0] == pytest.approx(m["activation"], rel=1e-4, abs=1e-4)
    for a in res["aggregate"]:
        pe = [m["localisation"]["proportional_energy"] for m in res["maps"]
              if m["method"] == a["method"]]
        assert a["metrics"]["proportional_energy"] == {
            "mean": pytest.approx(np.mean(pe)), "std": pytest.approx(np.std(pe, ddof=1)),
            "n": 4}
        rnd = a["randomisation"]
        assert rnd["layers"] == [None, "fc2", "fc1", "conv4", "conv3", "conv2", "conv1"]
        assert rnd["spearman_abs"][0] == 1.0 and len(rnd["final_spearman_abs"]) == 2
        assert rnd["stimuli"] == stim.ids[:2]


@pytest.mark.slow
def test_methods_beat_chance_and_road_orders(real_run):
    res, stim = real_run["json"], real_run["stim"]
    area = np.mean([_gt(stim, i).mean() for i in range(4)])  # a uniform map's energy
    assert res["targets"][0]["chance"] == pytest.approx(area)
    agg = {a["method"]: a["metrics"] for a in res["aggregate"]}
    for method in ("guided", "gradcam"):
        assert agg[method]["proportional_energy"]["mean"] > area + 0.1
    assert agg["guided"]["road_morf_auc"]["mean"] < agg["guided"]["road_lerf_auc"]["mean"]
    assert agg["guided"]["road_gap"]["mean"] > 0


@pytest.mark.slow
def test_same_seed_same_results_whatever_batch_size(real_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run["run"], run, ignore=shutil.ignore_patterns("eval"))
    kw = dict(metrics=["road", "deletion_insertion"], road_percentages=(0.3, 0.6),
              n_steps=4, seed=1, plots=False, progress=False)
    a = evaluate_run(run, batch_size=3, out_dir=tmp_path / "a", **kw)
    b = evaluate_run(run, batch_size=32, out_dir=tmp_path / "b", **kw)
    for ma, mb in zip(a["maps"], b["maps"]):
        for fam in ("road", "deletion_insertion"):
            for key, val in ma[fam].items():
                assert np.allclose(val, mb[fam][key], rtol=1e-5, atol=1e-6), (fam, key)


def test_localisation_error_bars_are_the_tables_std_and_say_so(tmp_path):
    from dnnbrain.evaluate import evaluate_run
    from dnnbrain.evaluate.plots import BAR_NOTE, localisation_figure
    run, _ = _fake_run(tmp_path / "run")
    res = evaluate_run(run, metrics="localisation", plots=False, progress=False)
    fig = localisation_figure(res)
    assert fig._supxlabel.get_text() == BAR_NOTE and "sample std" in BAR_NOTE
    ax = fig.axes[0]  # proportional energy: one bar per method
    from matplotlib.container import ErrorbarContainer
    (err,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segs = err.lines[2][0].get_segments()
    assert len(segs) == len(res["aggregate"]) == 2
    for agg, seg in zip(res["aggregate"], segs):
        s = agg["metrics"]["proportional_energy"]
        half = (seg[1][1] - seg[0][1]) / 2
        assert half == pytest.approx(s["std"] or 0.0)  # the table's +- (sample std)
    assert "± sample std" in res["table"]


def test_identical_maps_of_one_unit_are_scored_once(tmp_path, monkeypatch):
    """A `predicted` target's map equal (bytes) to a listed class's map of the same unit
    and stimulus takes its ROAD and deletion/insertion results instead of being scored
    again; a map that differs is scored."""
    root, stim = _fake_run(tmp_path / "run", n=3)
    cfg = yaml.safe_load((root / "config.resolved.yaml").read_text(encoding="utf-8"))
    cfg["targets"].append({"layer": "fc2", "units": ["predicted"], "reduce": "mean"})
    (root / "config.resolved.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for i in range(3):  # copies of the 'box' maps as target 1's; stimulus 2's altered
        src = next(r for r in rows if r["method"] == "box" and r["stimulus"] == stim.ids[i])
        m = np.load(root / src["npy"])
        if i == 2:
            m[0, 0] += 1
        rel = f"box/fc2/unitpred/{stim.ids[i][:-4]}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, m)
        rows.append(dict(src, target="1", requested_unit="predicted", npy=rel))
    write_manifest(root / "manifest.csv", rows, ["npy"])
    scored = []
    real = compute.faithfulness

    def counting(dnn, layer, reduce, units, x, mag, *a, **k):
        scored.append(len(mag))
        return real(dnn, layer, reduce, units, x, mag, *a, **k)
    monkeypatch.setattr("dnnbrain.evaluate.compute.faithfulness", counting)
    res = evaluate_run(root, metrics=["road", "deletion_insertion"], road_percentages=(0.5,),
                       n_steps=4, plots=False, progress=False, out_dir=tmp_path / "ev")
    assert scored == [3, 3, 1]  # box, flat, altered one
    by = {(m["target"], m["method"], m["stimulus"]): m for m in res["maps"]}
    for i in range(3):
        a, b = by[0, "box", stim.ids[i]], by[1, "box", stim.ids[i]]
        same = a["road"] == b["road"] and a["deletion_insertion"] == b["deletion_insertion"]
        assert same == (i < 2)
        assert b["road"]["original"] == pytest.approx(a["road"]["original"])


def _device_equals_cpu(run_dir, out, device):
    """Every faithfulness curve of an evaluation on ``device`` against the same evaluation
    on the CPU (ROAD's noise off: it is drawn on the device), and its randomisation test
    complete (the re-initialised weights are drawn on the device too, so its correlations
    are another sample, not the CPU's)."""
    kw = dict(metrics=["road", "deletion_insertion", "randomisation"],
              road_percentages=(0.3, 0.6), road_noise=0.0, n_steps=4,
              randomisation_images=2, plots=False, progress=False)
    cpu = evaluate_run(run_dir, device="cpu", out_dir=out / "cpu", **kw)
    got = evaluate_run(run_dir, device=device, out_dir=out / device, **kw)
    assert len(got["maps"]) == len(cpu["maps"]) == 8
    for ma, mb in zip(cpu["maps"], got["maps"]):
        for fam in ("road", "deletion_insertion"):
            for key, val in ma[fam].items():
                assert np.allclose(val, mb[fam][key], rtol=1e-3, atol=1e-4), (fam, key)
    for a, b in zip(cpu["aggregate"], got["aggregate"]):
        ra, rb = a["randomisation"], b["randomisation"]
        assert ra["layers"] == rb["layers"] and rb["spearman_abs"][0] == 1.0
        assert np.all(np.abs(rb["spearman_abs"]) <= 1.0) and len(rb["spearman_abs"]) == len(
            ra["spearman_abs"])


@pytest.mark.cuda
def test_evaluation_on_cuda_equals_the_cpu(real_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run["run"], run, ignore=shutil.ignore_patterns("eval"))
    _device_equals_cpu(run, tmp_path, "cuda")
