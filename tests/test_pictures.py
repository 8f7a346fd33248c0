"""The README's and the docs' pictures are current: the committed PNGs are the ones
``img/make_all.py`` recorded in ``img/pictures.json``, none is stale or missing, and the
code draws today what was recorded (the cheap picture here, the rest behind ``slow``)."""
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
IMG = REPO / "img"
RECORD = json.loads((IMG / "pictures.json").read_text(encoding="utf-8"))


def _make_all():
    spec = importlib.util.spec_from_file_location("make_all", IMG / "make_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_all = _make_all()


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=3e-3)


def test_pictures_are_those_the_script_wrote_and_none_is_stale():
    assert RECORD["stamp"] == make_all.stamp(), "img/*.py changed: run img/make_all.py"
    on_disk = {p.name for p in IMG.glob("*.png")}
    assert on_disk == set(RECORD["pictures"]), "a picture no script draws, or one missing"
    for name, entry in RECORD["pictures"].items():
        assert hashlib.sha256((IMG / name).read_bytes()).hexdigest() == entry["sha256"], name
    used = set()
    for doc in [REPO / "README.md", *(REPO / "docs").rglob("*.rst")]:
        used |= set(re.findall(r"img/([\w.-]+\.png)", doc.read_text(encoding="utf-8")))
    assert used and used <= set(RECORD["pictures"])


def test_readme_command_draws_the_recorded_demo_figure(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "dnn_saliency " + " ".join(make_all.README_ARGS) + " -out" in readme
    got, want = make_all.demo_guided(tmp_path), RECORD["pictures"]["demo_guided.png"]
    assert got["rows"] == want["rows"]  # stimulus, resolved unit, class name
    assert ["shape_00.png", "2", "square"] in got["rows"]
    _close(got["maps"], want["maps"])


@pytest.mark.slow
@pytest.mark.parametrize("net,name", [("ShapeNet", "gallery.png"),
                                      ("ShapeViT", "gallery_vit.png")])
def test_galleries_draw_what_was_recorded(net, name):
    _, got = make_all.gallery(net)
    want = RECORD["pictures"][name]
    assert got["titles"] == want["titles"]
    _close(got["maps"], want["maps"])


@pytest.mark.slow
def test_evaluation_figures_plot_what_was_recorded(tmp_path):
    got = make_all.evaluation_record(make_all.demo_evaluation(tmp_path / "run"))
    want = RECORD["pictures"]["eval_localisation.png"]["values"]
    assert set(got) == set(want)
    for method in got:
        for kind in ("localisation", "road"):
            for key in got[method][kind]:
                _close(np.array(got[method][kind][key], dtype=float),
                       np.array(want[method][kind][key], dtype=float))
