"""Class-level conveniences in YAML runs and on the command line (units: label,
unit_base, outputs.reduce), where a run writes without -out, and the README's
batch-then-eval sequence."""
import csv
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dnnbrain.batch import load_config, run
from dnnbrain.cli.saliency import main as saliency_main
from dnnbrain.cli.saliency_batch import main as batch_main
from dnnbrain.cli.saliency_eval import main as eval_main
from dnnbrain.dnn.algo import saliency
from dnnbrain.io.stim import Stimulus, demo_stimulus_file

REPO = Path(__file__).resolve().parents[1]
DEMO = str(demo_stimulus_file())


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def base(out, **target):
    return {"model": {"name": "ShapeNet", "device": "cpu"}, "stimuli": DEMO,
            "targets": [dict({"layer": "fc2"}, **target)], "methods": ["vanilla"],
            "outputs": {"dir": str(out), "save": ["npy"]}, "batch_size": 5}


def test_yaml_units_label_and_unit_base(shapenet, demo_stim, tmp_path):
    res = run(base(tmp_path / "o", units=["label", 0], unit_base=0), progress=False,
              workers=0)
    assert res.config["targets"] == [{"layer": "fc2", "units": ["label", 1],
                                      "reduce": "mean"}]  # resolved from 1, no unit_base
    table = rows(res.manifest)
    lab = [r for r in table if r["requested_unit"] == "label"]
    assert [r["unit"] for r in lab] == [str(v + 1) for v in demo_stim.labels]
    assert {r["unit"] for r in table if r["requested_unit"] == "1"} == {"1"}
    want = saliency(shapenet, demo_stim, layer="fc2", unit="label")
    for i, r in enumerate(lab):
        assert r["npy"] == f"vanilla/fc2/unitlabel/{Path(r['stimulus']).stem}.npy"
        np.testing.assert_allclose(np.load(tmp_path / "o" / r["npy"]), want[i], atol=1e-6)
    # what the stimulus got: its label unit's activation, as a fixed unit would record
    fixed = rows(run(base(tmp_path / "f", units=[1, 2, 3, 4]), progress=False,
                     workers=0).manifest)
    acts = {(r["stimulus"], r["unit"]): r["activation"] for r in fixed}
    assert all(r["activation"] == acts[r["stimulus"], r["unit"]] for r in lab)


def test_yaml_label_needs_the_label_column_and_valid_bases(tmp_path):
    csv_file = tmp_path / "nolabel.stim.csv"
    csv_file.write_text(f"type=image\npath={Path(DEMO).parent}\ndata=stimID,class\n"
                        "shape_00.png,square\n")
    with pytest.raises(ValueError) as err:
        load_config(dict(base(tmp_path / "o", units="label"), stimuli=str(csv_file)))
    line = [ln for ln in str(err.value).splitlines() if "label" in ln][0]
    assert line.strip() == (f"targets[0].units: 'label' needs a 'label' column (class "
                            f"indices from 0) in the stimuli: the stimulus file "
                            f"'{csv_file}' has columns ['stimID', 'class']")
    for bad in (2, True, "0"):
        with pytest.raises(ValueError, match=r"targets\[0\]\.unit_base: must be 0 "):
            load_config(base(tmp_path / "o", units=[1], unit_base=bad))
    with pytest.raises(ValueError, match=r"targets\[0\]\.units\[0\]: must be in 0\.\.3 "
                                         r"\(units count from 0, unit_base 0; layer 'fc2' "
                                         r"has 4 units\), got 4"):
        load_config(base(tmp_path / "o", units=[4], unit_base=0))
    conv = load_config(dict(base(tmp_path / "o", units=[[0, 0, 0]], unit_base=0),
                            targets=[{"layer": "conv4", "units": [[0, 0, 0]],
                                      "unit_base": 0}]))
    assert conv["targets"][0]["units"] == [[1, 1, 1]]


def test_yaml_outputs_reduce_maxabs_pictures(shapenet, tmp_path):
    from dnnbrain import viz
    cfg = base(tmp_path / "o", units=[2])
    cfg["outputs"].update(save=["npy", "png"], reduce="maxabs")
    cfg["stimuli"] = [str(Path(DEMO).parent / "shape_00.png")]
    res = run(cfg, progress=False, workers=0)
    r = rows(res.manifest)[0]
    from PIL import Image
    png = np.asarray(Image.open(tmp_path / "o" / r["png"]).convert("RGB"))
    m = np.load(tmp_path / "o" / r["npy"])
    np.testing.assert_array_equal(png, viz.heatmap(m, "inferno", 99.0, reduce="maxabs"))
    with pytest.raises(ValueError, match=r"outputs\.reduce: must be one of \['sumabs', "
                                         r"'maxabs'\]"):
        load_config(dict(base(tmp_path / "o", units=[1]),
                         outputs={"dir": str(tmp_path), "reduce": "max"}))


