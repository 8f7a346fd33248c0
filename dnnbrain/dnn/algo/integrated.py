"""Path methods: Integrated Gradients, Blur IG and Guided IG.

Each integrates the gradient of the target unit along a path that ends at the image, so the
attributions of a map add up (approximately) to ``f(image) - f(start of the path)``:
:meth:`convergence_delta` measures how far they are from it. Paths are batched: every
(row, step) pair is one row of a forward/backward pass, ``batch_size`` rows at a time.
Baselines are pixels (black = 0, white = 1) put through ``dnn.test_transform``'s
normalisation, so they mean the same thing for every network.
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..models import DNN
from .budget import Budget
from .relu import check_activations
from .engine import SaliencyImage
from .passes import gradient_sums, sums_pass
from .checks import check_number, no_to_layer
from .target import Unit

log = logging.getLogger(__name__)

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
           "gausslegendre")
BASELINES = ("black", "white", "uniform", "blur")


def approximation(method: str, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of a rule for integrals over ``[0, 1]``.

    Parameters
    ----------
    method : {'riemann_left', 'riemann_right', 'riemann_middle', 'riemann_trapezoid', \
'gausslegendre'}
        Captum's names and nodes. Riemann weights are ``1 / steps``; the trapezoid rule
        uses ``1 / (steps - 1)`` with half weights at both ends, so its weights sum to 1
        (captum's sum to ``1 - 1 / steps``: its trapezoid maps are ``(steps - 1) / steps``
        times ours). Gauss-Legendre is numpy's ``leggauss`` mapped to ``[0, 1]``.
    steps : int
        Number of nodes (>= 2 for the Riemann rules, >= 1 for Gauss-Legendre).

    Returns
    -------
    alphas, weights : numpy.ndarray
        ``(steps,)`` float64 each.
    """
    if method not in METHODS:
        raise ValueError(f"`rule` must be one of {list(METHODS)}, got {method!r}")
    n = check_number("steps", steps, 1 if method == "gausslegendre" else 2, open_low=False,
                     integer=True)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    alphas = {"riemann_left": np.linspace(0.0, 1.0 - 1.0 / n, n),
              "riemann_right": np.linspace(1.0 / n, 1.0, n),
              "riemann_middle": np.linspace(0.5 / n, 1.0 - 0.5 / n, n),
              "riemann_trapezoid": np.linspace(0.0, 1.0, n)}[method]
    weights = np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2.0
    return alphas, weights


