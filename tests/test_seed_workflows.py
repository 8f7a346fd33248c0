"""What each seed document (../shared/seeds/000_* ... 004_*) shows a user doing, in
dnnbrain's idiom, on the demo network and stimuli and on a small classifier of our own."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dnnbrain import viz
from dnnbrain.dnn.algo import GuidedSaliencyImage, VanillaSaliencyImage, saliency
from dnnbrain.dnn.base import ip, to_input
from dnnbrain.dnn.models import DNN
from dnnbrain.metrics import average_saliency_focus, proportional_energy

from .conftest import hook_dicts_empty


def small_classifier(in_ch=3, n_classes=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_ch, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(6 * 16, n_classes)).eval()


def hand_grad(model, x, index):
    x = x.clone().requires_grad_(True)
    model(x)[:, index].sum().backward()
    return x.grad.numpy()


def test_slideflow_seed(shapenet, demo_stim, tmp_path):
    """000: SaliencyMap(model, class_idx=0).integrated_gradients(preprocess(tile)),
    then inferno and overlay pictures."""
    model = small_classifier()
    tile = torch.rand(1, 3, 32, 32)
    ig0 = saliency(model, tile, method="ig", unit=0, unit_base=0, steps=64,
                   preprocessed=True)
    ig1 = saliency(model, tile, method="ig", unit=1, steps=64, preprocessed=True)
    np.testing.assert_array_equal(ig0, ig1)                 # class_idx 0 == unit 1
    with torch.no_grad():
        gap = float(model(tile)[0, 0] - model(torch.zeros_like(tile))[0, 0])
    assert ig0.sum() == pytest.approx(gap, rel=0.05, abs=1e-4)  # completeness
    assert hook_dicts_empty(model) and not model.training
    # the demo network: IG of each star's true class, as a Slideflow user would plot it
    star = [i for i in range(len(demo_stim)) if demo_stim.data["class"][i] == "star"][0]
    x, _ = to_input(demo_stim[star:star + 1], shapenet.test_transform)
    ig = saliency(shapenet, x, method="ig", layer="fc2", unit=3, unit_base=0, steps=32,
                  preprocessed=True)[0]
    mag = np.abs(ig).sum(0)
    assert proportional_energy(mag, demo_stim.boxes(star)) > 1.5 * (
        proportional_energy(np.ones_like(mag), demo_stim.boxes(star)))
    heat = viz.heatmap(viz.grayscale(ig), cmap="inferno")
    Image.fromarray(viz.overlay(x[0], viz.grayscale(ig), transform=shapenet.test_transform)
                    ).save(tmp_path / "overlay.png")
    assert heat.shape == (64, 64, 3) and heat.dtype == np.uint8
    assert np.asarray(Image.open(tmp_path / "overlay.png")).shape == (64, 64, 3)


def test_pair_seed(shapenet, demo_stim):
    """001: IG + SmoothGrad (GetSmoothedMask) and VisualizeImageGrayscale/Diverging."""
    model = small_classifier()
    x = torch.rand(2, 3, 32, 32)
    grad = saliency(model, x, method="vanilla", unit=2, preprocessed=True)
    np.testing.assert_allclose(grad, hand_grad(model, x, 1), rtol=1e-5, atol=1e-7)
    a = saliency(model, x, method="smoothgrad", unit=2, base="ig", steps=8, n_samples=4,
                 sigma_multiplier=0.15, mode="squared", seed=3, preprocessed=True)
    b = saliency(model, x, method="smoothgrad", unit=2, base="ig", steps=8, n_samples=4,
                 sigma_multiplier=0.15, mode="squared", seed=3, preprocessed=True)
    np.testing.assert_array_equal(a, b)
    assert (a >= 0).all()                                   # squared
    gray = viz.grayscale(a[0])
    assert gray.shape == (32, 32) and gray.min() >= 0 and gray.max() == pytest.approx(1)
    signed = viz.diverging(grad[0])
    assert -1 <= signed.min() < 0 < signed.max() <= 1
    # on the demo stimuli: SmoothGrad-IG of the true class, batched == one by one
    x, _ = to_input(demo_stim[:2], shapenet.test_transform)
    both = saliency(shapenet, x, method="smoothgrad", base="ig", steps=8, n_samples=2,
                    unit="label", labels=demo_stim.labels[:2], unit_base=0, seed=0,
                    preprocessed=True)
    one_based = saliency(shapenet, x, method="smoothgrad", base="ig", steps=8, n_samples=2,
                         unit="label", labels=demo_stim.labels[:2] + 1, seed=0,
                         preprocessed=True)
    assert both.shape == (2, 3, 64, 64) and np.isfinite(both).all()
    np.testing.assert_array_equal(both, one_based)     # 0-based labels == 1-based + 1


class PyHealthStyle(nn.Module):
    """A PyHealth-like model: keyword inputs, a dict with ``y_prob`` out."""

    def __init__(self):
        super().__init__()
        self.net = small_classifier(in_ch=1)
        self.softmax = nn.Softmax(dim=1)   # a module: the last layer dnnbrain sees

    def forward(self, image, disease=None):
        return {"y_prob": self.softmax(self.net(image))}


class Probabilities(nn.Module):
    """What dnnbrain calls: ``forward(x)`` -> the scores PyHealth differentiates."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(image=x)["y_prob"]


