"""`dnn_saliency` called as main([...]) on the shipped demo network and stimuli."""
import numpy as np
import pytest
from PIL import Image

from dnnbrain.cli.saliency import main
from dnnbrain.dnn.algo import GuidedSaliencyImage
from dnnbrain.io.stim import demo_stimulus_file

STIM = str(demo_stimulus_file())


def test_writes_figures_and_maps(tmp_path, shapenet, demo_stim, capsys):
    out = tmp_path / "out"
    rc = main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "1", "3", "-stim", STIM,
               "-meth", "guided", "-out", str(out)])
    assert rc == 0
    assert capsys.readouterr().out == (f"dnn_saliency: 24 guided maps of layer fc2 (12 "
                                       f"stimuli x 2 units) -> {out}/ (guided_fc2.png, "
                                       "manifest.csv, npy/)\n")
    figs = sorted(p.name for p in out.glob("*.png"))
    assert figs == ["guided_fc2.png"]  # one file per layer; 12 stimuli wrap at -ncol 8
    npys = sorted((out / "npy").glob("*.npy"))
    assert len(npys) == 12 * 2
    first = demo_stim.ids[0].rsplit(".", 1)[0]
    got = np.load(out / "npy" / f"{first}_fc2_chn3.npy")
    expect = GuidedSaliencyImage(shapenet, "fc2", 3).backprop(demo_stim.paths[0])
    assert got.shape == (3, 64, 64) and np.allclose(got, expect, atol=1e-6)
    # refuses to overwrite without -force, then does with it
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "1", "-stim", STIM,
                 "-out", str(out)]) == 2
    assert main(["-net", "shapenet", "-layer", "conv3", "-chn", "2", "-stim", STIM,
                 "-meth", "vanilla", "-mode", "gray", "-cmap", "inferno", "-out", str(out),
                 "-force", "-ncol", "12"]) == 0
    assert (out / "vanilla_conv3.png").is_file()


@pytest.mark.parametrize("args,needle", [
    (["-layer", "conv9", "-chn", "1"], "`layer` must be one of ['conv1'"),
    (["-layer", "fc2", "-chn", "0"], "`unit[0]` must be in 1..4 (units count from 1), got 0"),
    (["-layer", "fc2", "-chn", "1", "-stim", "missing.stim.csv"], "`stim` not found"),
    (["-layer", "fc2", "-chn", "1", "-net", "NoNet"], "`net` must be one of"),
    (["-layer", "fc2", "-chn", "1", "-param", "steps"], "`-param` must be key=value"),
])
def test_errors_are_one_line(tmp_path, capsys, args, needle):
    base = {"-net": "ShapeNet", "-stim": STIM, "-out": str(tmp_path / "o")}
    for i in range(0, len(args), 1):
        if args[i] in base and i + 1 < len(args):
            base.pop(args[i])
    argv = [a for kv in base.items() for a in kv] + args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.startswith("dnn_saliency: error:") and "\n" not in err
    assert not (tmp_path / "o" / "npy").exists() or not any((tmp_path / "o" / "npy").iterdir())


def test_missing_image_in_stim_file(tmp_path, capsys):
    stim = tmp_path / "s.stim.csv"
    stim.write_text("type=image\npath=.\ndata=stimID\nnope.png\n")
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "1", "-stim", str(stim),
                 "-out", str(tmp_path / "o")]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_memory_budget_param(tmp_path, shapenet, demo_stim, capsys):
    from dnnbrain.dnn.algo.integrated import IntegratedGradients
    out = tmp_path / "ig"
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "2", "-stim", STIM, "-meth",
                 "ig", "-param", "steps=8", "-param", "memory_budget=6MiB", "-out", str(out)]) == 0
    first = demo_stim.ids[0].rsplit(".", 1)[0]
    got = np.load(out / "npy" / f"{first}_fc2_chn2.npy")
    expect = IntegratedGradients(shapenet, "fc2", 2, steps=8).backprop(demo_stim.paths[0])
    assert np.abs(got - expect).max() <= 1e-5 * np.abs(expect).max()
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "2", "-stim", STIM, "-meth",
                 "ig", "-param", "memory_budget=10kB", "-out", str(out), "-force"]) == 2
    assert "`memory_budget` of 0.0 MiB is too small" in capsys.readouterr().err


