"""Class-level conveniences in Python: unit='label', unit_base, folder / mapping inputs,
the 'maxabs' channel reduction, grayscale networks, and SmoothGrad's one default."""
import inspect

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dnnbrain import viz
from dnnbrain.batch.pictures import heatmaps
from dnnbrain.dnn.algo import SmoothGrad, VanillaSaliencyImage, saliency
from dnnbrain.dnn.algo.target import from_base, labels_to_units
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN
from dnnbrain.io.stim import demo_stimulus_file

from .conftest import hook_dicts_empty


@pytest.fixture(scope="module")
def x12(shapenet, demo_stim):
    """The demo stimuli as network input ``(12, 3, 64, 64)``."""
    return shapenet.test_transform.batch(demo_stim.paths)


@pytest.fixture(scope="module")
def per_unit(shapenet, x12):
    """Vanilla maps of all four fc2 units, ``(12, 4, 3, 64, 64)``."""
    return saliency(shapenet, x12, layer="fc2", unit=[1, 2, 3, 4], preprocessed=True)


def test_label_unit_from_a_stimulus_file_is_label_plus_one(shapenet, demo_stim, per_unit):
    got = saliency(shapenet, demo_stim, layer="fc2", unit="label")
    want = per_unit[np.arange(12), demo_stim.labels]  # label k (from 0) is unit k + 1
    assert len(set(demo_stim.labels.tolist())) == 4  # every class is there
    np.testing.assert_array_equal(got, want)
    by_path = saliency(shapenet, str(demo_stimulus_file()), layer="fc2", unit="label")
    np.testing.assert_array_equal(by_path, want)
    assert hook_dicts_empty(shapenet.model) and not shapenet.model.training


def test_labels_argument_counts_from_unit_base(shapenet, demo_stim, x12, per_unit):
    lab0 = torch.tensor(demo_stim.labels)  # 0-based, as a PyHealth loader gives them
    want = per_unit[np.arange(12), demo_stim.labels]
    one = saliency(shapenet, x12, layer="fc2", unit="label", labels=(lab0 + 1).tolist(),
                   preprocessed=True)
    zero = saliency(shapenet, x12, layer="fc2", unit="label", labels=lab0, unit_base=0,
                    preprocessed=True)
    np.testing.assert_array_equal(one, want)
    np.testing.assert_array_equal(zero, want)
    # 'label' next to fixed units, several per image: (N, U, ...)
    both = saliency(shapenet, x12, layer="fc2", unit=["label", 0], labels=lab0,
                    unit_base=0, preprocessed=True)
    np.testing.assert_array_equal(both[:, 0], want)
    np.testing.assert_array_equal(both[:, 1], per_unit[:, 0])
    x_before = x12.clone()
    # never a silent shift: a 0 with the default base is refused and the fix is named
    with pytest.raises(ValueError, match=r"^`labels` counted from unit_base=1 must be in "
                                         r"1\.\.4, got 0; .*pass unit_base=0$"):
        saliency(shapenet, x12, layer="fc2", unit="label", labels=lab0, preprocessed=True)
    with pytest.raises(ValueError, match=r"one label per image \(12\), got 3"):
        saliency(shapenet, x12, layer="fc2", unit="label", labels=[1, 2, 3],
                 preprocessed=True)
    with pytest.raises(ValueError, match=r"^`unit` 'label' needs each image's label"):
        saliency(shapenet, x12, layer="fc2", unit="label", preprocessed=True)
    with pytest.raises(ValueError, match=r"must be in 0\.\.3, got 4"):
        saliency(shapenet, x12, layer="fc2", unit="label", labels=lab0 * 0 + 4,
                 unit_base=0, preprocessed=True)
    assert torch.equal(x12, x_before) and hook_dicts_empty(shapenet.model)


