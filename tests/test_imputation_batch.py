"""Batched noisy linear imputation (ROAD) against the sparse direct solve, Quantus, and
itself one by one; batched ROAD against a loop over the reference imputation."""
import copy

import numpy as np
import pytest
import torch

from dnnbrain.metrics import imputation_c, noisy_linear_impute, road
from dnnbrain.metrics.imputation_batch import linear_impute_batch, noisy_linear_impute_batch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]  # gpu_check.sh runs cuda
NO_CC = imputation_c.library() is None
BACKENDS = [pytest.param("c", marks=pytest.mark.skipif(NO_CC, reason="no C compiler")),
            "torch"]


def _masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random masks of various densities and shapes, several touching the border: blobs
    of a smooth random field, scattered pixels, a full border row and column, and all but
    one pixel removed."""
    gen = torch.Generator().manual_seed(seed)
    field = torch.nn.functional.interpolate(torch.rand(n, 1, 3, 3, generator=gen),
                                            size=(h, w), mode="bilinear")[:, 0]
    frac = torch.linspace(0.05, 0.95, n)
    m = torch.stack([f > torch.quantile(f, 1 - q) for f, q in zip(field, frac)])
    if n > 1:
        m[1] = torch.rand(h, w, generator=gen) < 0.5             # scattered pixels
    if n > 2:
        m[2] = False
        m[2, 0, :] = True                                          # the top row
        m[2, :, -1] = True                                         # and the right column
    if n > 3:
        m[3] = True
        m[3, h // 2, w // 3] = False                               # one pixel left
    return m


def _reference(x: torch.Tensor, m: torch.Tensor) -> np.ndarray:
    return np.stack([noisy_linear_impute(x[i].numpy(), m[i].numpy(), noise=0.0)
                     for i in range(len(x))])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, c, h, w", [(4, 3, 16, 16), (5, 3, 17, 12), (4, 1, 9, 33),
                                        (2, 2, 40, 41)])
def test_batch_equals_sparse_direct_solve(n, c, h, w, backend):
    gen = torch.Generator().manual_seed(n * h + w)
    x = torch.randn(n, c, h, w, generator=gen) * 2 + 1
    m = _masks(n, h, w, seed=h)
    before = x.clone()
    got = linear_impute_batch(x, m, backend=backend)
    ref = _reference(x, m)
    span = float(x.max() - x.min())
    assert np.abs(got.numpy() - ref).max() <= 1e-5 * span        # brief: 1e-4 of range
    torch.testing.assert_close(x, before)                          # input untouched
    assert torch.equal(got[~m[:, None].expand_as(x)], x[~m[:, None].expand_as(x)])
    assert got.dtype == x.dtype


def test_edge_cases_and_errors():
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    none = torch.zeros(3, 8, 8, dtype=torch.bool)
    assert torch.equal(linear_impute_batch(x, none), x)           # nothing to impute
    flat = torch.full((1, 2, 8, 8), 3.0)                           # constant image
    m = _masks(1, 8, 8, 1)
    torch.testing.assert_close(linear_impute_batch(flat, m), flat)
    every = none.clone()
    every[1] = True
    with pytest.raises(ValueError, match=r"`removed` covers every pixel of image\(s\) \[1\]"):
        linear_impute_batch(x, every)
    with pytest.raises(ValueError, match="`removed` must be a bool"):
        linear_impute_batch(x, none[:, :4])
    with pytest.raises(ValueError, match="`images` must be"):
        linear_impute_batch(x[0], none[0])
    with pytest.raises(ValueError, match="`noise`"):
        noisy_linear_impute_batch(x, none, noise=-1.0)
    with pytest.raises(ValueError, match="`seed`"):
        noisy_linear_impute_batch(x, _masks(3, 8, 8, 0), seed=[1, 2])


def test_linear_ramp_is_reproduced():
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    x = torch.stack([cols, 2 * rows + 1, 0.5 * cols - rows])[None]  # linear per channel
    m = torch.zeros(1, 12, 10, dtype=torch.bool)
    m[0, 3:9, 2:7] = True
    m[0, 5, 8] = True                                              # beside the border
    torch.testing.assert_close(linear_impute_batch(x, m), x, atol=1e-5, rtol=0)
    corner = torch.zeros_like(m)
    corner[0, 0, 0] = True                                         # neighbours only
    got = linear_impute_batch(x, corner)[0, 0, 0, 0].item()
    assert got == pytest.approx((1 / 6 * 1 + 1 / 6 * 0 + 1 / 12 * 1) / (5 / 12))


def test_noise_is_seeded_per_image():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 12, 12, generator=gen)
    m = _masks(4, 12, 12, 2)
    m[3] = m[0]
    seeds = [5, 6, 7, 8]
    a = noisy_linear_impute_batch(x, m, noise=0.1, seed=seeds)
    one = torch.cat([noisy_linear_impute_batch(x[i:i + 1], m[i:i + 1], 0.1, [s])
                     for i, s in enumerate(seeds)])
    span = float(x.max() - x.min())                                # batch == one by one,
    torch.testing.assert_close(a, one, rtol=0, atol=1e-5 * span)   # to the solver's rtol
    clean = linear_impute_batch(x, m)
    diff = (a - clean)[m[:, None].expand_as(x)]
    assert diff.std().item() == pytest.approx(0.1, rel=0.15)
    assert torch.equal(a[~m[:, None].expand_as(x)], x[~m[:, None].expand_as(x)])
    b = noisy_linear_impute_batch(x, m, noise=0.1, seed=[5, 6, 7, 9])
    assert torch.equal(a[:3], b[:3]) and not torch.equal(a[3], b[3])
    c = noisy_linear_impute_batch(x, m, noise=0.1, seed=3)
    torch.testing.assert_close(c, noisy_linear_impute_batch(x, m, noise=0.1, seed=3))


@pytest.mark.parametrize("device", DEVICES)
def test_device_agnostic(device):
    x = torch.randn(3, 3, 20, 18, generator=torch.Generator().manual_seed(3))
    m = _masks(3, 20, 18, 4)
    got = linear_impute_batch(x.to(device), m.to(device))
    assert got.device.type == device
    ref = linear_impute_batch(x, m)
    torch.testing.assert_close(got.cpu(), ref, atol=1e-5, rtol=0)
    # ROAD with the model on the device: the images follow it, the curves are the CPU's
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    maps = np.random.default_rng(0).random((3, 20, 18))
    kw = dict(percentages=(0.2, 0.5, 0.8), units=[1, 2, 4], noise=0.0)
    want = road(net, x, maps, **kw)
    res = road(copy.deepcopy(net).to(device), x, maps, **kw)
    assert next(net.parameters()).device.type == "cpu"               # the model untouched
    np.testing.assert_allclose(res.scores, want.scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.original, want.original, rtol=1e-5, atol=1e-6)


def _score(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, 2:7, 3:9].mean((1, 2, 3)) - 0.5 * x[:, 1, -3:, :].mean((1, 2))


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_reference_loop_and_one_by_one(order):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 3, 15, 14, generator=gen)
    maps = torch.rand(5, 15, 14, generator=gen).numpy()             # no ties
    pcts = (0.0, 0.25, 0.5, 0.9)
    res = road(_score, x, maps, pcts, order, noise=0.0, batch_size=3)
    want = np.zeros((5, len(pcts)))
    for i in range(5):
        rank = np.argsort(-maps[i].ravel() if order == "morf" else maps[i].ravel())
        for j, p in enumerate(pcts):
            rem = np.zeros(15 * 14, bool)
            rem[rank[:int(round(p * 15 * 14))]] = True
            img = noisy_linear_impute(x[i].numpy(), rem.reshape(15, 14), noise=0.0)
            want[i, j] = _score(torch.from_numpy(img)[None]).item()
    np.testing.assert_allclose(res.scores, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.original, _score(x).numpy(), atol=1e-6)
    one = np.concatenate([road(_score, x[i:i + 1], maps[i:i + 1], pcts, order, noise=0.0,
                               batch_size=1).scores for i in range(5)])
    np.testing.assert_allclose(res.scores, one, atol=1e-6, rtol=0)
    noisy = [road(_score, x, maps, pcts, order, seed=2, batch_size=b).scores for b in (1, 7)]
    np.testing.assert_allclose(noisy[0], noisy[1], atol=1e-6, rtol=0)


@pytest.mark.slow  # importing quantus alone takes seconds
def test_agrees_with_quantus_noise_free():
    perturb = pytest.importorskip("quantus.functions.perturb_func")
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(4, 3, 24, 21, generator=gen)
    m = _masks(4, 24, 21, 5)
    got = linear_impute_batch(x, m).numpy()
    for i in range(4):
        idx = np.flatnonzero(m[i].numpy().ravel())
        want = perturb.noisy_linear_imputation(x[i].numpy().astype(np.float64), idx,
                                               noise=0.0)
        np.testing.assert_allclose(got[i], want, atol=1e-5 * float(x.max() - x.min()), rtol=0)


@pytest.mark.parametrize("h, w", [(10, 8), (9, 7), (33, 20)])
def test_transfer_operators_are_adjoint(h, w):
    """Restriction is the exact transpose of prolongation (the V-cycle stays symmetric,
    which conjugate gradients need)."""
    from dnnbrain.metrics.imputation_torch import _prolong, _restrict
    gen = torch.Generator().manual_seed(h * w)
    k, l_ = (h + 1) // 2, (w + 1) // 2
    c = torch.randn(2, k, l_, generator=gen, dtype=torch.float64)
    f = torch.randn(2, h, w, generator=gen, dtype=torch.float64)
    lhs = (_prolong(c, h, w) * f).sum()
    assert lhs.item() == pytest.approx((c * _restrict(f, k, l_)).sum().item(), abs=1e-12)
    assert _prolong(torch.ones(1, k, l_, dtype=torch.float64), h, w).eq(1).all()
    # the separable slices are the cell-centred bilinear interpolation of a 2x grid
    up = torch.nn.functional.interpolate(c[:, None], size=(2 * k, 2 * l_), mode="bilinear",
                                         align_corners=False)[:, 0, :h, :w]
    torch.testing.assert_close(_prolong(c, h, w), up, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_solved_side_by_side_equal_one_by_one(monkeypatch, backend):
    """With several torch threads the CPU solve runs its chunks in a thread pool, one
    intra-op thread each: the same values as solving them one after the other, and the
    caller's thread count is restored."""
    from dnnbrain.metrics import imputation_batch
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 16, 16, generator=gen)
    m = _masks(6, 16, 16, seed=4)
    monkeypatch.setitem(imputation_batch.CHUNK, "cpu", 2 * 16 * 16)  # 9 chunks
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = linear_impute_batch(x, m, backend=backend)
        torch.set_num_threads(3)
        pooled = linear_impute_batch(x, m, backend=backend)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert torch.equal(serial, pooled)
    assert np.abs(serial.numpy() - _reference(x, m)).max() <= 1e-5 * float(x.max() - x.min())


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearly_everything_removed_from_a_smooth_224px_image(backend):
    """95 % of a smooth, offset 224-px image removed: float32 rounding in the stencil's
    cancellation is largest there (the integer-weight stencil: 1.0e-5 of the range; the
    same stencil pre-scaled by -1/12: 4.5e-5)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8, generator=gen) * 2,
                                        size=(224, 224), mode="bilinear") + 2
    field = torch.nn.functional.interpolate(torch.rand(1, 1, 6, 6, generator=gen),
                                            size=(224, 224), mode="bilinear")[0, 0]
    m = (field > torch.quantile(field, 0.05))[None]
    got = linear_impute_batch(x, m, backend=backend)
    span = float(x.max() - x.min())
    assert np.abs(got.numpy() - _reference(x, m)).max() <= 2e-5 * span


@pytest.mark.skipif(NO_CC, reason="no C compiler")
@pytest.mark.parametrize("n, c, h, w", [(3, 3, 64, 64), (2, 3, 1, 9), (2, 1, 7, 1),
                                        (2, 2, 2, 3), (3, 3, 31, 50)])
def test_c_solver_equals_torch_solver(n, c, h, w):
    """The C solver runs the torch solver's algorithm: the same values to float32
    rounding, on square, odd, one-row and one-column grids."""
    gen = torch.Generator().manual_seed(h * w + c)
    x = torch.randn(n, c, h, w, generator=gen) * 3 - 1
    m = torch.rand(n, h, w, generator=gen) < torch.linspace(0.2, 0.9, n)[:, None, None]
    m[:, 0, 0] = False                                             # keep one pixel
    m[0, -1, -1] = True                                            # and remove a corner
    got = linear_impute_batch(x, m, backend="c")
    want = linear_impute_batch(x, m, backend="torch")
    span = float(x.max() - x.min())
    assert np.abs(got.numpy() - want.numpy()).max() <= 1e-5 * span
    assert np.abs(got.numpy() - _reference(x, m)).max() <= 1e-5 * span
    assert torch.equal(got[~m[:, None].expand_as(x)], x[~m[:, None].expand_as(x)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_not_converged_is_logged(backend, caplog):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    m = _masks(2, 32, 32, seed=5)
    with caplog.at_level("WARNING", logger="dnnbrain.metrics.imputation_batch"):
        linear_impute_batch(x, m, max_iter=1, backend=backend)
    assert "6 systems not converged after 1 iterations" in caplog.text


def test_backend_errors_and_fallback_without_a_compiler(monkeypatch, tmp_path, caplog):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    m = _masks(1, 8, 8, 1)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        linear_impute_batch(x, m, backend="fortran")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs images on the CPU"):
            linear_impute_batch(x.cuda(), m.cuda(), backend="c")
    want = linear_impute_batch(x, m, backend="torch")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("DNNBRAIN_CACHE", str(tmp_path / "cache"))
    imputation_c.library.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="dnnbrain.metrics.imputation_c"):
            torch.testing.assert_close(linear_impute_batch(x, m), want, rtol=0, atol=0)
        assert "using the torch solver" in caplog.text
        with pytest.raises(OSError, match="the C solver could not be built"):
            linear_impute_batch(x, m, backend="c")
        assert not list((tmp_path / "cache").glob("*"))            # nothing half-written
    finally:
        imputation_c.library.cache_clear()


@pytest.mark.skipif(NO_CC, reason="no C compiler")
def test_c_solver_is_built_once_into_its_cache(monkeypatch, tmp_path):
    import subprocess
    monkeypatch.setenv("DNNBRAIN_CACHE", str(tmp_path))
    imputation_c.library.cache_clear()
    try:
        assert imputation_c.library() is not None
        built = list(tmp_path.glob("impute-*.so"))
        assert len(built) == 1
        imputation_c.library.cache_clear()

        def no_compiler(*args, **kwargs):
            raise AssertionError("compiled again")
        monkeypatch.setattr(subprocess, "run", no_compiler)
        assert imputation_c.library() is not None                  # loaded from the cache
        assert list(tmp_path.glob("*")) == built
    finally:
        imputation_c.library.cache_clear()


@pytest.mark.skipif(NO_CC, reason="no C compiler")
def test_c_solve_refuses_what_it_cannot_read():
    """The C code reads raw memory: only float32 CPU tensors of matching shapes pass."""
    lib = imputation_c.library()
    m, b, tol = torch.zeros(2, 4, 4), torch.zeros(6, 4, 4), torch.ones(6)
    u, iters = imputation_c.solve(lib, m, b, tol, 10, 4, 4, 1.0)
    assert torch.equal(u, b) and iters.tolist() == [0] * 6       # nothing removed
    with pytest.raises(ValueError, match="`mask` must be a float32 CPU tensor"):
        imputation_c.solve(lib, m.double(), b, tol, 10, 4, 4, 1.0)
    with pytest.raises(ValueError, match="shapes must be"):
        imputation_c.solve(lib, m, b[:5], tol[:5], 10, 4, 4, 1.0)
    with pytest.raises(ValueError, match="shapes must be"):
        imputation_c.solve(lib, m, b, tol[:3], 10, 4, 4, 1.0)
