"""The runner's stacked pictures equal dnnbrain.viz's, byte for byte."""
import numpy as np
import pytest

from dnnbrain import viz
from dnnbrain.batch.pictures import heatmaps, overlays, stimulus_pixels
from dnnbrain.dnn.base import ImageTransform


def _stack(shape, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal(shape).astype(np.float32) * rng.uniform(1e-4, 10.0)
    maps[1] = 0.0                   # a constant map
    maps[2] = np.abs(maps[2])       # a non-negative one
    maps[3].flat[::7] = 1e3         # outliers above the percentile
    maps[4] = 0.0                   # a sparse signed map: |m|'s percentiles are 0
    maps[4].flat[0], maps[4].flat[1] = -1.0, 2.0
    return maps


@pytest.mark.parametrize("shape", [(6, 3, 17, 23), (6, 1, 16, 16), (6, 16, 12)])
@pytest.mark.parametrize("percentile", [None, 99.0, 50])
@pytest.mark.parametrize("cmap", ["inferno", "gray", "tab10", "auto"])  # tab10: N = 10
def test_heatmaps_equal_viz(shape, percentile, cmap):
    maps = _stack(shape)
    got = heatmaps(maps, cmap, percentile)
    assert got.dtype == np.uint8 and got.shape == (shape[0], shape[-2], shape[-1], 3)
    for k, m in enumerate(maps):
        np.testing.assert_array_equal(got[k], viz.heatmap(m, cmap, percentile))


@pytest.mark.parametrize("shape", [(6, 3, 20, 20), (6, 20, 20)])
def test_overlays_equal_viz(shape):
    maps = _stack(shape, seed=1)
    transform = ImageTransform(20, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = transform.batch([np.random.default_rng(k).integers(0, 256, (20, 20, 3), np.uint8)
                         for k in range(len(maps))])
    got = overlays(stimulus_pixels(x, transform), maps, 0.3, "inferno", 99.0)
    for k, m in enumerate(maps):
        np.testing.assert_array_equal(got[k], viz.overlay(x[k], m, 0.3, "inferno", 99.0,
                                                          transform))


def test_auto_colormap_by_sign():
    """'auto': a signed 2-D map in the diverging colormap with zero at its centre and
    +-max|m| at its ends; non-negative maps and reduced 3-channel maps sequential."""
    m = np.array([[-2.0, 0.0], [1.0, 2.0]], np.float32)
    lut = viz._get_cmap(viz.DIVERGING)
    want = np.rint(lut(np.array([0.0, 0.5, 0.75, 1.0]))[:, :3] * 255).astype(np.uint8)
    got = heatmaps(m[None], "auto")[0].reshape(4, 3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(viz.heatmap(m, "auto"), heatmaps(m[None], "auto")[0])
    np.testing.assert_array_equal(viz.heatmap(np.abs(m), "auto"),
                                  viz.heatmap(np.abs(m), viz.SEQUENTIAL))
    signed3 = np.stack([m, -m, m])  # reduced to sum |m| >= 0: sequential
    np.testing.assert_array_equal(viz.heatmap(signed3, "auto"),
                                  viz.heatmap(signed3, viz.SEQUENTIAL))
    # limits given by the caller win over the automatic ones
    np.testing.assert_array_equal(viz.heatmap(m, "auto", vmin=-4, vmax=4),
                                  viz.heatmap(m, viz.DIVERGING, vmin=-4, vmax=4))


def test_non_finite_maps_refused():
    maps = np.zeros((2, 3, 4, 4), np.float32)
    maps[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        heatmaps(maps)
    with pytest.raises(ValueError, match=r"\(K, C, H, W\)"):
        heatmaps(np.zeros((2, 5, 4, 4)))
