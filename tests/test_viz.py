"""dnnbrain.viz: values on small hand-made arrays, headless figures."""
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from dnnbrain import viz
from dnnbrain.dnn.base import ImageTransform


def cmap_rgb(name, t):
    return np.rint(np.asarray(matplotlib.colormaps[name](t))[:3] * 255).astype(np.uint8)


# ------------------------------------------------------------------ grayscale


def test_grayscale_sums_abs_over_channels_and_rescales_min_max():
    m = np.zeros((3, 2, 2), np.float32)
    m[0] = [[1, -2], [0, 0]]
    m[1] = [[-1, 0], [0, 1]]
    m[2] = [[0, 2], [0, 1]]              # |.| sums: [[2, 4], [0, 2]]
    out = viz.grayscale(m, percentile=100)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_allclose(out, [[0.5, 1.0], [0.0, 0.5]])
    # channels last and a tensor give the same answer
    np.testing.assert_array_equal(viz.grayscale(np.moveaxis(m, 0, -1), 100), out)
    np.testing.assert_array_equal(viz.grayscale(torch.from_numpy(m), 100), out)


def test_grayscale_percentile_clips_the_outlier():
    s = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])   # 2-D map used as is (|.|)
    out = viz.grayscale(s, percentile=50)                 # median 3.5, min 1
    np.testing.assert_allclose(out, [[0, 0.4, 0.8], [1, 1, 1]], rtol=1e-6)
    # percentile 100: the outlier alone reaches 1
    np.testing.assert_allclose(viz.grayscale(s, 100)[0], np.array([0, 1, 2]) / 99, rtol=1e-6)
    # default 99 percentile: np.percentile semantics, everything in 0..1
    vmax = np.percentile(s, 99)
    np.testing.assert_allclose(viz.grayscale(s), np.clip((s - 1) / (vmax - 1), 0, 1),
                               rtol=1e-6)


def test_grayscale_constant_and_sparse_maps_never_nan():
    np.testing.assert_array_equal(viz.grayscale(np.full((3, 4, 4), -2.0)), 0.0)
    sparse = np.zeros((4, 4))
    sparse[1, 2] = 5.0                   # median == min: the non-zero pixel saturates
    out = viz.grayscale(sparse, percentile=50)
    assert np.isfinite(out).all() and out[1, 2] == 1.0 and out.sum() == 1.0


@pytest.mark.parametrize("bad", [0, -5, 100.5, "99", True, None])
def test_bad_percentile_names_the_parameter(bad):
    with pytest.raises(ValueError, match="`percentile`"):
        viz.grayscale(np.ones((2, 2)), percentile=bad)
    with pytest.raises(ValueError, match="`percentile`"):
        viz.diverging(np.ones((2, 2)), percentile=bad)


def test_bad_map_shapes_and_values():
    with pytest.raises(ValueError, match="`map`"):
        viz.grayscale(np.ones((5, 4, 4)))
    with pytest.raises(ValueError, match="`map`"):
        viz.grayscale(np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        viz.grayscale(np.array([[0.0, np.nan]]))


# ------------------------------------------------------------------ diverging


def test_diverging_symmetric_sign_preserving_zero_exact():
    m = np.zeros((3, 2, 3))
    m[0] = [[2, -2, 0], [1, -4, 0.5]]
    m[1] = [[0, 0, 0], [0, 0, -0.5]]      # channel sum: [[2, -2, 0], [1, -4, 0]]
    out = viz.diverging(m, percentile=100)  # span = max |s| = 4
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, [[0.5, -0.5, 0], [0.25, -1, 0]])
    assert out[0, 2] == 0.0 and out[1, 2] == 0.0 and not np.signbit(out[1, 2])
    np.testing.assert_array_equal(viz.diverging(-m, 100), -out)   # symmetric
    assert out.min() >= -1 and out.max() <= 1


def test_diverging_percentile_saturates_both_signs():
    s = np.array([[-10.0, -1.0, 0.0, 1.0, 2.0, 10.0]])
    span = np.percentile(np.abs(s), 50)                  # 1.5
    out = viz.diverging(s, percentile=50)
    np.testing.assert_allclose(out, [[-1, -1 / span, 0, 1 / span, 1, 1]], rtol=1e-6)
    assert viz.diverging(np.zeros((3, 2, 2))).tolist() == [[0, 0], [0, 0]]
    np.testing.assert_array_equal(viz.diverging(np.array([[0, 0, 0, -3.0]]), 50),
                                  [[0, 0, 0, -1]])      # span 0: sign only