def test_labelled_context_is_the_engine_path_and_ends_with_the_block(shapenet, demo_stim,
                                                                    x12, per_unit):
    m = VanillaSaliencyImage(shapenet).set_layer("fc2", "label")
    with m.labelled(demo_stim.labels, unit_base=0):
        got = m.backprop(x12, preprocessed=True)
    np.testing.assert_array_equal(got, per_unit[np.arange(12), demo_stim.labels])
    with pytest.raises(ValueError, match="'label' needs one label per image"):
        m.backprop(x12, preprocessed=True)  # the labels were for the block only
    sg = SmoothGrad(shapenet, "fc2", "label", n_samples=2, seed=3)
    with sg.labelled(demo_stim.labels[:2], unit_base=0):
        smooth = sg.backprop(x12[:2], preprocessed=True)
    fixed = SmoothGrad(shapenet, "fc2", (demo_stim.labels[:2] + 1).tolist(), n_samples=2,
                       seed=3).backprop(x12[:2], preprocessed=True)
    np.testing.assert_allclose(smooth, fixed[np.arange(2), np.arange(2)], atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "occlusion", "ig"])
def test_label_unit_in_other_method_families(shapenet, demo_stim, x12, method):
    kw = {"window": 16, "stride": 16} if method == "occlusion" else \
        {"steps": 4} if method == "ig" else {}
    lab = demo_stim.labels[:3]
    got = saliency(shapenet, x12[:3], method=method, layer="fc2", unit="label",
                   labels=lab, unit_base=0, preprocessed=True, **kw)
    for i in range(3):
        one = saliency(shapenet, x12[i:i + 1], method=method, layer="fc2",
                       unit=int(lab[i]) + 1, preprocessed=True, **kw)
        # float32 rounding differs between a pass of 3 images and of 1: score differences
        # (occlusion) agree to a small fraction of the map's range, not to 1e-6 absolute
        np.testing.assert_allclose(got[i], one[0], rtol=1e-4,
                                   atol=1e-5 * max(1e-6, float(np.abs(one[0]).max())))


def test_unit_base_zero_shifts_every_number_once(shapenet, x12):
    a = saliency(shapenet, x12[:2], layer="fc2", unit=[0, 3], unit_base=0,
                 preprocessed=True)
    b = saliency(shapenet, x12[:2], layer="fc2", unit=[1, 4], preprocessed=True)
    np.testing.assert_array_equal(a, b)
    c = saliency(shapenet, x12[:2], layer="conv4", unit=(1, 0, 2), unit_base=0,
                 preprocessed=True)
    d = saliency(shapenet, x12[:2], layer="conv4", unit=(2, 1, 3), preprocessed=True)
    np.testing.assert_array_equal(c, d)
    m = VanillaSaliencyImage(shapenet).set_layer("fc2", [0, 3], unit_base=0)
    assert m.get_layer() == ("fc2", [1, 4])  # stored 1-based: no file ever sees base 0
    assert from_base([0, (2, 0, 0), ("cls", 4), "label", "predicted"], 0) == \
        [1, (3, 1, 1), ("cls", 5), "label", "predicted"]
    for bad in (2, -1, True, "0", 0.0, None):
        with pytest.raises(ValueError, match=r"^`unit_base` must be 0 .* or 1 .*got"):
            saliency(shapenet, x12[:1], layer="fc2", unit=1, unit_base=bad,
                     preprocessed=True)
    with pytest.raises(ValueError, match=r"units count from 1"):  # 4 + 1 is past fc2's 4
        saliency(shapenet, x12[:1], layer="fc2", unit=4, unit_base=0, preprocessed=True)
    assert labels_to_units(np.array([[0], [3]]), 2, 0) == [1, 4]  # (N, 1) label columns
    with pytest.raises(ValueError, match="integer class label"):
        labels_to_units([0.5, 1.0], 2, 0)


