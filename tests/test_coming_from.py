"""Every "Coming from ..." snippet (docs/examples/coming_from/*.py) runs, and what it
computes is checked: against the other library where it is installed and the definitions
coincide, else against a hand computation."""
import csv
import importlib
import inspect
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import hook_dicts_empty

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "examples" / "coming_from"


def run_snippet(name, tmp_path, monkeypatch):
    """Run one snippet in an empty folder (nothing is written into the checkout)."""
    monkeypatch.chdir(tmp_path)
    return runpy.run_path(str(SNIPPETS / f"from_{name}.py"), run_name="__main__")


def test_every_snippet_has_a_test_and_a_page():
    names = sorted(p.stem[len("from_"):] for p in SNIPPETS.glob("from_*.py"))
    assert names == sorted(["dnnbrain", "pair", "slideflow", "pyhealth", "mednet", "captum",
                            "pgc"])
    pages = SNIPPETS.parent.parent / "coming_from"
    for name in names:
        page = (pages / f"{name}.rst").read_text(encoding="utf-8")
        assert f"examples/coming_from/from_{name}.py" in page, name
        assert f"def test_{name}_snippet" in Path(__file__).read_text(encoding="utf-8")


def grad_of(model, x, index):
    """Hand computation: d logits[:, index].sum() / dx."""
    x = x.clone().requires_grad_(True)
    model(x)[:, index].sum().backward()
    return x.grad.numpy()


def test_dnnbrain_snippet(tmp_path, monkeypatch):
    g = run_snippet("dnnbrain", tmp_path, monkeypatch)
    dnn, image = g["dnn"], g["image"]
    x = dnn.test_transform(image)[None] if callable(dnn.test_transform) else None
    ref = np.abs(grad_of(dnn.model, x, 3)[0])           # unit 4 counted from 1 = index 3
    np.testing.assert_allclose(g["img_out"], ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert not np.allclose(g["guided_out"], g["img_out"])
    for fname in ("shape_01_vanilla_saliency.png", "shape_01_guided_saliency.png"):
        arr = np.asarray(Image.open(tmp_path / fname))
        assert arr.shape[:2] == (64, 64) and arr.min() == 0 and arr.max() == 255
    assert g["smooth"].shape == (3, 64, 64) and np.isfinite(g["smooth"]).all()


def test_pair_snippet(tmp_path, monkeypatch):
    g = run_snippet("pair", tmp_path, monkeypatch)
    assert g["grad"].shape == g["ig"].shape == (3, 64, 64)
    assert 0 <= g["gray"].min() and g["gray"].max() == pytest.approx(1.0)
    assert -1 <= g["signed"].min() < 0 < g["signed"].max() <= 1
    assert (tmp_path / "shape_01_smooth.png").is_file()
    dnn = g["dnn"]
    x = dnn.test_transform(Image.open(g["image"]).convert("RGB"))[None]
    # IG completeness (black baseline): the map sums to f(x) - f(baseline)
    black = dnn.test_transform.normalize(torch.zeros(1, 3, 64, 64))
    with torch.no_grad():
        gap = float(dnn.model(x)[0, 3] - dnn.model(black)[0, 3])
    assert g["ig"].sum() == pytest.approx(gap, rel=0.1)
    saliency_core = pytest.importorskip("saliency.core")

    def call_model(xb, call_model_args=None, expected_keys=None):
        t = torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2))).float()
        grads = grad_of(dnn.model, t, 3).transpose(0, 2, 3, 1)
        return {saliency_core.INPUT_OUTPUT_GRADIENTS: grads}

    hwc = x[0].permute(1, 2, 0).numpy().astype(np.float64)
    theirs = saliency_core.GradientSaliency().GetMask(hwc, call_model)
    np.testing.assert_allclose(g["grad"], theirs.transpose(2, 0, 1), rtol=1e-5,
                               atol=1e-6 * np.abs(theirs).max())
    # their grayscale of our map == our grayscale
    np.testing.assert_allclose(
        g["gray"], saliency_core.VisualizeImageGrayscale(g["smooth"].transpose(1, 2, 0)),
        atol=1e-6)


