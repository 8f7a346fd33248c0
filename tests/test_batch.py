"""dnn_saliency_batch runs: outputs, values, resume after a kill, shards, NIfTI, gallery."""
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
import yaml

from dnnbrain.batch import run
from dnnbrain.batch import writer as writer_mod
from dnnbrain.batch.plan import make_plan, shard_items
from dnnbrain.batch.store import comparable
from dnnbrain.cli.saliency_batch import main
from dnnbrain.dnn.zoo import SHAPENET_CLASSES
from dnnbrain.dnn.algo import GuidedSaliencyImage, VanillaSaliencyImage
from dnnbrain.dnn.algo.engine import SaliencyImage
from dnnbrain.io.maps import load_nifti

REPO = Path(__file__).resolve().parent.parent
N_ITEMS = 3 * 2 * 2  # 12 stimuli in batches of 4 x 2 targets x 2 methods


@pytest.fixture(scope="module")
def stim12(tmp_path_factory):
    from dnnbrain.demo.shapes import write_stimuli
    return write_stimuli(tmp_path_factory.mktemp("stim"), n=12)


@pytest.fixture(scope="module")
def cfg_file(stim12, tmp_path_factory):
    """The small run: 12 demo stimuli, vanilla + guided, npy + png."""
    cfg = {"model": {"name": "ShapeNet", "device": "cpu"}, "stimuli": str(stim12),
           "targets": [{"layer": "fc2", "units": [1, 2]},
                       {"layer": "conv4", "units": "predicted"}],
           "methods": ["vanilla", "guided"], "outputs": {"save": ["npy", "png"]},
           "batch_size": 4}
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ref(cfg_file, tmp_path_factory):
    """An uninterrupted run in one process."""
    out = tmp_path_factory.mktemp("ref") / "out"
    result = run(cfg_file, out=out, progress=False)
    return result