def test_mapping_batch_and_its_keys(shapenet, demo_stim, x12, per_unit):
    lab = torch.tensor(demo_stim.labels)
    want = per_unit[np.arange(12), demo_stim.labels]
    got = saliency(shapenet, {"image": x12, "label": lab, "patient_id": list(range(12))},
                   layer="fc2", unit="label", unit_base=0, preprocessed=True)
    np.testing.assert_array_equal(got, want)
    named = saliency(shapenet, {"scan": x12, "dx": lab}, layer="fc2", unit="label",
                     unit_base=0, preprocessed=True, image_key="scan", label_key="dx")
    np.testing.assert_array_equal(named, want)
    fixed = saliency(shapenet, {"pixel_values": x12}, layer="fc2", unit=2,
                     preprocessed=True)  # no label needed for a fixed unit
    np.testing.assert_array_equal(fixed, per_unit[:, 1])
    with pytest.raises(ValueError, match=r"^the `images` mapping has no image key: it has "
                                         r"\['label', 'scan'\].*image_key=$"):
        saliency(shapenet, {"scan": x12, "label": lab}, layer="fc2", unit="label")
    with pytest.raises(ValueError, match=r"^the `images` mapping has no label key"):
        saliency(shapenet, {"image": x12, "dx": lab}, layer="fc2", unit="label",
                 preprocessed=True)
    with pytest.raises(ValueError, match=r"^`label_key` 'y' is not a key"):
        saliency(shapenet, {"image": x12}, layer="fc2", unit=1, label_key="y",
                 preprocessed=True)


def test_folder_and_bare_module(shapenet, demo_stim, tmp_path):
    for i in (0, 5, 7):  # a folder of three ordinary image files
        Image.open(demo_stim.paths[i]).save(tmp_path / f"img_{i}.png")
    got = saliency(shapenet, str(tmp_path), layer="fc2", unit=1)
    files = [str(tmp_path / f"img_{i}.png") for i in (0, 5, 7)]
    np.testing.assert_array_equal(got, saliency(shapenet, files, layer="fc2", unit=1))
    with pytest.raises(ValueError, match=r"^`unit` 'label' needs a 'label' column: the "
                                         rf"folder '{tmp_path}' has columns \['stimID'\]"):
        saliency(shapenet, str(tmp_path), layer="fc2", unit="label")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    x = torch.rand(2, 3, 8, 8)
    bare = saliency(net, x, layer="3", unit=2, preprocessed=True)
    wrapped = saliency(DNN(net), x, layer="3", unit=2, preprocessed=True)
    np.testing.assert_array_equal(bare, wrapped)
    with pytest.raises(TypeError, match="must be a dnnbrain DNN or a torch.nn.Module"):
        saliency("alexnet", x, layer="3")


def test_maxabs_channel_reduction_values():
    m = np.array([[[1.0, -2.0]], [[-3.0, 0.5]], [[2.0, 1.0]]])  # (3, 1, 2)
    np.testing.assert_array_equal(viz.reduce_channels(m, "maxabs"), [[3.0, 2.0]])
    np.testing.assert_array_equal(viz.reduce_channels(m), [[6.0, 3.5]])
    batch = np.stack([m, -2 * m])[:, None]  # (N=2, U=1, 3, 1, 2)
    out = viz.reduce_channels(torch.tensor(batch), "maxabs")
    assert out.shape == (2, 1, 1, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1, 0], [[6.0, 4.0]])
    # PyHealth's gradient map: torch.max(torch.abs(grad), dim=1)
    g = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(viz.reduce_channels(g, "maxabs"),
                                  torch.max(torch.abs(g), dim=1)[0].numpy())
    gray = viz.grayscale(m, percentile=100, reduce="maxabs")
    np.testing.assert_allclose(gray, [[1.0, 0.0]])  # (s - min) / (max - min), s = max|m|
    pics = heatmaps(g.numpy(), "inferno", 99.0, "maxabs")
    for k in range(4):
        np.testing.assert_array_equal(pics[k], viz.heatmap(g[k], "inferno", 99.0,
                                                            reduce="maxabs"))
    assert not np.array_equal(pics[0], heatmaps(g.numpy()[:1], "inferno", 99.0)[0])
    with pytest.raises(ValueError, match=r"^`reduce` must be one of \['mean', 'max'\] .*"
                                         r"viz\.reduce_channels\(maps, 'maxabs'\)$"):
        saliency(DNN(nn.Sequential(nn.Conv2d(3, 1, 1))), np.zeros((4, 4, 3), np.uint8),
                 layer="0", unit=1, reduce="maxabs")  # a map's reduction, not a unit's
    for bad in ("max", "abs", None):
        with pytest.raises(ValueError, match=r"^`reduce` must be one of \['sumabs', "
                                             r"'maxabs'\]"):
            viz.reduce_channels(m, bad)


