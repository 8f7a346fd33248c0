"""The runner's shortcuts give what the slow path gives: gallery pictures made from the batch
input equal those made from the files, PNG files decode to the viz pixels, and the
summary line reports maps/s of the whole run and of the maps alone."""
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from dnnbrain import viz
from dnnbrain.batch import run
from dnnbrain.batch.config import prepare
from dnnbrain.batch.gallery import stimulus_pictures
from dnnbrain.batch.store import read_manifest
from dnnbrain.cli.saliency_batch import main


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A small run on the demo stimuli (two targets, npy + png)."""
    from dnnbrain.io.stim import demo_stimulus_file
    root = tmp_path_factory.mktemp("speed")
    cfg = {"model": {"name": "ShapeNet", "device": "cpu"},
           "stimuli": str(demo_stimulus_file()),
           "targets": [{"layer": "fc2", "units": [1, 3]}, {"layer": "conv3", "units": [5]}],
           "methods": ["vanilla"], "outputs": {"save": ["npy", "png"]}, "batch_size": 5}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root / "run.yaml", run(root / "run.yaml", out=root / "out", progress=False)


def test_pictures_from_the_batch_equal_those_from_the_files(done):
    cfg_file, result = done
    out = result.out_dir
    made = {p.name: p.read_bytes() for p in (out / "stimuli").iterdir()}
    assert len(made) == 12
    shutil.rmtree(out / "stimuli")
    prep = prepare(cfg_file, out, False)
    stimulus_pictures(out, prep.stim, prep.dnn.test_transform)  # reads the files
    assert {p.name: p.read_bytes() for p in (out / "stimuli").iterdir()} == made


def test_png_files_decode_to_the_viz_pixels(done):
    _, result = done
    rows, o = read_manifest(result.manifest), result.config["outputs"]
    assert len(rows) == 12 * 3
    for row in rows:
        m = np.load(result.out_dir / row["npy"])
        got = np.asarray(Image.open(result.out_dir / row["png"]))
        want = viz.heatmap(m, o["colormap"], o["percentile"], reduce=o.get("reduce", "sumabs"))
        assert np.array_equal(got, want), row["png"]


def test_summary_line_gives_maps_per_second(done, tmp_path, capsys):
    cfg_file, _ = done
    assert main([str(cfg_file), "-out", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out.strip()
    found = re.fullmatch(r"dnn_saliency_batch: 36 maps computed in [\d.]+ s \(6 work items, "
                         r"0 already complete; ([\d.]+) maps/s for the whole run, ([\d.]+) "
                         r"for the maps alone\) -> .*/ \(manifest.csv, index.html\)", line)
    assert found, line
    whole, alone = map(float, found.groups())
    assert 0 < whole < alone  # the whole run also reads, writes, makes the gallery