def test_slideflow_snippet(tmp_path, monkeypatch):
    g = run_snippet("slideflow", tmp_path, monkeypatch)
    ref = grad_of(g["model"], g["tile"], 0)[0]            # class_idx=0, counted from 0
    np.testing.assert_allclose(g["vanilla"], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    with torch.no_grad():
        gap = float(g["model"](g["tile"])[0, 0] - g["model"](torch.zeros_like(g["tile"]))[0, 0])
    # preprocessed 0..1 pixels: the black baseline is the zero tile
    assert g["ig_map"].sum() == pytest.approx(gap, rel=0.1, abs=1e-4)
    assert g["xrai"].shape == (48, 48) and g["heat"].shape == (48, 48, 3)
    assert np.asarray(Image.open(tmp_path / "tile_ig_overlay.png")).shape == (48, 48, 3)
    assert hook_dicts_empty(g["model"])


def test_pyhealth_snippet(tmp_path, monkeypatch):
    g = run_snippet("pyhealth", tmp_path, monkeypatch)
    model, batch = g["model"], g["batch"]
    # PyHealth's BasicGradientSaliencyMaps arithmetic, by hand (logits: the predicted
    # class's logit; PyHealth differentiates its softmax probability)
    x = batch["image"].clone().requires_grad_(True)
    out = model(x)
    pred = out.argmax(1)
    out.gather(1, pred[:, None]).sum().backward()
    ref = x.grad.abs().max(dim=1).values.numpy()
    np.testing.assert_allclose(g["sal"], ref, rtol=1e-5, atol=1e-6 * ref.max())
    own = np.stack([grad_of(model, batch["image"][i:i + 1], int(c))[0]
                    for i, c in enumerate(batch["disease"])])
    np.testing.assert_allclose(g["own"], own, rtol=1e-5, atol=1e-6 * np.abs(own).max())
    assert (tmp_path / "saliency_0.png").is_file()
    assert "Normal" in " ".join(t.get_text() for ax in g["fig"].axes
                                for t in [ax.title] + list(ax.texts))


def test_mednet_snippet(tmp_path, monkeypatch):
    g = run_snippet("mednet", tmp_path, monkeypatch)
    assert g["result"].maps == 24                          # 12 stimuli x 2 methods
    assert (tmp_path / "out" / "run" / "eval" / "metrics.json").is_file()
    assert 0 <= g["pe"] <= 1 and g["asf"] >= 0
    table = g["scores"]["table"]
    assert "gradcam" in table and "gradcam++" in table and "random map" in table
    # the trained network's CAMs beat a random map at putting energy in the box
    pes = [float(line.split("|")[3].split("±")[0]) for line in table.splitlines()
           if line.startswith("| gradcam")]
    chance = float([line for line in table.splitlines() if "random map" in line][0]
                   .split("|")[3])
    assert len(pes) == 2 and min(pes) > chance, (pes, chance)


def test_captum_snippet(tmp_path, monkeypatch):
    g = run_snippet("captum", tmp_path, monkeypatch)
    captum = pytest.importorskip("captum.attr")
    model, x = g["dnn"].model, g["x"]

    def close(ours, ref):
        ref = ref.detach().numpy() if torch.is_tensor(ref) else ref
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()

    close(g["grad"], captum.Saliency(model).attribute(x, target=3, abs=False))
    close(g["ig"], captum.IntegratedGradients(model).attribute(
        x, baselines=0 * x, target=3, n_steps=32, method="gausslegendre",
        internal_batch_size=64))
    close(g["neuron"], captum.NeuronGradient(model, model.conv3).attribute(
        x, neuron_selector=(5, 3, 4)))
    close(g["cam"], captum.LayerGradCam(model, model.conv4).attribute(
        x, target=3, relu_attributions=True)[:, 0])
    assert hook_dicts_empty(model)


def test_pgc_snippet(tmp_path, monkeypatch):
    g = run_snippet("pgc", tmp_path, monkeypatch)
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model, x = g["dnn"].model, g["x"]
    with pgc.GradCAM(model, target_layers=[model.conv4_relu]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 4)
    assert np.abs(g["scaled"] - ref).max() < 1e-3
    with pgc.GradCAMPlusPlus(model, target_layers=[model.conv4_relu]) as cam:
        ref = cam(input_tensor=x, targets=None)             # predicted class
    pp = g["predicted"]
    pp = (pp - pp.min((1, 2), keepdims=True)) / np.maximum(
        np.ptp(pp, axis=(1, 2), keepdims=True), 1e-7)
    # pytorch-grad-cam adds 1e-6 to Grad-CAM++'s denominators; the demo network's
    # gradients are small enough for that to show at the percent level
    assert np.abs(pp - ref).max() < 2e-2
    assert g["score"].shape == (4, 64, 64) and g["picture"].shape == (64, 64, 3)
    assert hook_dicts_empty(model)


# --------------------------------------------------------------------------- name tables

PAGES = SNIPPETS.parent.parent / "coming_from"
CALL = re.compile(r"``([A-Za-z_][\w.]*)\(([^`]*)\)``")
CLI = re.compile(r"``(dnn_saliency(?:_batch|_eval)?)((?: -[\w-]+)+)``")


def known_callables():
    """The dnnbrain names the tables may use, resolved to the real objects."""
    from dnnbrain import batch, evaluate, figures, metrics, viz
    from dnnbrain.dnn import base
    from dnnbrain.dnn.algo import get_method, method_names, registry
    from dnnbrain.dnn.algo.engine import SaliencyImage
    from dnnbrain.dnn.models import DNN
    from dnnbrain.io.maps import save_map
    from dnnbrain.io.stim import Stimulus
    objs = {get_method(n).__name__: get_method(n) for n in method_names()}
    objs.update(saliency=registry.saliency, DNN=DNN, Stimulus=Stimulus, run=batch.run,
                evaluate_run=evaluate.evaluate_run, save_map=save_map, to_pil=base.to_pil,
                set_layer=SaliencyImage.set_layer, backprop=SaliencyImage.backprop,
                backprop_smooth=SaliencyImage.backprop_smooth)
    objs.update({n: getattr(viz, n) for n in dir(viz) if not n.startswith("_")})
    objs.update({n: getattr(figures, n) for n in figures.__all__})
    objs.update({n: getattr(metrics, n) for n in metrics.__all__})
    return objs


def parameters(obj):
    return set(inspect.signature(obj).parameters)


def cli_options(command):
    module = {"dnn_saliency": "saliency", "dnn_saliency_batch": "saliency_batch",
              "dnn_saliency_eval": "saliency_eval"}[command]
    parser = importlib.import_module(f"dnnbrain.cli.{module}")._parser()
    return set(parser._option_string_actions)


@pytest.mark.parametrize("name", ["dnnbrain", "pair", "slideflow", "pyhealth", "mednet",
                                  "captum", "pgc"])
def test_name_table_matches_the_signatures(name):
    """Every dnnbrain name in a page's table is a real parameter of the function, class
    or command it is written with: ``Name(param=, other=)`` / ``dnn_saliency -opt``."""
    objs = known_callables()
    with open(PAGES / f"names_{name}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == ["dnnbrain", "notes"] and len(rows) > 5
    checked = 0
    for theirs, ours, _notes in rows[1:]:
        found = 0
        for head, args in CALL.findall(ours):
            cls, _, meth = head.partition(".")
            assert cls in objs, (name, theirs, head)
            obj = getattr(objs[cls], meth) if meth else objs[cls]
            keys = set(re.findall(r"(\w+)\s*=", args))
            keys |= {a.strip() for a in args.split(",") if re.fullmatch(r"\s*\w+\s*", a)}
            missing = keys - parameters(obj)
            assert not missing, (name, theirs, head, sorted(missing))
            found += 1
        for command, opts in CLI.findall(ours):
            missing = set(opts.split()) - cli_options(command)
            assert not missing, (name, theirs, command, sorted(missing))
            found += 1
        assert found, (name, theirs, "no dnnbrain name to check")
        checked += found
    assert checked >= len(rows) - 1
