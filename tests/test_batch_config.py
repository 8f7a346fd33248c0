"""Run configs of dnn_saliency_batch: every problem reported at once, with its key path."""
import copy
import os
import textwrap

import pytest
import torch
import yaml

from dnnbrain.batch import load_config, run
from dnnbrain.batch.plan import make_plan, map_stem, shard_items, unit_folder


@pytest.fixture(scope="module")
def stim12(tmp_path_factory):
    """12 demo stimuli (the generator the shipped set comes from), written once."""
    from dnnbrain.demo.shapes import write_stimuli
    return write_stimuli(tmp_path_factory.mktemp("stim"), n=12)


@pytest.fixture
def base(stim12, tmp_path):
    return {"model": {"name": "ShapeNet"}, "stimuli": str(stim12),
            "targets": [{"layer": "fc2", "units": [1, 2]},
                        {"layer": "conv3", "units": [1, 2, 3], "reduce": "max"}],
            "methods": ["vanilla", {"name": "ig", "steps": 4}],
            "outputs": {"dir": str(tmp_path / "out")}}


def problems(cfg, **kw):
    with pytest.raises(ValueError) as err:
        load_config(cfg, **kw)
    return str(err.value)


def _set(cfg, path, value):
    """Set (or with value=KeyError, delete) a dotted/indexed key in a nested config."""
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "")
            .split(".")]
    node = cfg
    for k in keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return cfg


BAD = [  # (key to set, value, key path in the message, a valid choice in the message)
    ("colour", "red", "colour", "valid keys are"),
    ("model.colour", 1, "model.colour", "'device'"),
    ("model.name", "LeNet", "model.name", "ShapeNet"),
    ("model.device", "tpu", "model.device", "'cuda:N'"),
    ("model.weights", "missing.pth", "model.weights", "not found"),
    ("targets[0].layer", "conv9", "targets[0].layer", "'conv4'"),
    ("targets[0].units[1]", 0, "targets[0].units[1]", "1..4"),
    ("targets[0].units[0]", 5, "targets[0].units[0]", "1..4"),
    ("targets[1].units[2]", 65, "targets[1].units[2]", "1..64"),
    ("targets[1].units[0]", [1, 99, 1], "targets[1].units[0]", "row 1..16"),
    ("targets[0].units[0]", "first", "targets[0].units[0]", "'predicted'"),
    ("targets[1].reduce", "median", "targets[1].reduce", "'max'"),
    ("targets[1].unit", 3, "targets[1].unit", "'units'"),
    ("targets", [], "targets", "non-empty list"),
    ("methods[0]", "gradcum", "methods[0].name", "'gradcam'"),
    ("methods[1].stepz", 3, "methods[1].stepz", "'steps'"),
    ("methods[1].steps", -1, "methods[1].steps", "int"),
    ("methods[1].batch_size", 8, "methods[1].batch_size", "top level"),
    ("methods[1].memory_budget", "lots", "methods[1].memory_budget", "'512MiB'"),
    ("methods[1]", {"name": "smoothgrad", "base": "nope"}, "methods[1].base", "'guided'"),
    ("methods[1]", "vanilla", "methods[1].label", "distinct"),
    ("outputs.save", ["npy", "jpeg"], "outputs.save[1]", "'nifti'"),
    ("outputs.colormap", "nocmap", "outputs.colormap", "inferno"),
    ("outputs.alpha", 2, "outputs.alpha", "[0, 1]"),
    ("batch_size", "big", "batch_size", "int >= 1"),
    ("seed", -3, "seed", "int >= 0"),
    ("stimuli", "nowhere/shapes.stim.csv", "stimuli", "not found"),
    ("stimuli", "nowhere/*.png", "stimuli", "matches no image"),
]


@pytest.mark.parametrize("path,value,where,hint", BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD])
def test_bad_config_names_key_path_and_choices(base, path, value, where, hint):
    msg = problems(_set(copy.deepcopy(base), path, value))
    line = next((ln for ln in msg.splitlines() if ln.strip().startswith(where + ":")), None)
    assert line is not None, msg
    assert hint in line, msg


def test_missing_required_keys(base):
    cfg = copy.deepcopy(base)
    del cfg["targets"], cfg["model"]["name"]
    msg = problems(cfg)
    assert "targets: is required" in msg and "model.name: is required" in msg


def test_three_problems_reported_together(base):
    cfg = copy.deepcopy(base)
    cfg["targets"][0]["units"] = [1, 7]
    cfg["methods"].append("nosuch")
    cfg["outputs"]["save"] = ["png", "tiff"]
    msg = problems(cfg)
    assert msg.splitlines()[0].endswith("3 problems in the run config:")
    assert "targets[0].units[1]: must be in 1..4" in msg
    assert "methods[2].name: must be one of" in msg and "'vanilla'" in msg
    assert "outputs.save[1]: must be one of ['npy', 'png', 'overlay', 'nifti']" in msg


def test_missing_stimulus_file_listed(base, stim12, tmp_path):
    csv = tmp_path / "s.stim.csv"
    csv.write_text(f"type=image\npath={stim12.parent}\ndata=stimID\nshape_00.png\ngone.png\n")
    msg = problems(dict(base, stimuli=str(csv)))
    assert "stimuli:" in msg and "gone.png" in msg and "shape_00.png'" not in msg