class Gray(nn.Module):
    """One-channel network with a known input gradient: ``W * x`` summed (linear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Flatten()
        with torch.no_grad():
            self.conv.weight.fill_(2.0)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)))


def test_grayscale_model_from_ordinary_images():
    dnn = DNN(Gray(), img_size=8)
    assert dnn.test_transform.channels == 1  # from the first convolution's in_channels
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    x = dnn.test_transform(rgb)
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x.numpy(), 0.299, atol=1e-6)  # luminance of pure red
    pil = Image.fromarray(np.random.RandomState(0).randint(0, 256, (8, 8, 3), np.uint8))
    lum = np.asarray(pil.convert("L"), np.float32) / 255  # PIL's own 601-2 luma, rounded
    np.testing.assert_allclose(dnn.test_transform(pil)[0].numpy(), lum, atol=1 / 255)
    grad = saliency(dnn, [rgb, pil], layer="fc", unit=1)
    assert grad.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(grad, 2.0 / 64, rtol=1e-6)  # d mean(2 x) / dx
    assert hook_dicts_empty(dnn.model)
    with pytest.raises(ValueError, match=r"channels=1"):
        ImageTransform(8, mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], channels=1)
    with pytest.raises(ValueError, match=r"^`channels` must be 3 \(RGB\) or 1"):
        ImageTransform(8, channels=2)


def test_one_channel_model_refuses_rgb_input_in_one_line():
    dnn = DNN(Gray(), test_transform=ImageTransform(8))  # an RGB transform, on purpose
    with pytest.raises(ValueError) as err:
        saliency(dnn, np.zeros((8, 8, 3), np.uint8), layer="fc", unit=1)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("`image` of shape (3, 8, 8) gives the network "
                                              "Gray 3-channel input but its first layer "
                                              "expects 1 channel ")
    assert "in_channels=1" in msg and "channels=1" in msg
    assert hook_dicts_empty(dnn.model) and dnn.model.training  # mode as it was


def test_one_channel_model_probes_name_its_transform():
    """Activations and feature visualisation give the same one-line error as the
    saliency methods, naming what the 1-channel test_transform gives."""
    from dnnbrain.probe import activations, visualise
    dnn = DNN(Gray(), test_transform=ImageTransform(8, channels=1))
    x = torch.zeros(2, 3, 8, 8)  # 3-channel network input, preprocessed
    with pytest.raises(ValueError, match=r"^`image` of shape \(3, 8, 8\) gives the network "
                                         r"Gray 3-channel input .*gives \(1, 8, 8\)"):
        activations(dnn, x, ["fc"], preprocessed=True)
    ok = activations(dnn, torch.zeros(2, 1, 8, 8), ["fc"], preprocessed=True)
    assert ok["fc"].shape[0] == 2
    vis = visualise(dnn, "fc", 1, steps=2, seed=0)  # synthesised in colour, seen in gray
    im = vis.images[0]
    assert im.shape == (8, 8, 3) and np.array_equal(im[..., 0], im[..., 2])
    gray = dnn.test_transform.normalize(torch.from_numpy(im[..., :1]).permute(2, 0, 1)[None])
    with torch.no_grad():
        assert float(dnn.model(gray)[0, 0]) == pytest.approx(float(vis.activation[0]), 1e-5)
    assert hook_dicts_empty(dnn.model)


def test_smoothgrad_has_one_default(shapenet, x12):
    d1 = inspect.signature(SmoothGrad.__init__).parameters["sigma_multiplier"].default
    d2 = inspect.signature(VanillaSaliencyImage.backprop_smooth).parameters[
        "sigma_multiplier"].default
    assert d1 == d2 == 0.1  # DNNBrain's backprop_smooth default (the contract)
    a = SmoothGrad(shapenet, "fc2", 2, n_samples=3, seed=5).backprop(x12[:2],
                                                                     preprocessed=True)
    b = VanillaSaliencyImage(shapenet, "fc2", 2).backprop_smooth(x12[:2], 3, seed=5,
                                                                  preprocessed=True)
    np.testing.assert_allclose(a, b, atol=1e-7)
