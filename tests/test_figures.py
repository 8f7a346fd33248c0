"""Publication figures: panel text, colorbar and scaling, colormap by sign, stimuli as the
network saw them."""
import numpy as np
import pytest
from PIL import Image

from dnnbrain import figures, viz
from dnnbrain.dnn.base import ImageTransform


def _images(n=2, shape=(8, 8, 3)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(n)]


def test_colormap_by_sign_and_each_map_scaled_to_its_own_max():
    pos = np.array([[0.0, 2.0], [1.0, 4.0]])
    fig = figures.saliency_grid(_images(2, (2, 2, 3)), [[pos, 10 * pos]])
    a, b = (ax.images[0] for ax in fig.axes[2:4])
    assert a.get_cmap().name == viz.SEQUENTIAL == "inferno" and a.get_clim() == (0.0, 1.0)
    np.testing.assert_allclose(a.get_array(), pos / 4)  # each map / its own max |value|
    np.testing.assert_allclose(b.get_array(), pos / 4)
    signed = np.array([[-1.0, 0.0], [0.5, 2.0]])
    fig = figures.saliency_grid(_images(2, (2, 2, 3)), [[pos, signed]])
    a, b = (ax.images[0] for ax in fig.axes[2:4])
    assert b.get_cmap().name == viz.DIVERGING == "RdBu_r" and b.get_clim() == (-1.0, 1.0)
    assert a.get_clim() == (-1.0, 1.0)  # one colorbar: zero at its centre for both
    np.testing.assert_allclose(b.get_array(), signed / 2)
    bar = fig.axes[-1]
    assert bar.get_ylim() == (-1.0, 1.0) and "own max |value|" in bar.get_ylabel()
    # explicit limits: raw values, stated on the colorbar
    fig = figures.saliency_grid(_images(1, (2, 2, 3)), [[signed]], vmin=-2, vmax=2)
    assert fig.axes[1].images[0].get_clim() == (-2.0, 2.0)
    assert fig.axes[-1].get_ylabel() == "map value (colour limits -2 .. 2, all maps)"
    assert viz.default_cmap([pos, -pos]) == "RdBu_r" and viz.default_cmap(pos) == "inferno"


def test_gray_mode_and_rgb_panels_say_how_they_are_scaled():
    maps = np.random.default_rng(1).normal(size=(1, 2, 3, 8, 8))
    fig = figures.saliency_grid(_images(), maps, mode="gray", percentile=95)
    assert fig.axes[-1].get_ylabel() == ("|map| summed over channels, each map scaled to "
                                         "its own 95th percentile (clipped)")
    assert fig.axes[2].images[0].get_cmap().name == "inferno"
    fig = figures.saliency_grid(_images(), maps, panel_titles=[["a\nb", "c"]],
                                title="guided saliency", ncol=1)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["", "a\nb", "", "c"]  # 2 blocks
    assert fig.axes[-1].get_ylabel().startswith("RGB: each channel of the map, min-max")
    assert fig.get_suptitle() == "guided saliency"
    with pytest.raises(ValueError, match="`panel_titles`"):
        figures.saliency_grid(_images(), maps, panel_titles=[["a"]])
    with pytest.raises(ValueError, match="`ncol`"):
        figures.saliency_grid(_images(), maps, ncol=0)


def test_stimulus_drawn_as_the_network_saw_it(tmp_path):
    # a wide RGBA image: the network input is 16 x 16 (squashed, alpha dropped)
    rgba = np.zeros((10, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :20, 3] = 0  # the left half transparent
    path = tmp_path / "wide.png"
    Image.fromarray(rgba, "RGBA").save(path)
    tf = ImageTransform(16, mean=[0.5] * 3, std=[0.25] * 3)
    seen = viz.network_view(path, tf)
    np.testing.assert_array_equal(seen, viz.to_uint8_image(tf(str(path)), tf))
    assert seen.shape == (16, 16, 3)
    fig = figures.saliency_grid([path], [[np.ones((16, 16))]], transform=tf)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), seen)
    crop = ImageTransform(16, resize=20)  # shorter side to 20, centre 16 x 16
    assert viz.network_view(path, crop).shape == (16, 16, 3)