def test_cli_unit_base_and_label(tmp_path, capsys):
    args = ["-net", "ShapeNet", "-layer", "fc2", "-stim", DEMO, "-meth", "vanilla",
            "-ncol", "12"]
    assert saliency_main(args + ["-chn", "0", "label", "-unit-base", "0",
                                 "-out", str(tmp_path / "a")]) == 0
    assert saliency_main(args + ["-chn", "1", "-out", str(tmp_path / "b")]) == 0
    a = np.load(tmp_path / "a" / "npy" / "shape_03_fc2_chn1.npy")  # named from 1
    np.testing.assert_array_equal(a, np.load(tmp_path / "b" / "npy" /
                                             "shape_03_fc2_chn1.npy"))
    stim = Stimulus.read(DEMO)
    lab = np.load(tmp_path / "a" / "npy" / f"shape_03_fc2_chn{stim.labels[3] + 1}.npy")
    assert saliency_main(args + ["-chn", str(stim.labels[3] + 1),
                                 "-out", str(tmp_path / "c")]) == 0
    np.testing.assert_array_equal(lab, np.load(
        tmp_path / "c" / "npy" / f"shape_03_fc2_chn{stim.labels[3] + 1}.npy"))
    capsys.readouterr()
    assert saliency_main(args + ["-chn", "1", "-unit-base", "2",
                                 "-out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnn_saliency: error: `-unit-base` must be 0") and "\n" not in err
    assert not (tmp_path / "d").exists()
    assert saliency_main(args[:4] + ["-stim", str(Path(DEMO).parent), "-meth", "vanilla",
                                     "-chn", "label", "-out", str(tmp_path / "e")]) == 2
    assert "`-chn label` needs a 'label' column" in capsys.readouterr().err


def test_outputs_go_below_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = load_config(REPO / "docs" / "examples" / "demo_run.yaml")
    assert demo["outputs"]["dir"] == str(tmp_path / "out" / "demo_run")  # not in docs/
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "r.yaml").write_text(textwrap.dedent(f"""\
        model: {{name: ShapeNet}}
        stimuli: {DEMO}
        targets: [{{layer: fc2, units: 1}}]
        methods: [vanilla]
        outputs: {{dir: results/here}}
        """))
    assert load_config(tmp_path / "cfg" / "r.yaml")["outputs"]["dir"] == \
        str(tmp_path / "results" / "here")


def test_batch_then_eval_as_the_readme_writes_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(textwrap.dedent(f"""\
        model: {{name: ShapeNet, device: cpu}}
        stimuli: {DEMO}
        targets: [{{layer: fc2, units: predicted}}]
        methods: [vanilla]
        outputs: {{save: [npy]}}
        evaluate: {{metrics: [localisation], plots: false}}
        """))
    assert batch_main(["run.yaml"]) == 0  # no -out: ./out/run
    ev = tmp_path / "out" / "run" / "eval"
    assert (ev / "metrics.json").is_file() and (ev / ".written-by-run").is_file()
    before = (ev / "metrics.json").stat().st_mtime_ns
    assert eval_main(["out/run", "-metrics", "localisation", "-no-plots"]) == 0
    assert (ev / "metrics.json").stat().st_mtime_ns != before
    assert not (ev / ".written-by-run").exists()  # now the user's results: kept
    mine = (ev / "metrics.json").stat().st_mtime_ns
    assert batch_main(["run.yaml"]) == 0  # resumes; its evaluate: leaves them alone
    assert (ev / "metrics.json").stat().st_mtime_ns == mine
    capsys.readouterr()
    assert eval_main(["out/run", "-metrics", "localisation", "-no-plots"]) == 2
    assert "earlier dnn_saliency_eval; pass -force" in capsys.readouterr().err
    assert eval_main(["out/run", "-metrics", "localisation", "-no-plots", "-force"]) == 0


def _gray_net():
    from torch import nn
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(2, 3))
    return net


def test_yaml_grayscale_factory_network_runs_on_ordinary_images(tmp_path):
    from dnnbrain.batch import register_factory, unregister_factory
    register_factory("p14_gray_test_net", _gray_net, overwrite=True)
    try:
        cfg = {"model": {"factory": "p14_gray_test_net", "img_size": 16, "mean": [0.5],
                         "std": [0.25]},
               "stimuli": [str(Path(DEMO).parent / "shape_00.png")],
               "targets": [{"layer": "4", "units": "label"}], "methods": ["vanilla"],
               "outputs": {"dir": str(tmp_path / "o"), "save": ["npy", "png", "overlay"]}}
        with pytest.raises(ValueError, match=r"targets\[0\]\.units: 'label' needs a 'label' "
                                             r"column .*image files without labels"):
            load_config(cfg)
        cfg["targets"] = [{"layer": "4", "units": [1, 3]}]
        res = run(cfg, progress=False, workers=0)
        row = rows(res.manifest)[0]
        m = np.load(tmp_path / "o" / row["npy"])
        assert m.shape == (1, 16, 16) and np.abs(m).sum() > 0
        from PIL import Image
        over = np.asarray(Image.open(tmp_path / "o" / row["overlay"]))
        assert over.shape == (16, 16, 3)  # the 1-channel input shown gray under the map
        with pytest.raises(ValueError, match=r"model\.factory: cannot build the network: "
                                             r"`mean` must hold 1 number \(channels=1\), "
                                             r"got \[0\.5, 0\.5, 0\.5\]"):
            load_config(dict(cfg, model=dict(cfg["model"], mean=[0.5] * 3, std=[0.2] * 3)))
    finally:
        unregister_factory("p14_gray_test_net")