# ------------------------------------------------------------------ heatmap


def test_heatmap_endpoints_are_the_colormap_endpoints():
    m = np.array([[0.0, 0.5], [1.0, 2.0]])
    out = viz.heatmap(m)                                  # inferno, min..max
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], cmap_rgb("inferno", 0.0))
    np.testing.assert_array_equal(out[1, 1], cmap_rgb("inferno", 1.0))
    np.testing.assert_array_equal(out[1, 0], cmap_rgb("inferno", 0.5))
    hot = viz.heatmap(m, cmap="hot", vmin=0.0, vmax=1.0)  # 1 and 2 both clip to the top
    np.testing.assert_array_equal(hot[1, 0], cmap_rgb("hot", 1.0))
    np.testing.assert_array_equal(hot[1, 1], cmap_rgb("hot", 1.0))
    np.testing.assert_array_equal(hot[0, 1], cmap_rgb("hot", 0.5))


def test_heatmap_constant_percentile_and_3d():
    const = viz.heatmap(np.full((3, 3), 7.0))
    assert (const == cmap_rgb("inferno", 0.0)).all()
    s = np.array([[0.0, 1.0, 2.0, 100.0]])
    out = viz.heatmap(s, cmap="gray", percentile=50)     # vmax = 1.5
    np.testing.assert_array_equal(out[0, 2], cmap_rgb("gray", 1.0))
    np.testing.assert_array_equal(out[0, 1], cmap_rgb("gray", 1 / 1.5))
    m3 = np.stack([s, -s, np.zeros_like(s)])            # reduced with grayscale
    np.testing.assert_array_equal(viz.heatmap(m3, cmap="gray"),
                                  viz.heatmap(viz.grayscale(m3, 100), cmap="gray"))


def test_heatmap_invalid_cmap_and_limits():
    with pytest.raises(ValueError, match="`cmap`.*inferno"):
        viz.heatmap(np.ones((2, 2)), cmap="not_a_map")
    with pytest.raises(ValueError, match="`vmin`"):
        viz.heatmap(np.ones((2, 2)), vmin=1.0, vmax=0.0)


# ------------------------------------------------------------------ images and overlay


def test_to_uint8_image_accepts_every_container():
    hwc = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    np.testing.assert_array_equal(viz.to_uint8_image(hwc), hwc)
    np.testing.assert_array_equal(viz.to_uint8_image(np.moveaxis(hwc, -1, 0)), hwc)
    np.testing.assert_array_equal(viz.to_uint8_image(Image.fromarray(hwc)), hwc)
    np.testing.assert_array_equal(viz.to_uint8_image(hwc / 255.0), hwc)
    four_rows = np.zeros((4, 5, 3), np.uint8)            # HWC with H = 4, not RGBA CHW
    four_rows[..., 0] = 255
    np.testing.assert_array_equal(viz.to_uint8_image(four_rows), four_rows)
    with pytest.raises(ValueError, match="transform"):
        viz.to_uint8_image(np.full((3, 2, 2), -1.5))


def test_to_uint8_image_denormalizes_a_network_input():
    hwc = np.random.default_rng(0).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    tf = ImageTransform(None, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    x = tf(hwc)                                           # (3, 4, 5) normalised
    np.testing.assert_array_equal(viz.to_uint8_image(x, transform=tf), hwc)
    np.testing.assert_array_equal(viz.to_uint8_image(x[None].numpy(), transform=tf), hwc)
    with pytest.raises(TypeError, match="`transform`"):
        viz.to_uint8_image(x, transform=object())


def test_overlay_alpha_endpoints_and_blend():
    img = np.full((2, 2, 3), 200, np.uint8)
    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(viz.overlay(img, m, alpha=0.0), img)
    heat = viz.heatmap(m)
    np.testing.assert_array_equal(viz.overlay(img, m, alpha=1.0), heat)
    half = viz.overlay(img, m, alpha=0.5)
    np.testing.assert_array_equal(half, np.rint((200.0 + heat) / 2).astype(np.uint8))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="`alpha`"):
            viz.overlay(img, m, alpha=bad)