def pixel_affine(dnn: DNN) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(1, 3, 1, 1)`` on ``dnn.device``: network input =
    pixels (0..1) * scale + shift, read off ``dnn.test_transform.normalize``."""
    zero = dnn.test_transform.normalize(torch.zeros(1, 3, 1, 1))
    one = dnn.test_transform.normalize(torch.ones(1, 3, 1, 1))
    return (one - zero).to(dnn.device), zero.to(dnn.device)


def gaussian_blur(x: torch.Tensor, sigma: Union[float, Sequence[float]],
                  truncate: float = 4.0) -> torch.Tensor:
    """Gaussian blur of each row with its own ``sigma``, zero padding, one batched pass.

    ``x``: ``(N, C, H, W)`` float; ``sigma``: one or N standard deviations in pixels (>= 0;
    0 leaves a row as it is); ``truncate``: kernel radius in standard deviations. Returns a
    tensor like ``x``, equal to ``scipy.ndimage.gaussian_filter(mode='constant')`` over the
    two spatial axes.

    Each axis is blurred by one matrix product with the row's banded ``(H, H)`` (and
    ``(W, W)``) kernel matrix, ``K_h @ x @ K_w``: a batched matmul, 5-20x faster on the CPU
    than the equivalent per-row depthwise convolutions with kernels of up to ``2 * H`` taps.
    """
    n, c, h, w = x.shape
    sig = torch.tensor(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,)))
    if not bool((sig >= 0).all()):
        raise ValueError(f"`sigma` must be >= 0, got {np.asarray(sigma).min()}")
    radius = torch.floor(truncate * sig + 0.5)
    full = int(radius.max())
    t = torch.arange(-full, full + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sig.clamp_min(1e-12)[:, None]) ** 2)
    kernel = kernel * (t.abs() <= radius[:, None])
    kernel = kernel / kernel.sum(1, keepdim=True)

    def band(size: int) -> torch.Tensor:  # (N, 1, size, size): [i, j] = kernel[j - i]
        d = torch.arange(size)[None, :] - torch.arange(size)[:, None]
        taps = kernel[:, (d + full).clamp(0, 2 * full)] * (d.abs() <= full)
        return taps.to(x)[:, None]

    return band(h) @ x @ band(w)   # the kernels are symmetric: K_w == K_w.T


def blur_input(dnn: DNN, x: torch.Tensor, sigma: Union[float, Sequence[float]]) -> torch.Tensor:
    """:func:`gaussian_blur` in pixel space (padding is black) of network input ``x``."""
    scale, shift = (t.to(x) for t in pixel_affine(dnn))
    return gaussian_blur((x - shift) / scale, sigma) * scale + shift


def path_integral(method: SaliencyImage, x: torch.Tensor, baseline: torch.Tensor,
                  units: List[Unit], alphas: np.ndarray, weights: np.ndarray,
                  relu_mode: Optional[str] = None) -> torch.Tensor:
    """``sum_k weights[k] * grad f(baseline + alphas[k] * (x - baseline))`` per row.

    ``x``, ``baseline``: ``(B, C, H, W)``; ``units``: one per row. Every (row, step) pair
    is one input of :func:`~dnnbrain.dnn.algo.passes.gradient_sums` (batched passes,
    summed at the affine stem). Returns ``(B, C, H, W)``.
    """
    alpha = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    diff, ones = x - baseline, (1,) * (x.ndim - 1)

    def make(i: int, k0: int, k1: int, out: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(baseline[i], alpha[k0:k1].view(-1, *ones), diff[i], out=out)

    return gradient_sums(method, x, units, len(alphas), make,
                         torch.as_tensor(weights, dtype=x.dtype, device=x.device), relu_mode)


class _PathMethod(SaliencyImage):
    """Shared by the path methods: each image travels with its baseline (the start of its
    path), so per-image baselines survive the engine's row chunking."""

    baseline: Any = "black"

    def _set_baseline(self, baseline: Any, blur_sigma: float, seed: int) -> None:
        self._user = None
        if isinstance(baseline, (np.ndarray, torch.Tensor)):
            kind = (baseline.dtype.kind if isinstance(baseline, np.ndarray) else
                    "c" if baseline.dtype.is_complex else "f")
            if kind not in "biuf":
                raise TypeError(f"`baseline` as an array must hold real numbers, got dtype "
                                f"{baseline.dtype}")
            user = (torch.from_numpy(np.array(baseline, dtype=np.float32))
                    if isinstance(baseline, np.ndarray) else
                    baseline.detach().to("cpu", torch.float32, copy=True))
            if user.ndim not in (3, 4):
                raise ValueError("`baseline` as an array must be one preprocessed image "
                                 f"(3, H, W) or a batch (N, 3, H, W), got {tuple(user.shape)}")
            if not bool(torch.isfinite(user).all()):
                raise ValueError(f"`baseline` must be finite, got "
                                 f"{int((~torch.isfinite(user)).sum())} NaN or inf values "
                                 f"of {user.numel()}")
            self._user = user if user.ndim == 4 else user[None]
        elif not isinstance(baseline, str) or baseline not in BASELINES:
            raise ValueError(f"`baseline` must be one of {list(BASELINES)} or an array, "
                             f"got {baseline!r}")
        self.baseline, self.blur_sigma = baseline, check_number("blur_sigma", blur_sigma, 0)
        self.seed = check_number("seed", seed, -np.inf, integer=True)

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """:meth:`SaliencyImage.check_input`, and an array ``baseline`` of the input's
        shape."""
        super().check_input(shape)
        self._check_baseline(tuple(shape))

    def _check_baseline(self, shape: Tuple[int, ...]) -> None:
        user = getattr(self, "_user", None)  # Blur IG has no baseline parameter
        if user is not None and tuple(user.shape[1:]) != shape[-3:]:
            raise ValueError(f"`baseline` must have the input's shape {shape}, got "
                             f"{tuple(user.shape[1:])}")

    def _baselines(self, x: torch.Tensor, per_image: bool = True) -> torch.Tensor:
        """The start of each row's path, ``(B, C, H, W)``; ``per_image``: rows are the
        images in order (a baseline batch applies one to one)."""
        if self._user is not None:
            base = self._user
            self._check_baseline(tuple(x.shape[1:]))
            if len(base) > 1 and not per_image:
                raise ValueError("a `baseline` batch (one per image) works with backprop, "
                                 "not backprop_smooth; give one (3, H, W) baseline")
            if len(base) > 1 and len(base) != len(x):
                raise ValueError(f"`baseline` batch has {len(base)} images, the input has "
                                 f"{len(x)}")
            return base.to(x).expand_as(x)
        if self.baseline == "blur":
            return blur_input(self.dnn, x, self.blur_sigma)
        scale, shift = (t.to(x) for t in pixel_affine(self.dnn))
        if self.baseline == "uniform":
            gen = torch.Generator().manual_seed(self.seed)
            pixels = torch.rand((1,) + tuple(x.shape[1:]), generator=gen).to(x)
        else:
            pixels = torch.full((1,) + tuple(x.shape[1:]), float(self.baseline == "white"),
                                dtype=x.dtype, device=x.device)
        return (pixels * scale + shift).expand_as(x)

    def _path(self, x: torch.Tensor, base: torch.Tensor, units: List[Unit]) -> torch.Tensor:
        raise NotImplementedError  # (B, C, H, W) attributions of rows x

    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        no_to_layer(to_layer, type(self).__name__)
        return self._path(x, self._baselines(x, per_image=False), self.fixed_units(x, units))

    def _paired(self, image: Any, preprocessed: bool) -> Tuple[torch.Tensor, bool]:
        x, batch = self._prepare(image, preprocessed)
        return torch.cat([x, self._baselines(x)], 1), batch

    def backprop(self, image: Any, to_layer: Optional[str] = None,
                 preprocessed: bool = False) -> np.ndarray:
        """Map of the target unit(s) for one image or a batch.

        Parameters
        ----------
        image, preprocessed
            As :meth:`SaliencyImage.backprop`.
        to_layer : None
            Must be None: path methods live at the network input.

        Returns
        -------
        numpy.ndarray
            float32 ``(3, H, W)`` per image and unit, with ``N``/``U`` axes as
            :meth:`SaliencyImage.backprop`; each sums to about ``f(image) - f(baseline)``.
        """
        no_to_layer(to_layer, type(self).__name__)
        paired, batch = self._paired(image, preprocessed)

        def path(rows: torch.Tensor, units: List[Unit]) -> torch.Tensor:
            x, base = rows.chunk(2, 1)
            return self._path(x, base, self.fixed_units(x, units))

        return self._shape(self._run(paired, path, net_input=paired.chunk(2, 1)[0]), batch)

    def convergence_delta(self, image: Any, preprocessed: bool = False) -> np.ndarray:
        """Completeness error: the sum of each map minus ``f(image) - f(baseline)``.

        Parameters
        ----------
        image, preprocessed
            As :meth:`backprop`.

        Returns
        -------
        numpy.ndarray
            float32, shaped like :meth:`backprop`'s output without the map axes: ``()``
            for one image and unit, ``(N,)``, ``(U,)`` or ``(N, U)``.
        """
        paired, batch = self._paired(image, preprocessed)

        def delta(rows: torch.Tensor, units: List[Unit]) -> torch.Tensor:
            x, base = rows.chunk(2, 1)
            units = self.fixed_units(x, units)
            total = self._path(x, base, units).flatten(1).sum(1)
            return total - (self.activation(x, units) - self.activation(base, units))

        return self._shape(self._run(paired, delta, net_input=paired.chunk(2, 1)[0]), batch)