def test_pyhealth_seed(shapenet, demo_stim, tmp_path):
    """002: BasicGradientSaliencyMaps(model, input_batch=batch) and its plot."""
    model = PyHealthStyle().eval()
    batch = {"image": torch.rand(3, 1, 24, 24), "disease": torch.tensor([0, 1, 1])}
    maps = saliency(Probabilities(model), batch, method="vanilla", image_key="image",
                    label_key="disease", preprocessed=True)
    sal = viz.reduce_channels(maps, "maxabs")
    # PyHealth's arithmetic by hand
    x = batch["image"].clone().requires_grad_(True)
    prob = model(image=x)["y_prob"]
    prob.gather(1, prob.argmax(1, keepdim=True)).sum().backward()
    ref = x.grad.abs().max(dim=1).values.numpy()
    np.testing.assert_allclose(sal, ref, rtol=1e-5, atol=1e-6 * ref.max())
    fig = viz.labelled_panel(batch["image"][0, 0].numpy(), sal[0], true_label=0,
                             id2label={0: "Normal", 1: "COVID"}, fname=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0 and fig is not None
    # the demo stimulus file's 0-based label column: each image's own class
    own = saliency(shapenet, demo_stim[:3], method="vanilla", unit="label")
    for i in range(3):
        ref = saliency(shapenet, demo_stim[i:i + 1], method="vanilla",
                       unit=int(demo_stim.labels[i]) + 1)[0]
        np.testing.assert_allclose(own[i], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_mednet_seed(tmp_path):
    """003: generate maps, score localisation (proportional energy, average saliency
    focus) and completeness (ROAD), compare methods."""
    from dnnbrain.batch import run
    from dnnbrain.evaluate import evaluate_run
    from dnnbrain.io.stim import demo_stimulus_file
    config = {"model": {"name": "ShapeNet"}, "stimuli": str(demo_stimulus_file()),
              "targets": [{"layer": "fc2", "units": "predicted"}],
              "methods": [{"name": "gradcam", "cam_layer": "conv4_relu"}, "vanilla"],
              "outputs": {"dir": str(tmp_path / "run"), "save": ["npy"]}}
    res = run(config, progress=False)
    assert res.maps == 24
    scores = evaluate_run(tmp_path / "run", metrics=["localisation", "road"],
                          road_percentages=[0.2, 0.5, 0.8], progress=False)
    assert (tmp_path / "run" / "eval" / "metrics.json").is_file()
    table = scores["table"]
    chance = float([r for r in table.splitlines() if "random map" in r][0].split("|")[3])
    pe = {r.split("|")[1].strip(): float(r.split("|")[3].split("±")[0])
          for r in table.splitlines() if r.startswith("| gradcam") or
          r.startswith("| vanilla")}
    assert set(pe) == {"gradcam", "vanilla"} and min(pe.values()) > chance
    # the two mednet measures by hand on a known map
    m = np.zeros((10, 10))
    m[2:4, 2:4] = 1.0
    m[8, 8] = 2.0
    assert proportional_energy(m, [(2, 2, 6, 6)]) == pytest.approx(4 / 6)
    assert 0 < average_saliency_focus(m, [(2, 2, 6, 6)]) <= 1


def test_dnnbrain_seed(shapenet, demo_stim, tmp_path):
    """004: VanillaSaliencyImage / GuidedSaliencyImage, set_layer(layer, unit from 1),
    np.abs(backprop(image)), ip.to_pil(..., True).save(...)."""
    image = Image.open(demo_stim.paths[1])
    for cls in (VanillaSaliencyImage, GuidedSaliencyImage):
        method = cls(shapenet)
        method.set_layer("fc2", 4)
        out = np.abs(method.backprop(image))
        assert out.shape == (3, 64, 64) and out.dtype == np.float32
        ip.to_pil(out, True).save(tmp_path / f"{cls.__name__}.png")
        arr = np.asarray(Image.open(tmp_path / f"{cls.__name__}.png"))
        assert arr.min() == 0 and arr.max() == 255
    x = shapenet.test_transform(image)[None]
    ref = np.abs(hand_grad(shapenet.model, x, 3)[0])
    van = np.abs(VanillaSaliencyImage(shapenet, "fc2", 4).backprop(image))
    np.testing.assert_allclose(van, ref, rtol=1e-5, atol=1e-6 * ref.max())
    # a user's own network, wrapped: units of a named module count from 1
    model = small_classifier()
    dnn = DNN(model)
    x = torch.rand(1, 3, 16, 16)
    got = VanillaSaliencyImage(dnn).set_layer("4", 2).backprop(x, preprocessed=True)
    np.testing.assert_allclose(got, hand_grad(model, x, 1), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unit"):
        VanillaSaliencyImage(dnn).set_layer("4", 0).backprop(x, preprocessed=True)
    smooth = VanillaSaliencyImage(dnn, "4", 2).backprop_smooth(x, 4, seed=1,
                                                              preprocessed=True)
    x0 = x.clone()
    VanillaSaliencyImage(dnn, "4", 2).backprop_smooth(x, 4, seed=1, preprocessed=True)
    assert torch.equal(x, x0) and np.isfinite(smooth).all()
    assert hook_dicts_empty(model)