def test_yaml_file_relative_paths_resolved_and_defaults(stim12, tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # outputs go below the current folder
    rel = os.path.relpath(stim12, tmp_path / "cfg")
    (tmp_path / "cfg" / "run.yaml").write_text(textwrap.dedent(f"""\
        model: {{name: shapenet}}
        stimuli: {rel}
        targets: [{{layer: fc2, units: predicted}}, {{layer: conv4, units: [[2, 3, 4]]}}]
        methods: [vanilla, {{name: smoothgrad, base: guided, n_samples: 2}}]
        """))
    cfg = load_config(tmp_path / "cfg" / "run.yaml")
    assert cfg["model"] == {"name": "ShapeNet", "weights": None, "pretrained": True,
                            "device": "auto"}
    assert cfg["stimuli"] == str(stim12)
    assert cfg["outputs"] == {"dir": str(tmp_path / "cwd" / "out" / "run"),
                              "save": ["npy", "png"],
                              "colormap": "auto", "percentile": 99.0, "alpha": 0.5}
    assert cfg["targets"] == [{"layer": "fc2", "units": ["predicted"], "reduce": "mean"},
                              {"layer": "conv4", "units": [[2, 3, 4]], "reduce": "mean"}]
    assert cfg["methods"][1] == {"name": "smoothgrad", "label": "smoothgrad", "base": "guided",
                                 "n_samples": 2, "seed": 0}
    assert (cfg["title"], cfg["batch_size"], cfg["seed"]) == ("run", 32, 0)
    assert load_config(cfg) == cfg  # a resolved config is a valid config of itself
    assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg


def test_safe_load_only(base, tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(f)


def test_invalid_config_writes_nothing(base, tmp_path):
    cfg = _set(copy.deepcopy(base), "targets[0].layer", "conv9")
    with pytest.raises(ValueError):
        run(cfg)
    assert not (tmp_path / "out").exists()


def test_cli_reports_problems_exit_2(base, tmp_path, capsys):
    from dnnbrain.cli.saliency_batch import main
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(_set(copy.deepcopy(base), "outputs.save", ["gif"])))
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnn_saliency_batch: error:") and "outputs.save[0]" in err


def test_factory_model(base, tmp_path):
    """A user's own builder in a file: allowed by the person (allow_code), not the config."""
    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""\
        import torch
        from torch import nn
        def build(width=4):
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(width, 3))
        """))
    model = {"factory": "mymodel.py:build", "kwargs": {"width": 5}, "img_size": 32,
             "layers": {"conv": "0", "fc": "4"}}
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(dict(base, model=model, targets=[
        {"layer": "conv", "units": [5]}, {"layer": "fc", "units": [4]}])))
    msg = problems(f, allow_code=True)
    assert "targets[1].units[0]: must be in 1..3" in msg and "targets[0]" not in msg
    f.write_text(yaml.safe_dump(dict(base, model=model, targets=[{"layer": "fcc", "units": 1}])))
    assert "targets[0].layer: must be one of ['conv', 'fc']" in problems(f, allow_code=True)
    f.write_text(yaml.safe_dump(dict(base, model=dict(model, factory="mymodel.py:nope"))))
    assert "model.factory: cannot build the network" in problems(f, allow_code=True)
    f.write_text(yaml.safe_dump(dict(base, model=dict(model, weights="x.pth"))))
    assert "model.weights: unknown key" in problems(f, allow_code=True)


def test_plan_shards_are_disjoint_and_complete(base):
    cfg = load_config(dict(base, batch_size=5))
    plan = make_plan(cfg, 12)
    assert len(plan) == 3 * 2 * 2 and len({it.key for it in plan}) == len(plan)
    parts = [shard_items(plan, (k, 3)) for k in range(3)]
    assert sorted(it.index for p in parts for it in p) == list(range(len(plan)))


def test_names():
    assert [unit_folder(u) for u in (3, "predicted", [2, 3, 4])] == ["unit3", "unitpred",
                                                                     "unit2_3_4"]
    assert map_stem("shape_00.png") == "shape_00"
    assert map_stem("a/b/c.JPEG") == "a/b/c" and map_stem("../x/./y.png") == "x/y"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_refused_without_cuda(base):
    assert "model.device: is 'cuda' but CUDA is not available" in problems(
        _set(copy.deepcopy(base), "model.device", "cuda"))


def test_memory_budget_as_a_method_parameter(base, tmp_path):
    """A YAML run passes memory_budget to a gradient method: same maps as without."""
    import numpy as np
    base["methods"] = [{"name": "ig", "steps": 4, "memory_budget": "6MiB"},
                       {"name": "ig", "steps": 4, "label": "ig_plain"}]
    base["targets"] = [{"layer": "fc2", "units": [2]}]
    base["outputs"]["save"] = ["npy"]
    result = run(base, progress=False)
    got = sorted((result.out_dir / "ig").rglob("*.npy"))
    ref = sorted((result.out_dir / "ig_plain").rglob("*.npy"))
    assert len(got) == len(ref) == 12
    for a, b in zip(got, ref):
        x, y = np.load(a), np.load(b)
        assert np.abs(x - y).max() <= 1e-5 * np.abs(y).max()


def test_folder_reads_its_own_images_and_says_so_of_sub_folders(base, tmp_path, caplog):
    from PIL import Image
    from dnnbrain.batch.config import prepare
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    for rel in ("top.png", "a/x.png", "b/x.png"):
        (tmp_path / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "imgs" / rel)
    with caplog.at_level("WARNING", logger="dnnbrain.batch.config"):
        folder = prepare(dict(base, stimuli=str(tmp_path / "imgs")))
    assert folder.stim.ids == ["top.png"]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "2 image file(s) in sub-folders" in msgs[0] and "**" in msgs[0]
    globbed = prepare(dict(base, stimuli=str(tmp_path / "imgs" / "**" / "*")))
    assert globbed.stim.ids == ["a/x.png", "b/x.png", "top.png"]
    (tmp_path / "imgs" / "top.png").unlink()
    msg = problems(dict(base, stimuli=str(tmp_path / "imgs")))
    assert msg.splitlines()[1].startswith("  stimuli: the folder") and \
        "only 2 in sub-folders" in msg