class IntegratedGradients(_PathMethod):
    """Integrated Gradients (Sundararajan et al., 2017, "Axiomatic attribution for deep
    networks"): ``(x - baseline) * integral of grad f along the straight line``.

    Parameters
    ----------
    dnn, from_layer, from_chn, batch_size, memory_budget
        As :class:`SaliencyImage`.
    steps : int
        Nodes of the integral; cost ``steps`` forward + backward rows per map.
    baseline : {'black', 'white', 'uniform', 'blur'} or array
        Pixels 0, pixels 1, uniform-noise pixels (``seed``), the image blurred with
        ``blur_sigma`` (pixel space), or a preprocessed ``(3, H, W)`` baseline, or one per
        image ``(N, 3, H, W)`` (``backprop`` only).
    rule : str
        Quadrature rule, see :func:`approximation` (captum's ``method`` names and nodes;
        named ``rule`` here so ``saliency(..., method='ig', rule=...)`` works).
    blur_sigma : float
        Blur of the ``'blur'`` baseline, in pixels.
    seed : int
        Noise of the ``'uniform'`` baseline.
    base : {None, 'guided'}
        ReLU rule of the gradient (None: vanilla; 'guided' loses completeness).
    activations : {'relu', 'all'}
        With ``base='guided'``: ``'relu'`` refuses networks with other elementwise
        activations, ``'all'`` applies the guided rule at every one (see
        :class:`dnnbrain.dnn.algo.GuidedSaliencyImage`).
    """

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, steps: int = 50, baseline: Any = "black",
                 rule: str = "riemann_trapezoid", blur_sigma: float = 10.0, seed: int = 0,
                 base: Optional[str] = None, memory_budget: Budget = None,
                 activations: str = "relu") -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        self.activations = check_activations(activations)
        if base not in (None, "guided"):
            raise ValueError(f"`base` must be one of [None, 'guided'], got {base!r}")
        self.alphas, self.weights = approximation(rule, steps)
        self.steps, self.rule, self.relu_mode = int(steps), rule, base
        self.rows_per_map = self.steps
        self._set_baseline(baseline, blur_sigma, seed)

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """As :class:`_PathMethod`, and one row of the path's summed passes within
        ``memory_budget``."""
        super().check_input(shape)
        self._check_budget(self._probe(shape), images=1, **sums_pass(self))

    def _path(self, x: torch.Tensor, base: torch.Tensor, units: List[Unit]) -> torch.Tensor:
        grads = path_integral(self, x, base, units, self.alphas, self.weights, self.relu_mode)
        return (x - base) * grads


