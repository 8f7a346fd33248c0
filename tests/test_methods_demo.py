"""Every registered method on the shipped demo network, by name, from Python and the CLI."""
import numpy as np
import torch
import pytest

from dnnbrain.cli.saliency import main
from dnnbrain.dnn.algo import get_method, method_names, saliency
from dnnbrain.dnn.algo.engine import SaliencyImage
from dnnbrain.io.stim import demo_stimulus_file
from dnnbrain.metrics import boxes_to_mask, proportional_energy

# small but real settings, so the whole registry runs in seconds
FAST = {"smoothgrad": {"n_samples": 4}, "ig": {"steps": 8}, "blur_ig": {"steps": 8},
        "guided_ig": {"steps": 8}, "xrai": {"steps": 8}, "occlusion": {"window": 8,
                                                                      "stride": 8}}
MAP_VALUED = {"xrai", "gradcam", "gradcam++", "scorecam", "occlusion",
              "upsampled_activation"}
TARGETS = [("conv3", 5), ("fc1", 7), ("fc2", "predicted")]
# attention methods need attention modules: on the CNN demo network they refuse, clearly
# (they run on transformers in tests/test_attention.py)
TRANSFORMER_ONLY = {"rollout", "chefer"}


@pytest.mark.parametrize("name", method_names())
def test_every_method_every_target_kind(shapenet, demo_stim, name):
    images = demo_stim.paths[:4]
    if name in TRANSFORMER_ONLY:
        with pytest.raises(ValueError, match="^no attention module runs before the target "
                           "layer 'fc2' of ShapeNet \\(searched: nn.MultiheadAttention"):
            saliency(shapenet, images, method=name, layer="fc2", unit=1)
        return
    for layer, unit in TARGETS:
        if name == "upsampled_activation" and layer != "conv3":
            continue  # an activation map needs a spatial layer (checked in its own tests)
        params = dict(FAST.get(name, {}))
        if name in ("gradcam", "gradcam++", "scorecam") and layer == "conv3":
            params["cam_layer"] = "conv2_relu"  # non-negative maps: a CAM can be nonzero
        maps = saliency(shapenet, images, method=name, layer=layer, unit=unit, **params)
        shape = (4, 64, 64) if name in MAP_VALUED else (4, 3, 64, 64)
        assert maps.shape == shape and maps.dtype == np.float32, (name, layer)
        assert np.isfinite(maps).all() and np.abs(maps).max() > 0, (name, layer)


def test_registry_names_resolve_and_unknown_is_refused():
    for name in method_names():
        cls = get_method(name)
        assert isinstance(cls, type)
        assert issubclass(cls, SaliencyImage) or name == "smoothgrad"
    with pytest.raises(ValueError, match="`method` must be one of .*'vanilla'"):
        get_method("lrp")


@pytest.mark.parametrize("name,params", [("ig", {"steps": 32}), ("xrai", {"steps": 16}),
                                         ("gradcam", {"cam_layer": "conv4"})])
def test_true_class_maps_beat_a_uniform_map(shapenet, demo_stim, name, params):
    """A uniform map puts the box's area fraction of its energy in the box; these maps
    must put more there for most (>= 10 of 12) images."""
    units = [int(u) + 1 for u in demo_stim.labels]
    beats = 0
    for i, path in enumerate(demo_stim.paths):
        m = saliency(shapenet, path, method=name, layer="fc2", unit=units[i], **params)
        m = np.abs(m).sum(0) if m.ndim == 3 else np.clip(m, 0, None)
        area = boxes_to_mask(demo_stim.boxes(i), (64, 64)).mean()
        beats += proportional_energy(m, demo_stim.boxes(i)) > area
    assert beats >= 10, beats


@pytest.mark.slow
@pytest.mark.parametrize("name", method_names())
def test_cli_runs_every_method(tmp_path, name):
    if name in TRANSFORMER_ONLY:
        pytest.skip("attention methods need a transformer (tests/test_attention.py)")
    params = [f"{k}={v}" for k, v in FAST.get(name, {}).items()]
    layer = "conv4" if name == "upsampled_activation" else "fc2"
    argv = ["-net", "ShapeNet", "-layer", layer, "-chn", "1", "2", "-stim",
            str(demo_stimulus_file()), "-meth", name, "-out", str(tmp_path / name),
            "-ncol", "12"]
    for p in params:
        argv += ["-param", p]
    assert main(argv) == 0
    assert (tmp_path / name / f"{name}_{layer}.png").is_file()
    maps = sorted((tmp_path / name / "npy").glob("*.npy"))
    assert len(maps) == 24 and np.isfinite(np.load(maps[0])).all()


@pytest.mark.parametrize("layer,unit", [("conv3", 5), ("fc2", "predicted")])
def test_ig_completeness_on_the_demo_network(shapenet, demo_stim, layer, unit):
    """sum of IG attributions = f(x) - f(black) within 1 % at 256 steps."""
    from dnnbrain.dnn.algo import IntegratedGradients
    ig = IntegratedGradients(shapenet, layer, unit, batch_size=256, steps=256)
    images = demo_stim.paths[:4]
    x = shapenet.test_transform.batch(images)
    base = shapenet.test_transform.normalize(torch.zeros_like(x))
    units = ig.fixed_units(x, ig.units * 4)
    change = (ig.activation(x, units) - ig.activation(base, units)).numpy()
    delta = ig.convergence_delta(images)
    assert np.abs(change).min() > 1e-3
    assert (np.abs(delta) <= 0.01 * np.abs(change)).all(), (delta, change)


def test_method_parameters_pass_through_by_name(shapenet, demo_stim):
    a = saliency(shapenet, demo_stim.paths[0], method="ig", layer="fc2", unit=1, steps=8,
                 rule="gausslegendre")
    from dnnbrain.dnn.algo import IntegratedGradients
    b = IntegratedGradients(shapenet, "fc2", 1, steps=8, rule="gausslegendre").backprop(
        demo_stim.paths[0])
    assert np.array_equal(a, b)