def tree(root):
    """Every file under ``root`` -> bytes (the resolved config aside: it names the folder;
    the empty lock files aside: they are not outputs)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*")
            if p.is_file() and p.name != "config.resolved.yaml"
            and not p.name.startswith(".lock")}


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_run(out, ref_out):
    assert tree(out) == tree(ref_out)
    a, b = (yaml.safe_load((Path(d) / "config.resolved.yaml").read_text())
            for d in (out, ref_out))
    assert comparable(a) == comparable(b)


def test_outputs_manifest_and_values(ref, stim12, shapenet):
    out = ref.out_dir
    assert ref.manifest == out / "manifest.csv" and ref.maps == 12 * 3 * 2
    assert {p.name for p in out.iterdir()} >= {"manifest.csv", "config.resolved.yaml",
                                               "index.html", "vanilla", "guided", "stimuli"}
    table = rows(ref.manifest)
    assert len(table) == 72 and list(table[0]) == [
        "stimulus", "target", "layer", "unit", "requested_unit", "class", "reduce",
        "method", "activation", "predicted_class", "network", "npy", "png"]
    assert all((out / r["npy"]).is_file() and (out / r["png"]).is_file() for r in table)
    x = shapenet.test_transform.batch([str(stim12.parent / r["stimulus"]) for r in table])
    with torch.no_grad():
        logits = shapenet.model(x)
        conv4 = GuidedSaliencyImage(shapenet).layer_output(x, "conv4").mean((2, 3))
    for i, r in enumerate(table):
        assert int(r["predicted_class"]) == int(logits[i].argmax()) + 1
        if r["layer"] == "fc2":  # the output layer: its units are the shape classes
            assert r["class"] == SHAPENET_CLASSES[int(r["unit"]) - 1]
            assert r["npy"] == f"{r['method']}/fc2/unit{r['unit']}/{r['stimulus'][:-4]}.npy"
            assert float(r["activation"]) == pytest.approx(
                float(logits[i, int(r["unit"]) - 1]), abs=1e-5)
        else:  # 'predicted' goes to unitpred; the manifest says which unit it was
            assert r["requested_unit"] == "predicted" and "/conv4/unitpred/" in r["npy"]
            assert r["class"] == ""
            assert int(r["unit"]) == int(conv4[i].argmax()) + 1
            assert float(r["activation"]) == pytest.approx(float(conv4[i].max()), abs=1e-5)


def test_maps_equal_single_image_calls(ref, stim12, shapenet):
    img = str(stim12.parent / "shape_05.png")
    vanilla = VanillaSaliencyImage(shapenet).set_layer("fc2", 2).backprop(img)
    guided = GuidedSaliencyImage(shapenet).set_layer("conv4", "predicted").backprop(img)
    got_v = np.load(ref.out_dir / "vanilla/fc2/unit2/shape_05.npy")
    got_g = np.load(ref.out_dir / "guided/conv4/unitpred/shape_05.npy")
    assert got_v.dtype == np.float32 and got_v.shape == (3, 64, 64)
    np.testing.assert_allclose(got_v, vanilla, rtol=1e-4, atol=1e-6 * np.abs(vanilla).max())
    np.testing.assert_allclose(got_g, guided, rtol=1e-4, atol=1e-6 * np.abs(guided).max())


def test_one_backprop_call_per_work_item(cfg_file, tmp_path, monkeypatch):
    calls = []
    real = SaliencyImage.backprop

    def spy(self, image, *args, **kwargs):
        calls.append((tuple(image.shape), kwargs.get("preprocessed"), len(self.units)))
        return real(self, image, *args, **kwargs)
    monkeypatch.setattr(SaliencyImage, "backprop", spy)
    run(cfg_file, out=tmp_path / "o", progress=False)
    assert len(calls) == N_ITEMS
    assert all(shape == (4, 3, 64, 64) and pre for shape, pre, _ in calls)
    assert sorted(u for *_, u in calls) == [1] * 6 + [2] * 6


def test_rerun_skips_complete_maps(ref, cfg_file):
    before = tree(ref.out_dir)
    again = run(cfg_file, out=ref.out_dir, progress=False)
    assert again.todo == [] and again.maps == 0 and tree(ref.out_dir) == before


@pytest.mark.parametrize("fail_after", [0, 4, 9])
def test_resume_after_interruption_equals_uninterrupted(ref, cfg_file, tmp_path, monkeypatch,
                                                        fail_after):
    out = tmp_path / "out"
    real, seen = writer_mod.write_marker, []

    def dying_marker(*args):
        if len(seen) >= fail_after:
            raise RuntimeError("killed")
        seen.append(1)
        return real(*args)
    monkeypatch.setattr(writer_mod, "write_marker", dying_marker)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg_file, out=out, progress=False)
    monkeypatch.setattr(writer_mod, "write_marker", real)
    stray = out / "vanilla/fc2/unit1/.shape_00.npy.0123456789ab.tmp.npy"  # a killed write
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"partial")
    again = run(cfg_file, out=out, progress=False)
    assert len(again.todo) == N_ITEMS - fail_after
    assert_same_run(out, ref.out_dir)


@pytest.mark.slow
def test_sigkill_at_random_point_then_resume(ref, cfg_file, tmp_path):
    """SIGKILL the CLI after a random number of files, rerun, compare with a subprocess
    run that was never interrupted (same thread settings, byte for byte)."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "dnnbrain.cli.saliency_batch", str(cfg_file), "-out"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd + [str(tmp_path / "ref")], env=env, check=True, capture_output=True)
    for attempt in range(2):
        out = tmp_path / f"killed{attempt}"
        kill_at = rng.randrange(1, 150)  # 144 map files + 12 markers in all
        proc = subprocess.Popen(cmd + [str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                if out.is_dir() and sum(len(f) for _, _, f in os.walk(out)) >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            proc.wait()
        subprocess.run(cmd + [str(out)], env=env, check=True, capture_output=True)
        assert tree(out) == tree(tmp_path / "ref"), f"seed {seed}, killed at {kill_at} files"
        assert rows(out / "manifest.csv") == rows(tmp_path / "ref" / "manifest.csv")


def test_two_shards_equal_one_process(ref, cfg_file, tmp_path, capsys):
    out = tmp_path / "out"
    first = run(cfg_file, out=out, shard="1/2", progress=False)
    assert first.manifest == out / "manifest.part1of2.csv"
    assert not (out / "manifest.csv").exists() and len(first.items) == N_ITEMS // 2
    second = run(cfg_file, out=out, shard=(0, 2), progress=False)
    assert second.manifest == out / "manifest.csv"  # the last shard merged the parts
    parts = rows(out / "manifest.part0of2.csv") + rows(out / "manifest.part1of2.csv")
    key = lambda r: tuple(r.values())  # noqa: E731
    assert sorted(map(key, parts)) == sorted(map(key, rows(ref.manifest)))
    assert rows(out / "manifest.csv") == rows(ref.manifest)
    merged_tree = {k: v for k, v in tree(out).items() if ".part" not in k}
    assert merged_tree == tree(ref.out_dir)
    (out / "manifest.csv").unlink()
    assert main([str(cfg_file), "-out", str(out), "-merge"]) == 0
    assert rows(out / "manifest.csv") == rows(ref.manifest)


def test_merge_refuses_incomplete_shards(cfg_file, tmp_path, capsys):
    run(cfg_file, out=tmp_path, shard="0/3", progress=False)
    assert main([str(cfg_file), "-out", str(tmp_path), "-merge"]) == 2
    assert "manifest parts [1, 2] of 3 are missing" in capsys.readouterr().err


def test_torchrun_environment_selects_shard(cfg_file, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    result = run(cfg_file, out=tmp_path, progress=False)
    plan = make_plan(result.config, 12)
    assert result.shard == (1, 3) and result.items == shard_items(plan, (1, 3))
    assert (tmp_path / "manifest.part1of3.csv").is_file()


def test_nifti_round_trip(stim12, tmp_path):
    cfg = {"model": {"name": "ShapeNet"}, "stimuli": str(stim12),
           "targets": [{"layer": "fc2", "units": [3]}, {"layer": "conv3", "units": [2],
                                                        "reduce": "max"}],
           "methods": ["vanilla", {"name": "gradcam", "cam_layer": "conv2"}],
           "outputs": {"dir": str(tmp_path), "save": ["npy", "nifti"]}}
    result = run(cfg, progress=False)
    table = rows(result.manifest)
    assert len(table) == 12 * 2 * 2
    for r in table:
        arr, descrip = load_nifti(tmp_path / r["nifti"])
        np.testing.assert_array_equal(arr, np.load(tmp_path / r["npy"]))
        assert descrip == f"{r['method']} {r['layer']} unit {r['unit']} {r['reduce']}"
    assert arr.shape == (64, 64)  # grad-cam: (H, W); vanilla: (3, H, W)


def test_dry_run_lists_work_and_writes_nothing(ref, cfg_file, tmp_path, capsys):
    out = tmp_path / "never"
    result = run(cfg_file, out=out, dry_run=True)
    assert result.dry_run and len(result.todo) == N_ITEMS and not out.exists()
    assert main([str(cfg_file), "-out", str(out), "-dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == N_ITEMS + 1 and not out.exists()
    assert lines[0] == ("todo vanilla__t0__s000000-000004: vanilla on targets[0] (fc2 units "
                        "1, 2) for stimuli 0..3 (8 maps)")
    assert main([str(cfg_file), "-out", str(ref.out_dir), "-dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(ln.startswith("done ") for ln in lines[:-1])
    assert lines[-1].startswith("0 of 12 work items to compute")


def test_changed_config_refused_unless_force(ref, cfg_file, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(ref.out_dir, out)
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["methods"] = ["vanilla", "deconv"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    with pytest.raises(FileExistsError, match=r"differing keys: \['methods\[1\]\.name', "
                                              r"'methods\[1\]\.label'\].*-force"):
        run(changed, out=out)
    assert main([str(changed), "-out", str(out)]) == 2
    assert "-force" in capsys.readouterr().err
    result = run(changed, out=out, force=True, progress=False)
    assert {result.config["methods"][it.method]["label"] for it in result.todo} == {"deconv"}
    assert {r["method"] for r in rows(out / "manifest.csv")} == {"vanilla", "deconv"}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run(cfg_file, out=foreign)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a" and not attrs["href"].startswith("#"):
            self.links.append(attrs["href"])


@pytest.mark.slow
def test_demo_run_yaml_produces_every_output_kind(tmp_path):
    demo = REPO / "docs" / "examples" / "demo_run.yaml"
    assert main([str(demo), "-out", str(tmp_path)]) == 0
    table = rows(tmp_path / "manifest.csv")
    kinds = {"npy": ".npy", "png": ".png", "overlay": "_overlay.png", "nifti": ".nii.gz"}
    assert table and all(r[k].endswith(end) and (tmp_path / r[k]).is_file()
                         for r in table for k, end in kinds.items())
    parser = _Links()
    parser.feed((tmp_path / "index.html").read_text(encoding="utf-8"))
    assert len(parser.images) >= len(table)
    for ref_ in parser.images + parser.links:
        assert "://" not in ref_ and not ref_.startswith("/")
        assert (tmp_path / unquote(ref_)).is_file(), ref_


def test_evaluate_section_runs_metrics_at_the_end(stim12, tmp_path):
    import json

    from dnnbrain.metrics import proportional_energy
    from dnnbrain.io.stim import Stimulus
    cfg = {"model": {"name": "ShapeNet", "device": "cpu"}, "stimuli": str(stim12),
           "targets": [{"layer": "fc2", "units": "predicted"},
                       {"layer": "fc2", "units": [2, 4]}, {"layer": "conv4", "units": [1]}],
           "methods": ["guided"],
           "outputs": {"dir": str(tmp_path / "out"), "save": ["npy"]},
           "evaluate": {"metrics": ["localisation"], "out_dir": "scores", "plots": False}}
    run(cfg, progress=False)
    scores = json.loads((tmp_path / "out" / "scores" / "metrics.json").read_text())
    # class units are named (from the manifest's class column); others are not
    assert [t["classes"] for t in scores["targets"]] == [[], ["square", "star"], []]
    table = (tmp_path / "out" / "scores" / "table.md").read_text(encoding="utf-8")
    assert "## targets[1]: fc2 units 2, 4 (square, star) (reduce mean)" in table
    assert scores["targets"][1]["short"] == "fc2 units 2,4\n(square, star)"
    stim = Stimulus.read(stim12)
    record = next(m for m in scores["maps"] if m["stimulus"] == "shape_00.png")
    first = np.load(tmp_path / "out" / record["map"])
    energy = proportional_energy(first, stim.boxes(0))
    assert record["localisation"]["proportional_energy"] == pytest.approx(energy, rel=1e-9)
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert '<code>scores/</code>' in page and 'href="scores/table.md"' in page


@pytest.mark.parametrize("section,needle", [
    ({"metrics": ["sharpness"]}, "evaluate.metrics: must be a non-empty list of"),
    ({"colour": 1}, "evaluate.colour: unknown key"),
    ("yes", "evaluate: must be true, null or a mapping"),
])
def test_bad_evaluate_sections(stim12, tmp_path, section, needle):
    from dnnbrain.batch import load_config
    cfg = {"model": {"name": "ShapeNet"}, "stimuli": str(stim12),
           "targets": [{"layer": "fc2", "units": [1]}], "methods": ["vanilla"],
           "outputs": {"dir": str(tmp_path)}, "evaluate": section}
    with pytest.raises(ValueError) as err:
        load_config(cfg)
    assert needle in str(err.value)


def test_cli_summary_line_of_a_resumed_run(ref, cfg_file, capsys):
    """What the line says (one line, nothing with -q: tests/test_cli_summary.py)."""
    out = ref.out_dir
    assert main([str(cfg_file), "-out", str(out)]) == 0  # resumed: nothing to compute
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnn_saliency_batch: 0 maps computed in ")
    assert lines[0].endswith(f"(0 work items, {N_ITEMS} already complete) -> {out}/ "
                             "(manifest.csv, index.html)")


def test_index_names_classes_links_evaluation_and_shows_the_network_view(
        ref, stim12, shapenet, tmp_path, capsys):
    from PIL import Image

    from dnnbrain.cli.saliency_eval import main as eval_main
    out = tmp_path / "run"
    shutil.copytree(ref.out_dir, out)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<h3>fc2 unit 1 (circle)</h3>" in page and "<h3>fc2 unit 2 (square)</h3>" in page
    assert "width:100%" in page and 'id="evaluation"' not in page  # not evaluated yet
    table = rows(ref.manifest)
    for r in table[:3]:  # each stimulus: its label and prediction named
        name = ["circle", "square", "triangle", "star"][int(r["predicted_class"]) - 1]
        assert f"{r['stimulus']}<br>label " in page
        assert f"predicted {name} (unit {r['predicted_class']})" in page
    # the activation is the stimulus's (one per row), never repeated in the method cells
    act = next(r for r in table if r["layer"] == "fc2" and r["unit"] == "1")
    assert page.count(f"act {float(act['activation']):.3g}") == 1
    # 'predicted' cells say which unit their map explains
    conv = next(r for r in table if r["layer"] == "conv4")
    assert f"guided<br>unit {conv['unit']}" in page
    # the colour key: the default 'auto' colormap's two strips, each a colour table
    from dnnbrain.batch.pictures import colour_table
    for name in ("inferno", "RdBu_r"):
        assert f'src="colorbar_{name}.png"' in page
        strip = np.asarray(Image.open(out / f"colorbar_{name}.png"))
        np.testing.assert_array_equal(strip[0], colour_table(name))
    assert "map min → its 99th percentile" in page
    pic = out / "stimuli" / "shape_00.png"  # the network's view: its size, as a PNG
    with Image.open(pic) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    from dnnbrain import viz
    np.testing.assert_array_equal(np.asarray(Image.open(pic)), viz.network_view(
        stim12.parent / "shape_00.png", shapenet.test_transform))
    assert eval_main([str(out), "-metrics", "localisation", "-q"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<code>eval/</code>' in page and 'src="eval/localisation.png"' in page