class BlurIG(_PathMethod):
    """Blur IG (Xu et al., 2020, "Attribution in scale and space"): integrated gradients
    along a path of ever stronger Gaussian blur (PAIR's algorithm), from the image blurred
    with the largest sigma to the image. Blur is in pixel space with black padding.

    Parameters
    ----------
    dnn, from_layer, from_chn, batch_size, memory_budget
        As :class:`SaliencyImage`.
    max_sigma : float
        Largest blur, in pixels.
    steps : int
        Sigmas on the path; cost ``steps`` forward + backward rows per map.
    grad_step : float
        Sigma step of the finite-difference derivative of the blur.
    sqrt : bool
        Space sigmas as ``sqrt(i * max_sigma / steps)`` (PAIR's option; the path then ends
        at ``sqrt(max_sigma)``).
    """

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, *, max_sigma: float = 50.0, steps: int = 100,
                 grad_step: float = 0.01, sqrt: bool = False,
                 memory_budget: Budget = None) -> None:
        super().__init__(dnn, from_layer, from_chn, batch_size, memory_budget)
        if not isinstance(sqrt, bool):
            raise ValueError(f"`sqrt` must be True or False, got {sqrt!r}")
        self.max_sigma = check_number("max_sigma", max_sigma, 0)
        self.steps = check_number("steps", steps, 1, open_low=False, integer=True)
        self.grad_step, self.sqrt = check_number("grad_step", grad_step, 0), sqrt
        sigmas = np.arange(self.steps + 1) * self.max_sigma / self.steps
        self.sigmas = np.sqrt(sigmas) if sqrt else sigmas
        self.rows_per_map = self.steps

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """As :class:`_PathMethod`, and one row of the path's passes within
        ``memory_budget``."""
        super().check_input(shape)
        self._check_budget(self._probe(shape), images=1)

    def _baselines(self, x: torch.Tensor, per_image: bool = True) -> torch.Tensor:
        return blur_input(self.dnn, x, float(self.sigmas[-1]))

    def _path(self, x: torch.Tensor, base: torch.Tensor, units: List[Unit]) -> torch.Tensor:
        n, s = len(x), self.steps
        total = torch.zeros_like(x)
        chunk = self.rows_per_pass(x, units, images=n)
        for start in range(0, n * s, chunk):
            stop = min(start + chunk, n * s)
            k = np.arange(start, stop) % s
            row = torch.arange(start, stop, device=x.device) // s
            rows = x[row]
            sig = self.sigmas[k]
            blurred = blur_input(self.dnn, torch.cat([rows, rows]),
                                 np.concatenate([sig, sig + self.grad_step]))
            points, ahead = blurred.chunk(2)
            grad = self.gradient(points, [units[i // s] for i in range(start, stop)])[0]
            step = torch.as_tensor((self.sigmas[k + 1] - sig) / self.grad_step).to(x)
            total.index_add_(0, row, grad * (ahead - points) * step.view(-1, 1, 1, 1))
        return -total  # the path runs from blurred to sharp: sigma decreases
