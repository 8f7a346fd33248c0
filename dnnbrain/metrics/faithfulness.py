"""Faithfulness metrics: does removing what a map calls relevant change the model's score?

* :func:`road` — ROAD, Remove And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci,
  2022, "A consistent and efficient evaluation strategy for attribution methods", ICML):
  the most (MoRF) or least (LeRF) relevant pixels are removed by noisy linear imputation.
* :func:`deletion_insertion` — the deletion and insertion games of RISE (Petsiuk, Das &
  Saenko, 2018, "RISE: randomized input sampling for explanation of black-box models",
  BMVC).

Both take the network input ``(N, 3, H, W)`` (``dnn.test_transform`` output), maps
``(N, H, W)`` or ``(N, C, H, W)`` of the same size (ranked by their magnitude,
:func:`~dnnbrain.metrics.localisation.saliency_magnitude`), and a score (see
:func:`~dnnbrain.metrics.scoring.make_scorer`). Perturbed images are scored in batches
under ``torch.no_grad()``; the map's ranking ties are broken by a seeded random order.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from .imputation_batch import noisy_linear_impute_batch
from .localisation import saliency_magnitude
from .scoring import check_batch_size, make_scorer, score_rows

__all__ = ["PerturbationCurves", "DeletionInsertion", "road", "deletion_insertion"]

log = logging.getLogger(__name__)
ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_ORDERS = ("morf", "lerf")
BASELINES = ("zero", "blur")
#: Pixel values (images x percentages x channels x pixels) ROAD imputes per chunk.
ROAD_CHUNK = 2 ** 24


@dataclass(frozen=True)
class PerturbationCurves:
    """Scores of perturbed images along a perturbation curve.

    Attributes
    ----------
    kind : str
        ``'road-morf'``, ``'road-lerf'``, ``'deletion'`` or ``'insertion'``.
    x : numpy.ndarray
        ``(P,)`` float64: fraction of pixels removed (ROAD, deletion) or inserted.
    scores : numpy.ndarray
        ``(N, P)`` float64: the target score of each image at each point.
    original : numpy.ndarray
        ``(N,)`` float64: the score of the unperturbed images.
    """

    kind: str
    x: np.ndarray
    scores: np.ndarray
    original: np.ndarray

    @property
    def mean_curve(self) -> np.ndarray:
        """``(P,)`` mean score over images at each point."""
        return self.scores.mean(0)

    @property
    def auc(self) -> np.ndarray:
        """``(N,)`` area under each image's curve, trapezoid rule over :attr:`x`:
        :math:`\\sum_j (x_{j+1} - x_j)(y_j + y_{j+1}) / 2` (over ``x[0]..x[-1]``, so
        ROAD's default 0.1..0.9 spans 0.8)."""
        dx = np.diff(self.x)
        return ((self.scores[:, 1:] + self.scores[:, :-1]) * dx).sum(1) / 2

    @property
    def mean_auc(self) -> float:
        """Area under the mean curve (= mean of :attr:`auc`)."""
        return float(self.auc.mean())

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary: kind, x, mean curve, mean AUC, per-image AUC and scores."""
        return {"kind": self.kind, "x": self.x.tolist(), "mean_curve": self.mean_curve.tolist(),
                "mean_auc": self.mean_auc, "auc": self.auc.tolist(),
                "scores": self.scores.tolist(), "original": self.original.tolist()}


@dataclass(frozen=True)
class DeletionInsertion:
    """Both RISE games. ``deletion.auc``: lower is better; ``insertion.auc``: higher."""

    deletion: PerturbationCurves
    insertion: PerturbationCurves


def _prepare(images: Any, maps: Any) -> Tuple[torch.Tensor, np.ndarray]:
    """Check and convert: ``(N, 3, H, W)`` float32 tensor, ``(N, H, W)`` float64 magnitude."""
    x = torch.from_numpy(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise TypeError("`images` must be a preprocessed (N, C, H, W) tensor or array (see "
                        f"dnn.test_transform.batch), got {type(images).__name__}")
    if x.ndim != 4 or 0 in x.shape or not x.is_floating_point():
        raise ValueError("`images` must be a non-empty float (N, C, H, W) network input, got "
                         f"{x.dtype} {tuple(x.shape)}")
    mag = saliency_magnitude(maps, "maps", batch=True)
    if mag.shape != (x.shape[0],) + tuple(x.shape[2:]):
        raise ValueError(f"`maps` must give one {tuple(x.shape[2:])} map per image "
                         f"({x.shape[0]}), got shape {mag.shape}")
    return x.detach().float(), mag


def _pixel_order(mag: np.ndarray, most_first: bool, seed: int) -> np.ndarray:
    """``(N, H*W)`` flat pixel indices, most (or least) relevant first, ties in a seeded
    random order."""
    n = mag.shape[0]
    flat = mag.reshape(n, -1)
    perm = np.argsort(np.random.default_rng(seed).random(flat.shape), axis=1)
    keys = np.take_along_axis(flat, perm, 1)
    order = np.argsort(-keys if most_first else keys, axis=1, kind="stable")
    return np.take_along_axis(perm, order, 1)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
    return int(seed)


def road(model: Any, images: Any, maps: Any,
         percentages: Sequence[float] = ROAD_PERCENTAGES, order: str = "morf",
         units: Any = None, softmax: bool = False, noise: float = 0.01, seed: int = 0,
         batch_size: int = 32) -> PerturbationCurves:
    """ROAD: score after removing a share of pixels by noisy linear imputation
    (Rong et al., 2022, ICML).

    For each image and each :math:`p` in ``percentages``, the :math:`\\mathrm{round}(pHW)`
    most (``'morf'``) or least (``'lerf'``) relevant pixels (all channels) are imputed
    with :func:`~dnnbrain.metrics.imputation.noisy_linear_impute` and the target score
    :math:`f_c` is measured:

    .. math:: \\mathrm{ROAD}_p = \\frac{1}{N} \\sum_i f_c(\\tilde x_i^{(p)})

    A faithful map makes the MoRF curve fall fast (low area) and the LeRF curve stay
    high; mednet and pytorch-grad-cam summarise with ``(LeRF - MoRF) / 2``.

    Parameters
    ----------
    model : SaliencyImage, DNN, nn.Module or callable
        The score (see :func:`~dnnbrain.metrics.scoring.make_scorer`): a method whose
        target is set, a network (with ``units``), or ``f(x (B,3,H,W)) -> (B,)``.
    images : torch.Tensor or numpy.ndarray
        ``(N, 3, H, W)`` float network input (``dnn.test_transform`` output). Imputation
        and noise act in this space.
    maps : array or tensor
        ``(N, H, W)`` or ``(N, C, H, W)`` maps at the images' size, ranked by magnitude.
    percentages : sequence of float
        Shares of pixels to remove, each in ``[0, 1)``.
    order : {'morf', 'lerf'}
        Most relevant first, or least relevant first.
    units : unit, list of units (one per image), or None
        Target per image, counted from 1 (None: the method's own unit).
    softmax : bool
        Score the softmax probability of the unit instead of its raw value.
    noise : float
        Standard deviation of the imputation noise, in network-input units (0.01 as in
        the authors' code).
    seed : int
        Seed of the noise and of the tie-break; same seed, same result (whatever
        ``batch_size``).
    batch_size : int
        Perturbed images per forward pass.

    Returns
    -------
    PerturbationCurves
        ``scores`` ``(N, P)``, ``x`` = ``percentages``, ``original`` ``(N,)``; ``auc``
        and ``mean_curve`` summarise.

    Notes
    -----
    The images of a chunk are imputed at all percentages at once on the scorer's device
    (:func:`~dnnbrain.metrics.imputation_batch.noisy_linear_impute_batch`: one batched
    multigrid-preconditioned conjugate-gradient solve, equal to the sparse direct solve of
    :func:`~dnnbrain.metrics.imputation.noisy_linear_impute` to about 1e-5 of the image
    range; see ``docs/metrics.rst``, *Tolerance*), then scored ``batch_size`` at a time. The noise of image ``i`` at percentage
    ``j`` comes from its own seed (derived from ``seed``), drawn on the device.
    """
    if order not in ROAD_ORDERS:
        raise ValueError(f"`order` must be one of {list(ROAD_ORDERS)}, got {order!r}")
    pcts = np.asarray(percentages, dtype=np.float64).ravel() if not isinstance(
        percentages, str) else np.array([])
    if pcts.size == 0 or not ((pcts >= 0) & (pcts < 1)).all():
        raise ValueError("`percentages` must be a non-empty sequence of numbers in [0, 1), "
                         f"got {percentages!r}")
    if not noise >= 0:
        raise ValueError(f"`noise` must be >= 0, got {noise!r}")
    seed, batch_size = _check_seed(seed), check_batch_size(batch_size)
    x, mag = _prepare(images, maps)
    scorer, dev = make_scorer(model, x, units, softmax)
    n, c, h, w = x.shape
    n_p = len(pcts)
    counts = torch.tensor([min(int(round(p * h * w)), h * w - 1) for p in pcts], device=dev)
    rank = _ranks(_pixel_order(mag, order == "morf", seed), h, w, dev)
    seeds = np.random.SeedSequence(seed).generate_state(n * n_p).reshape(n, n_p)
    xd = x.to(dev)
    step = max(1, ROAD_CHUNK // (n_p * c * h * w))  # images imputed at once
    log.info("ROAD %s: %d images x %d percentages, %d images at once", order, n, n_p, step)
    scores = []
    for i0 in tqdm(range(0, n, step), desc=f"ROAD {order}", leave=False, disable=None):
        idx = np.arange(i0, min(i0 + step, n))
        removed = (rank[idx, None] < counts[:, None, None]).flatten(0, 1)
        imgs = noisy_linear_impute_batch(xd[idx].repeat_interleave(n_p, 0), removed, noise,
                                         seeds[idx].ravel().tolist())
        rows = idx.repeat(n_p)
        scores.append(score_rows(scorer, lambda a, b: (imgs[a:b], rows[a:b]), len(imgs),
                                 batch_size, f"ROAD {order} scores"))
    original = score_rows(scorer, lambda a, b: (xd[a:b], np.arange(a, b)), n, batch_size,
                          "original")
    return PerturbationCurves(f"road-{order}", pcts, np.concatenate(scores).reshape(n, n_p),
                              original)


def _ranks(pix: np.ndarray, h: int, w: int, dev: torch.device) -> torch.Tensor:
    """``(N, H, W)`` int64 rank of each pixel in the order ``pix`` (``(N, H*W)`` flat
    indices, first = rank 0), on ``dev``."""
    rank = np.empty_like(pix)
    np.put_along_axis(rank, pix, np.arange(h * w)[None].repeat(len(pix), 0), 1)
    return torch.from_numpy(rank.reshape(-1, h, w)).to(dev)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)``, kernel ``2 ceil(sigma) + 1``, reflect
    padding (as torchvision's ``gaussian_blur``)."""
    half = int(math.ceil(sigma))
    if half >= min(x.shape[-2:]):
        raise ValueError(f"`blur_sigma` {sigma} is too large for {tuple(x.shape[-2:])} "
                         "images (need ceil(sigma) < side)")
    t = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    y = torch.nn.functional.pad(x, (half, half, half, half), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _baseline(spec: Any, x: torch.Tensor, blur_sigma: float, name: str) -> torch.Tensor:
    """The canvas of a game: ``'zero'``, ``'blur'``, a number, or an array broadcastable
    to ``x``; returned as a tensor shaped and placed like ``x``."""
    if isinstance(spec, str):
        if spec not in BASELINES:
            raise ValueError(f"`{name}` must be one of {list(BASELINES)}, a number or a "
                             f"tensor, got {spec!r}")
        if spec == "zero":
            return torch.zeros_like(x)
        return _gaussian_blur(x, float(blur_sigma))
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full_like(x, float(spec))
    if isinstance(spec, (np.ndarray, torch.Tensor)):
        t = torch.as_tensor(spec, dtype=x.dtype, device=x.device)
        try:
            return torch.broadcast_to(t, x.shape).clone()
        except RuntimeError:
            raise ValueError(f"`{name}` of shape {tuple(t.shape)} does not broadcast to the "
                             f"images {tuple(x.shape)}") from None
    raise ValueError(f"`{name}` must be one of {list(BASELINES)}, a number or a tensor, got "
                     f"{type(spec).__name__}")


def deletion_insertion(model: Any, images: Any, maps: Any, n_steps: int = 32,
                       units: Any = None, softmax: bool = False,
                       deletion_baseline: Union[str, float, torch.Tensor] = "zero",
                       insertion_baseline: Union[str, float, torch.Tensor] = "blur",
                       blur_sigma: float = 5.0, seed: int = 0,
                       batch_size: int = 32) -> DeletionInsertion:
    """RISE's deletion and insertion games (Petsiuk, Das & Saenko, 2018, BMVC).

    Pixels are ranked by the map's magnitude. At step :math:`k = 0..S` the first
    :math:`n_k = \\mathrm{round}(k H W / S)` pixels are

    * deleted: :math:`x^{del}_k = M_k \\odot b_{del} + (1 - M_k) \\odot x` (RISE: zeros);
    * inserted: :math:`x^{ins}_k = M_k \\odot x + (1 - M_k) \\odot b_{ins}` (RISE: a
      blurred copy),

    and :math:`AUC = \\sum_k (y_k + y_{k+1}) / (2S)` with :math:`y_k = f_c(x_k)`, x in
    0..1. Good maps have a low deletion and a high insertion AUC.

    Parameters
    ----------
    model : SaliencyImage, DNN, nn.Module or callable
        The score (see :func:`~dnnbrain.metrics.scoring.make_scorer`).
    images : torch.Tensor or numpy.ndarray
        ``(N, 3, H, W)`` float network input.
    maps : array or tensor
        ``(N, H, W)`` or ``(N, C, H, W)`` maps at the images' size.
    n_steps : int
        :math:`S`: curves have ``S + 1`` points (RISE uses ``H W / 224`` steps).
    units, softmax
        As in :func:`road`. RISE scores softmax probabilities (``softmax=True``).
    deletion_baseline, insertion_baseline : {'zero', 'blur'}, float or tensor
        :math:`b`: ``'zero'`` is 0 in network space (the dataset mean colour for
        mean/std-normalised inputs), ``'blur'`` a Gaussian blur of the image (sigma
        ``blur_sigma``, kernel ``2 ceil(sigma) + 1``: RISE's 11 for sigma 5), a number,
        or anything broadcastable to ``images``.
    blur_sigma : float
        Standard deviation of the blur, in pixels.
    seed : int
        Seed of the tie-break among equally salient pixels.
    batch_size : int
        Perturbed images per forward pass (built on the device).

    Returns
    -------
    DeletionInsertion
        ``deletion`` and ``insertion`` curves, each ``(N, S + 1)``, with ``auc``.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) \
            or n_steps < 1:
        raise ValueError(f"`n_steps` must be a positive int, got {n_steps!r}")
    if not (isinstance(blur_sigma, (int, float)) and 0 < blur_sigma < math.inf):
        raise ValueError(f"`blur_sigma` must be a positive number, got {blur_sigma!r}")
    seed, batch_size = _check_seed(seed), check_batch_size(batch_size)
    x, mag = _prepare(images, maps)
    scorer, dev = make_scorer(model, x, units, softmax)
    n, _, h, w = x.shape
    xd = x.to(dev)
    bases = (_baseline(deletion_baseline, xd, blur_sigma, "deletion_baseline"),
             _baseline(insertion_baseline, xd, blur_sigma, "insertion_baseline"))
    rank_t = _ranks(_pixel_order(mag, True, seed), h, w, dev)[:, None]
    s1 = int(n_steps) + 1
    counts = np.rint(np.arange(s1) * (h * w) / n_steps).astype(np.int64)
    counts_t = torch.from_numpy(counts).to(dev)

    def perturbed(start: int, stop: int) -> Tuple[torch.Tensor, np.ndarray]:
        rows = np.arange(start, stop)
        game, rest = np.divmod(rows, n * s1)  # rows: all deletion rows, then insertion
        img, step = np.divmod(rest, s1)
        parts = []
        for g in np.unique(game):
            sel = game == g
            i_t, k_t = (torch.from_numpy(v[sel]).to(dev) for v in (img, step))
            mask = rank_t[i_t] < counts_t[k_t].view(-1, 1, 1, 1)
            first, other = (bases[0], xd) if g == 0 else (xd, bases[1])
            parts.append(torch.where(mask, first[i_t], other[i_t]))
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), img

    log.info("deletion/insertion: %d images x %d steps", n, n_steps)
    scores = score_rows(scorer, perturbed, 2 * n * s1, batch_size, "deletion/insertion")
    scores = scores.reshape(2, n, s1)
    original = scores[0, :, 0].copy()  # deletion step 0 is the unperturbed image
    frac = counts / float(h * w)
    return DeletionInsertion(PerturbationCurves("deletion", frac, scores[0], original),
                             PerturbationCurves("insertion", frac, scores[1], original))
