"""Regenerate every picture of the README and the docs, and ``img/pictures.json``.

Run from the repository root: ``python img/make_all.py`` (offline; a few minutes on 2 CPU
cores). It draws

* ``demo_guided.png``: the README's ``dnn_saliency`` command (:data:`README_ARGS`);
* ``gallery.png`` and ``gallery_vit.png``: :mod:`make_gallery` (every method, ShapeNet and
  ShapeViT);
* ``eval_localisation.png`` and ``eval_road.png``: the demo run's (``docs/examples/
  demo_run.yaml``) ``fc2 predicted`` target, evaluated (localisation and ROAD);

and writes ``img/pictures.json``: per picture the SHA-256 of the PNG and a record of what
was drawn (a coarse fingerprint of each map, the panel titles, the plotted values), plus a
stamp of these scripts. ``tests/test_pictures.py`` checks that the committed pictures are
the ones recorded, that no picture is stale or missing, and recomputes the records (the
cheap one in the fast suite, the rest behind ``slow``): a picture that no longer matches
what the code draws fails the test until this script is run again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # make_gallery, beside this file
    sys.path.insert(0, str(HERE))
JSON_NAME = "pictures.json"
#: The README's command for the main figure (before ``-out``).
README_ARGS = ["-net", "ShapeNet", "-layer", "fc2", "-chn", "predicted", "-stim",
               "dnnbrain/data/stimuli/shapes.stim.csv", "-meth", "guided", "-mode", "gray",
               "-cmap", "inferno"]
DEMO_RUN = ROOT / "docs" / "examples" / "demo_run.yaml"
#: Decimals of the recorded numbers (fingerprints, plotted values).
DECIMALS = 4


def stamp() -> str:
    """SHA-256 of the picture scripts (``img/*.py``): a changed script means the pictures
    must be drawn again."""
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes().replace(b"\r\n", b"\n"))
    return h.hexdigest()


def fingerprint(arr: Any, cells: int = 8) -> List[List[float]]:
    """A map's coarse content: ``|map|`` (summed over channels), mean over a ``cells x
    cells`` grid of blocks, divided by its largest block, rounded to :data:`DECIMALS`."""
    a = np.abs(np.asarray(arr, dtype=np.float64))
    a = a.sum(0) if a.ndim == 3 else a
    h, w = a.shape
    rows = np.array_split(np.arange(h), cells)
    cols = np.array_split(np.arange(w), cells)
    blocks = np.array([[a[np.ix_(r, c)].mean() for c in cols] for r in rows])
    peak = blocks.max()
    return np.round(blocks / peak if peak > 0 else blocks, DECIMALS).tolist()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def demo_guided(out: Path) -> Dict[str, Any]:
    """The README's ``dnn_saliency`` command into ``out``; returns its record (manifest
    rows and each map's fingerprint)."""
    import csv

    from dnnbrain.cli.saliency import main
    args = [str(ROOT / a) if a.endswith(".csv") else a for a in README_ARGS]
    if main(args + ["-out", str(out), "-force", "-q"]) != 0:
        raise RuntimeError("dnn_saliency failed")
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {"rows": [[r["stimulus"], r["unit"], r["class"]] for r in rows],
            "maps": [fingerprint(np.load(out / r["file"])) for r in rows]}


def gallery(net: str) -> tuple:
    """:func:`make_gallery.draw` of ``net``: (figure, record)."""
    import make_gallery
    fig, drawn = make_gallery.draw(net)
    return fig, {"titles": drawn["titles"], "maps": [fingerprint(m) for m in drawn["maps"]]}


def demo_evaluation(work: Path) -> Dict[str, Any]:
    """The demo run's ``fc2 predicted`` target (its maps only), evaluated with
    localisation and ROAD; returns the evaluation result."""
    from dnnbrain.batch import run
    from dnnbrain.evaluate import evaluate_run
    cfg = yaml.safe_load(DEMO_RUN.read_text(encoding="utf-8"))
    cfg["stimuli"] = str((DEMO_RUN.parent / cfg["stimuli"]).resolve())
    cfg["targets"] = [t for t in cfg["targets"] if t["units"] == "predicted"]
    cfg["outputs"] = {"dir": str(work), "save": ["npy"]}
    cfg["model"]["device"] = "cpu"
    cfg.pop("evaluate", None)
    run(cfg, progress=False)
    return evaluate_run(work, metrics=["localisation", "road"], plots=False, progress=False)


def evaluation_record(res: Dict[str, Any]) -> Dict[str, Any]:
    """What the evaluation figures plot: per method the localisation means and stds and
    the mean ROAD curves, rounded."""
    def r(v: Any) -> Any:
        return None if v is None else round(float(v), DECIMALS)
    out = {}
    for a in res["aggregate"]:
        m = a["metrics"]
        out[a["method"]] = {
            "localisation": {k: [r(m[k]["mean"]), r(m[k]["std"])] for k in
                             ("proportional_energy", "average_saliency_focus",
                              "pointing_game", "relevance_rank_accuracy")},
            "road": {k: [r(v) for v in a["curves"][k]] for k in ("road_morf", "road_lerf")}}
    return out


def main() -> Path:
    """Draw every picture into ``img/`` and write ``img/pictures.json``; returns it."""
    from dnnbrain.evaluate.plots import localisation_figure, road_figure
    pictures: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record = demo_guided(tmp / "demo")
        shutil.copyfile(tmp / "demo" / "guided_fc2.png", HERE / "demo_guided.png")
        pictures["demo_guided.png"] = record
        for net, name in (("ShapeNet", "gallery.png"), ("ShapeViT", "gallery_vit.png")):
            fig, record = gallery(net)
            fig.savefig(HERE / name, dpi=110)
            pictures[name] = record
        res = demo_evaluation(tmp / "run")
        for name, build in (("eval_localisation.png", localisation_figure),
                            ("eval_road.png", road_figure)):
            build(res).savefig(HERE / name, format="png", dpi=110)
        pictures["eval_localisation.png"] = pictures["eval_road.png"] = {
            "values": evaluation_record(res)}
    import make_featvis  # the feature-visualisation gallery (docs/probing.rst)
    make_featvis.main(str(HERE / "featvis.png"))
    pictures["featvis.png"] = {}
    data = {"stamp": stamp(),
            "pictures": {k: {"sha256": _sha(HERE / k), **v} for k, v in pictures.items()}}
    path = HERE / JSON_NAME
    path.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(main())