def test_overlay_resizes_the_map_to_a_bigger_image():
    img = np.zeros((4, 4, 3), np.uint8)
    m = np.array([[0.0, 1.0], [0.0, 1.0]])               # left low, right high
    out = viz.overlay(img, m, alpha=1.0, cmap="gray")
    assert out.shape == (4, 4, 3)
    # bilinear (align_corners=False) 2 -> 4 columns: 0, .25, .75, 1
    expect = np.rint(np.array([0, 0.25, 0.75, 1.0]) * 255)
    np.testing.assert_allclose(out[:, :, 0], np.tile(expect, (4, 1)), atol=1)
    assert (out[:, 0] == cmap_rgb("gray", 0.0)).all() and (out[:, 3] == 255).all()


def test_overlay_on_network_input_with_transform():
    tf = ImageTransform(None, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    hwc = np.full((3, 3, 3), 64, np.uint8)
    out = viz.overlay(tf(hwc), np.ones((3, 3)), alpha=0.0, transform=tf)
    np.testing.assert_array_equal(out, hwc)


# ------------------------------------------------------------------ figures


def test_saliency_grid_writes_png_with_one_panel_per_cell(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (8, 8, 3)).astype(np.uint8) for _ in range(3)]
    maps = rng.normal(size=(2, 3, 3, 8, 8)).astype(np.float32)   # (U, N, 3, H, W)
    for mode in ("RGB", "gray"):
        fname = tmp_path / f"grid_{mode}.png"
        fig = viz.saliency_grid(images, maps, row_titles=["fc3_1", "fc3_2"],
                                col_titles=["a", "b", "c"], mode=mode, fname=fname)
        assert len(fig.axes) == (2 + 1) * 3 + 1  # and the colorbar
        assert fig.axes[0].get_title() == "a" and fig.axes[3].get_ylabel() == "fc3_1"
        with Image.open(fname) as im:
            assert im.format == "PNG" and im.size[0] > 0
    # list of lists of 2-D maps; RGB mode uses the colormap for them
    fig = viz.saliency_grid(images[:2], [[np.ones((8, 8)), np.zeros((8, 8))]],
                            fname=tmp_path / "grid.pdf")
    assert len(fig.axes) == 5 and (tmp_path / "grid.pdf").stat().st_size > 0


def test_saliency_grid_checks_counts_and_mode():
    images = [np.zeros((4, 4, 3), np.uint8)] * 2
    with pytest.raises(ValueError, match="`maps`"):
        viz.saliency_grid(images, [[np.ones((4, 4))]])
    with pytest.raises(ValueError, match="`row_titles`"):
        viz.saliency_grid(images, [[np.ones((4, 4))] * 2], row_titles=["a", "b"])
    with pytest.raises(ValueError, match="`col_titles`"):
        viz.saliency_grid(images, [[np.ones((4, 4))] * 2], col_titles=["a"])
    with pytest.raises(ValueError, match="`mode`"):
        viz.saliency_grid(images, [[np.ones((4, 4))] * 2], mode="rgb")


def test_labelled_panel_title_and_png(tmp_path):
    img = np.zeros((6, 6), np.uint8)                     # a gray x-ray-like image
    sal = torch.rand(1, 6, 6)
    fname = tmp_path / "panel.png"
    fig = viz.labelled_panel(img, sal, true_label=torch.tensor(0), pred_label=1,
                             id2label={0: "Normal", 1: "COVID"}, title="Saliency Map",
                             fname=fname)
    assert len(fig.axes) == 1
    assert fig.axes[0].get_title() == "Saliency Map - True: Normal, Predicted: COVID"
    with Image.open(fname) as im:
        assert im.format == "PNG"
    fig = viz.labelled_panel(img, sal[0], true_label=3, pred_label=5)
    assert fig.axes[0].get_title() == "True: 3, Predicted: 5"
    with pytest.raises(ValueError, match="`pred_label`"):
        viz.labelled_panel(img, sal, pred_label=7, id2label={0: "a"})


def test_save_image_round_trip(tmp_path):
    arr = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    path = viz.save_image(tmp_path / "x.png", arr)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), arr)
    viz.save_image(tmp_path / "y.png", np.moveaxis(arr, -1, 0) / 255.0)
    with Image.open(tmp_path / "y.png") as im:
        np.testing.assert_array_equal(np.asarray(im), arr)


def test_figures_never_touch_pyplot_or_a_display(tmp_path):
    code = ("import sys, numpy as np; from dnnbrain import viz; "
            f"viz.saliency_grid([np.zeros((4, 4, 3), np.uint8)], [[np.ones((3, 4, 4))]], "
            f"fname={str(tmp_path / 'g.png')!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert (tmp_path / "g.png").stat().st_size > 0
