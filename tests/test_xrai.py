"""XRAI: the greedy ranking's known answers, segments, a quadrant-only model, hygiene."""
import numpy as np
import pytest
import torch
from torch import nn

from dnnbrain.dnn.algo import get_method
from dnnbrain.dnn.algo.xrai import (XRAI, SegmentCache, Segments, rank_regions,
                                   segment_masks)
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN

from .conftest import hook_dicts_empty

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
SIDE = 32


class Quadrant(nn.Module):
    """Zero the input outside the top-left quadrant."""

    def __init__(self):
        super().__init__()
        mask = torch.zeros(1, 1, SIDE, SIDE)
        mask[..., :SIDE // 2, :SIDE // 2] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


def quadrant_dnn():
    """Unit 'conv' 1 (mean over space) = positive-weighted sum of the top-left quadrant."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 1.0], [-1.0, 0.5, 0.0]]).view(2, 3, 1, 1))
    net = nn.Sequential(Quadrant(), conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return DNN(net, layers={"mask": "0", "conv": "1", "out": "3"},
               test_transform=ImageTransform(SIDE, MEAN, STD))


def block_image(seed=0):
    """A 4 x 4 grid of flat colour blocks (clear segments); the quadrant's are bright."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.0, 0.45, size=(4, 4, 3))
    colours[:2, :2] = rng.uniform(0.6, 1.0, size=(2, 2, 3))
    colours[0, 0] = 1.0   # the brightest block: the most important region
    return np.repeat(np.repeat(colours, 8, 0), 8, 1).astype(np.float32)   # (32, 32, 3)


@pytest.fixture(scope="module")
def dnn():
    return quadrant_dnn()


def test_rank_regions_known_answer():
    attr = np.zeros((4, 4))
    attr[:, :2] = 1.0          # left half
    attr[0, 3] = 4.0
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    top = np.zeros((4, 4), bool)
    top[:2] = True
    masks = np.stack([top, left, ~left])
    heat, seg = rank_regions(attr, masks, min_pixel_diff=1)
    # gains: top (1+1+1+1+0+4+0+0)/8 = 1.0 ties with left 1.0: the first wins (PAIR);
    # then left adds 4 px of mean 1.0; then the right half adds 4 px of mean 0
    expect_heat = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], float)
    assert np.allclose(heat, expect_heat) and heat.dtype == np.float32
    assert isinstance(seg, Segments)
    assert np.array_equal(seg.ranks, [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert np.allclose(seg.gains, [1.0, 1.0, 0.0]) and not seg.remainder
    # masks adding fewer than min_pixel_diff pixels are dropped; the rest is one region
    heat, seg = rank_regions(attr, masks, min_pixel_diff=5)
    assert np.array_equal(seg.ranks, [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    assert np.allclose(heat[2:], 0.5) and np.allclose(seg.gains, [1.0, 0.5]) and seg.remainder
    # area_threshold: stop once half the image is covered
    heat, seg = rank_regions(attr, masks, area_threshold=0.4, min_pixel_diff=1)
    assert seg.ranks.max() == 2 and np.allclose(heat[2:], 0.5)


def plain_xrai(attr, masks, min_pixel_diff):
    """The greedy ranking recomputed from scratch at every step (no bookkeeping)."""
    covered = np.zeros(attr.shape, bool)
    heat = np.full(attr.shape, -np.inf)
    left = list(range(len(masks)))
    while covered.mean() <= 1.0:
        left = [i for i in left if (masks[i] & ~covered).sum() >= min_pixel_diff]
        if not left:
            break
        gains = [attr[masks[i] & ~covered].mean() for i in left]
        best = left[int(np.argmax(gains))]
        heat[masks[best] & ~covered] = max(gains)
        covered |= masks[best]
        left.remove(best)
    heat[~covered] = attr[~covered].mean() if (~covered).any() else 0
    return heat


def test_rank_regions_matches_plain_greedy():
    rng = np.random.default_rng(0)
    attr = rng.normal(size=(20, 24))
    masks = np.zeros((30, 20, 24), bool)
    for m in masks:   # random overlapping rectangles
        y, x = rng.integers(0, 16), rng.integers(0, 20)
        m[y:y + rng.integers(2, 10), x:x + rng.integers(2, 10)] = True
    for diff in (1, 8):
        heat, _ = rank_regions(attr, masks, min_pixel_diff=diff)
        assert np.allclose(heat, plain_xrai(attr, masks, diff), atol=1e-6)


def test_segment_masks_partition_and_dilation():
    img = block_image()
    masks = segment_masks(img, scales=(50, 500), dilation_radius=0)
    assert masks.dtype == bool and masks.shape[1:] == (SIDE, SIDE)
    assert np.array_equal(masks.sum(0), np.full((SIDE, SIDE), 2))  # one label per scale
    assert masks.any((1, 2)).all()
    dilated = segment_masks(img, scales=(50, 500), dilation_radius=2)
    assert dilated.shape == masks.shape and np.all(dilated >= masks)
    assert dilated.sum() > masks.sum()


def test_top_region_lies_in_the_quadrant(dnn):
    xrai = XRAI(dnn, "conv", 1, steps=4, min_pixel_diff=10, return_segments=True)
    heat = xrai.backprop(block_image())
    assert heat.shape == (SIDE, SIDE) and heat.dtype == np.float32
    assert len(xrai.last_segments) == 1
    ranks, gains, remainder = xrai.last_segments[0]
    top = ranks == 1
    inside = np.zeros((SIDE, SIDE), bool)
    inside[:SIDE // 2, :SIDE // 2] = True
    assert top.any() and (top & inside).sum() >= 0.9 * top.sum()
    assert inside[np.unravel_index(heat.argmax(), heat.shape)]
    assert heat[inside].mean() > heat[~inside].mean()
    # the map is the gain of each pixel's region; regions ranked by gain
    ranked = gains[:-1] if remainder else gains
    assert np.all(np.diff(ranked) <= 0)
    for k, gain in enumerate(gains, start=1):
        assert np.allclose(heat[ranks == k], gain)
    assert ranks.min() == 1 and set(np.unique(ranks)) == set(range(1, len(gains) + 1))


def test_batch_units_and_one_by_one(dnn):
    images = [block_image(0), block_image(1)]
    xrai = get_method("xrai")(dnn, "conv", [1, 2], steps=4, min_pixel_diff=10,
                              segment_scales=(100, 300), return_segments=True)
    maps = xrai.backprop(images)
    assert maps.shape == (2, 2, SIDE, SIDE) and np.isfinite(maps).all()
    assert len(xrai.last_segments) == 4
    for i, image in enumerate(images):
        one = xrai.backprop(image)
        assert np.allclose(maps[i], one, atol=1e-6)
        assert len(xrai.last_segments) == 2
    assert hook_dicts_empty(dnn.model)


def test_smoothgrad_over_xrai_runs(dnn):
    xrai = XRAI(dnn, "conv", 1, steps=3, segment_scales=(100,), min_pixel_diff=10)
    out = xrai.backprop_smooth(block_image(), n_iter=2, seed=0)
    assert out.shape == (SIDE, SIDE) and np.isfinite(out).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=1), "`steps`"),
    (dict(area_threshold=1.5), "`area_threshold`"),
    (dict(min_pixel_diff=0), "`min_pixel_diff`"),
    (dict(dilation_radius=-1), "`dilation_radius`"),
    (dict(segment_scales=()), "`segment_scales`"),
    (dict(segment_scales=50), "`segment_scales`"),
    (dict(return_segments="yes"), "`return_segments`"),
    (dict(segment_workers=0), "`segment_workers`"),
])
def test_bad_parameters(dnn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        XRAI(dnn, "conv", 1, **kwargs)


@pytest.mark.parametrize("overlap", [False, True])
def test_to_layer_rejected(dnn, monkeypatch, overlap):
    import threading
    monkeypatch.setattr(XRAI, "_overlap", lambda self, x: overlap)
    xrai = XRAI(dnn, "conv", 1, steps=2, segment_workers=2)
    with pytest.raises(ValueError, match="`to_layer` must be None"):
        xrai.backprop([block_image(s) for s in range(6)], to_layer="conv")
    # the segmentation pool does not outlive the failed call
    assert xrai._job is None
    assert not [t for t in threading.enumerate() if t.name.startswith("xrai-segments")]


def test_batch_of_eight_equals_eight_single_calls(dnn):
    images = [block_image(s) for s in range(8)]
    xrai = XRAI(dnn, "conv", 1, steps=2, min_pixel_diff=10, segment_scales=(100, 300))
    maps = xrai.backprop(images)
    assert maps.shape == (8, SIDE, SIDE)
    for i, image in enumerate(images):
        assert np.allclose(maps[i], xrai.backprop(image), rtol=0, atol=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_segmentation_is_cached_across_units_objects_and_calls(dnn, monkeypatch, workers):
    import dnnbrain.dnn.algo.segments as seg_mod
    import dnnbrain.dnn.algo.xrai as xrai_mod
    calls = []
    upsampled = seg_mod._upsampled

    def counted(pixels):   # once per image segmented, serial or on the pool
        calls.append(pixels.shape)
        return upsampled(pixels)

    monkeypatch.setattr(seg_mod, "_upsampled", counted)
    cache = xrai_mod.SegmentCache()
    monkeypatch.setattr(xrai_mod, "SEGMENT_CACHE", cache)
    image, other = block_image(0), block_image(1)
    kw = dict(steps=2, min_pixel_diff=10, segment_scales=(100, 300), segment_workers=workers)
    first = XRAI(dnn, "conv", 1, **kw).backprop(image)
    assert len(calls) == 1
    second = XRAI(dnn, "conv", 2, **kw).backprop(image.copy())  # other unit, object, array
    XRAI(dnn, "out", 1, **kw).backprop([image, image])          # other layer, a batch
    assert len(calls) == 1 and cache.hits == 3 and cache.misses == 1
    assert not np.allclose(first, second)                       # the maps do differ
    XRAI(dnn, "conv", 1, **kw).backprop(other)                  # other content
    XRAI(dnn, "conv", 1, **{**kw, "segment_scales": (100,)}).backprop(image)
    assert len(calls) == 3 and len(cache) == 3
    cache.clear()
    XRAI(dnn, "conv", 1, **kw).backprop([other, image, other])  # a repeat: segmented once
    assert len(calls) == 5 and cache.misses == 2 and cache.hits == 1
    # bounded: nothing larger than max_bytes is kept, the oldest entries go first
    one = segment_masks(block_image(2), (100, 300), None).nbytes
    cache.max_bytes = one
    XRAI(dnn, "conv", 1, **kw).backprop(block_image(2))
    assert len(cache) == 1 and cache._bytes == one
    cache.max_bytes = 0
    XRAI(dnn, "conv", 1, **kw).backprop(block_image(3))
    XRAI(dnn, "conv", 1, **kw).backprop(block_image(3))
    assert len(calls) == 9
    cache.clear()
    assert len(cache) == 0 and cache.hits == 0


def test_segment_job_on_a_pool_equals_serial_segmentation():
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(3)
    images = [block_image(0), rng.random((40, 28, 3)).astype(np.float32), block_image(1),
              block_image(0)]
    settings = [((50, 100, 500), None), ((150,), 3)]
    for scales, radius in settings:
        serial = [segment_masks(p, scales, radius) for p in images]
        cache = SegmentCache()
        with ThreadPoolExecutor(3) as pool:
            job = cache.start(images, scales, radius, pool)
            got = job.result()
        assert len(got) == 3 and cache.misses == 3 and cache.hits == 1
        for key, want in zip(job.keys, serial):
            assert np.array_equal(got[key], want) and not got[key].flags.writeable
        again = cache.start(images[1:2], scales, radius, None)   # from the cache
        assert again.result()[again.keys[0]] is got[job.keys[1]] and cache.hits == 2


@pytest.mark.parametrize("overlap", [False, True])
def test_parallel_blocks_equal_the_serial_call(dnn, monkeypatch, overlap):
    """Segmenting on threads a block at a time (and, on an accelerator, ahead of the
    passes) gives the serial call's maps, segments and units exactly."""
    import dnnbrain.dnn.algo.xrai as xrai_mod
    images = [block_image(s) for s in range(5)]
    kw = dict(steps=3, min_pixel_diff=10, segment_scales=(100, 300),
              return_segments=True, batch_size=6)  # one image per pass chunk
    monkeypatch.setattr(xrai_mod, "SEGMENT_CACHE", xrai_mod.SegmentCache(max_bytes=0))
    serial = XRAI(dnn, "conv", [1, 2], segment_workers=1, **kw)
    want = serial.backprop(images)
    monkeypatch.setattr(xrai_mod, "IMAGES_PER_WORKER", 1)     # blocks of 2 images: 3 blocks
    monkeypatch.setattr(XRAI, "_overlap", lambda self, x: overlap)
    par = XRAI(dnn, "conv", [1, 2], segment_workers=2, **kw)
    got = par.backprop(images)
    assert got.shape == (5, 2, SIDE, SIDE) and np.array_equal(got, want)
    assert len(par.last_segments) == 10 and par.resolved_units == serial.resolved_units
    for a, b in zip(par.last_segments, serial.last_segments):
        assert np.array_equal(a.ranks, b.ranks) and np.array_equal(a.gains, b.gains)
    assert np.array_equal(par.backprop(images[3]), want[3])   # one image: one block
    assert hook_dicts_empty(dnn.model)


@pytest.mark.parametrize("workers", [1, 2])
def test_agrees_with_pair_xrai(dnn, workers):
    """PAIR's ``saliency.core.XRAI`` on the same image, unit and IG nodes (its
    ``linspace(0, 1, steps)`` with equal weights; black and white baselines: the image
    holds a 0 and a 1), dilation 5 px."""
    sc = pytest.importorskip("saliency.core")
    img = block_image(4)
    img[0, 0] = 0.0
    xrai = XRAI(dnn, "out", 1, steps=6, dilation_radius=5, segment_workers=workers)
    xrai.alphas, xrai.weights = np.linspace(0.0, 1.0, 6), np.full(6, 1.0 / 6)
    ours = xrai.backprop(img)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    key = sc.base.INPUT_OUTPUT_GRADIENTS

    def call_model(xb, call_model_args=None, expected_keys=None):
        t = torch.as_tensor(np.asarray(xb), dtype=torch.float32).permute(0, 3, 1, 2)
        t.requires_grad_(True)
        grad, = torch.autograd.grad(dnn.model((t - mean) / std)[:, 0].sum(), t)
        return {key: grad.permute(0, 2, 3, 1).numpy()}

    theirs = sc.XRAI().GetMask(img.astype(np.float64), call_model, batch_size=6,
                               extra_parameters=sc.XRAIParameters(steps=6))
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-6 * np.abs(theirs).max()


def _device_call_equals_cpu(device, monkeypatch):
    """XRAI with the network on ``device`` against the CPU's serial call: on an
    accelerator each block of images is segmented while the previous block's passes run;
    the maps and segments are the CPU's (to float32 rounding of the attributions)."""
    import dnnbrain.dnn.algo.xrai as xrai_mod
    images = [block_image(s) for s in range(5)]
    kw = dict(steps=3, min_pixel_diff=10, segment_scales=(100, 300),
              return_segments=True, batch_size=6)
    monkeypatch.setattr(xrai_mod, "SEGMENT_CACHE", xrai_mod.SegmentCache(max_bytes=0))
    monkeypatch.setattr(xrai_mod, "IMAGES_PER_WORKER", 1)     # blocks of 2 images: 3 blocks
    cpu = XRAI(quadrant_dnn(), "conv", [1, 2], segment_workers=1, **kw)
    want = cpu.backprop(images)
    on = quadrant_dnn().to(device)
    dev = XRAI(on, "conv", [1, 2], segment_workers=2, **kw)
    assert dev._overlap(torch.zeros(1, device=device))       # the overlapped path
    got = dev.backprop(images)
    assert isinstance(got, np.ndarray) and got.shape == want.shape == (5, 2, SIDE, SIDE)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    for a, b in zip(dev.last_segments, cpu.last_segments):
        assert np.array_equal(a.ranks, b.ranks)
    assert hook_dicts_empty(on.model)


@pytest.mark.cuda
def test_on_cuda_segments_alongside_the_passes_and_equals_the_cpu(monkeypatch):
    _device_call_equals_cpu("cuda", monkeypatch)