def test_same_file_name_in_two_folders_gives_two_maps(tmp_path, demo_stim):
    import shutil
    for sub, k in (("a", 0), ("b", 1)):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
        shutil.copy(demo_stim.paths[k], tmp_path / "imgs" / sub / "x.png")
    out = tmp_path / "out"
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "1", "-meth", "vanilla",
                 "-stim", str(tmp_path / "imgs" / "a" / "x.png"),
                 str(tmp_path / "imgs" / "b" / "x.png"), "-out", str(out)]) == 0
    got = sorted(p.relative_to(out / "npy").as_posix() for p in (out / "npy").rglob("*.npy"))
    assert got == ["a/x_fc2_chn1.npy", "b/x_fc2_chn1.npy"]
    a, b = (np.load(out / "npy" / g) for g in got)
    assert not np.allclose(a, b)  # each its own image's map


def _grab_figures(monkeypatch):
    """Keep every figure dnn_saliency draws (to read its text back)."""
    import dnnbrain.figures as figures
    drawn, grid = [], figures.saliency_grid

    def keep(*a, **kw):
        drawn.append(grid(*a, **kw))
        return drawn[-1]
    monkeypatch.setattr(figures, "saliency_grid", keep)
    return drawn


def test_predicted_files_manifest_and_labels(tmp_path, shapenet, demo_stim, capsys,
                                             monkeypatch):
    import csv

    import torch
    drawn = _grab_figures(monkeypatch)
    out = tmp_path / "out"
    stim = demo_stim[[0, 1, 6]]  # a square, a star, a circle
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "predicted", "-meth",
                 "gradcam", "-stim", str(stim.write(tmp_path / "three.stim.csv")), "-out",
                 str(out)]) == 0
    with torch.no_grad():
        top = (shapenet(shapenet.test_transform.batch(stim.paths)).argmax(1) + 1).tolist()
    line = capsys.readouterr().out
    assert f"predicted -> units {', '.join(map(str, sorted(set(top))))})" in line
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = ["circle", "square", "triangle", "star"]
    assert [(r["stimulus"], r["requested_unit"], r["unit"], r["class"]) for r in rows] == [
        (p.name, "predicted", str(t), classes[t - 1]) for p, t in zip(stim.paths, top)]
    for r, t, p in zip(rows, top, stim.paths):
        assert r["file"] == f"npy/{p.stem}_fc2_chn{t}.npy"
        assert np.load(out / r["file"]).shape == (64, 64)  # a Grad-CAM map
    (fig,) = drawn
    texts = [ax.get_title() for ax in fig.axes]
    for t in top:  # method, layer, unit and class name on every map panel
        assert f"gradcam\nfc2 unit {t} ({classes[t - 1]}), predicted" in texts
    assert "shape_06\nlabel: circle (unit 1)" in texts
    bar = fig.axes[-1]  # the colorbar: non-negative CAMs, sequential from 0
    assert bar.get_ylabel() == "map / max |map|: each map scaled to its own max |value|"
    assert bar.get_ylim() == (0.0, 1.0)
    assert fig.axes[3].images[0].get_cmap().name == "inferno"  # the first map panel
    assert fig.axes[0].images[0].get_array().shape[:2] == (64, 64)  # as the network saw it


def test_signed_maps_get_a_diverging_colormap_and_quiet_prints_nothing(
        tmp_path, demo_stim, capsys, monkeypatch):
    drawn = _grab_figures(monkeypatch)
    out = tmp_path / "out"
    assert main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "2", "-meth", "occlusion",
                 "-param", "window=16", "-param", "stride=16", "-stim",
                 str(demo_stim.paths[0]), "-out", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    (fig,) = drawn
    img = fig.axes[1].images[0]
    assert img.get_array().min() < 0  # occlusion of a square: some windows help it
    assert img.get_cmap().name == "RdBu_r" and img.get_clim() == (-1.0, 1.0)
