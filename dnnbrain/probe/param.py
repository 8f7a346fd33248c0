"""Image parameterisation and transformation robustness for feature visualisation.

An image is not optimised pixel by pixel: that finds high-frequency patterns that drive a
unit but look like noise. As in Olah, Mordvintsev & Schubert (2017), "Feature
Visualization", Distill (doi:10.23915/distill.00007), and the lucid/lucent libraries:

* the image is held as its 2-D Fourier spectrum (``torch.fft.irfft2``), each frequency
  scaled by ``1 / f`` (natural images' spectrum), so a gradient step moves all
  frequencies at a comparable rate (:class:`FourierImage`);
* the three channels of that image are decorrelated colours: a fixed 3x3 square root of
  the colour covariance of natural (ImageNet) images, normalised to unit largest column
  norm, maps them to RGB (:data:`COLOR_CORRELATION_SQRT`);
* a sigmoid maps the result to pixels in 0..1;
* every step the network sees a randomly padded, shifted, scaled and rotated copy of the
  image (:class:`Robustness`), so the pattern must survive small transformations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: Square root of the colour correlation of ImageNet images (Olah et al. 2017; lucid):
#: decorrelated colour -> RGB, before the normalisation by its largest column norm.
COLOR_CORRELATION_SQRT = np.array([[0.26, 0.09, 0.02],
                                   [0.27, 0.00, -0.05],
                                   [0.27, -0.09, 0.03]], dtype=np.float32)
#: Standard deviation of the initial spectrum (lucid's default).
INIT_SD = 0.01
#: Image side at which the spectrum scale is lucid's; at side ``s`` it is multiplied by
#: ``REFERENCE_SIZE / s``, so one Adam step changes the pixels by about as much at any
#: image size (a pixel sums ``s**2`` coefficients with weight ``1 / (s f)``: the change of
#: a coherent step grows with ``s``), and ``lr`` keeps its meaning.
REFERENCE_SIZE = 224


def _color_matrix() -> torch.Tensor:
    norm = float(np.linalg.norm(COLOR_CORRELATION_SQRT, axis=0).max())
    return torch.from_numpy(COLOR_CORRELATION_SQRT / norm)


def frequency_scale(h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """``(h, w // 2 + 1)`` float32 scale of each ``rfft2`` frequency: ``1 / max(f,
    1 / max(h, w)) ** decay`` with ``f`` the frequency's magnitude in cycles per pixel,
    times ``REFERENCE_SIZE / max(h, w)`` (see :data:`REFERENCE_SIZE`)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    scale = 1.0 / np.maximum(f, 1.0 / max(h, w)) ** decay * (REFERENCE_SIZE / max(h, w))
    return torch.from_numpy(scale.astype(np.float32))


class FourierImage:
    """A batch of images held as colour-decorrelated, ``1/f``-scaled Fourier spectra.

    Parameters
    ----------
    spectra : torch.Tensor
        ``(N, 3, h, w // 2 + 1, 2)`` float32: real and imaginary parts of each image's
        spectrum in decorrelated colour, before the ``1/f`` scaling (see
        :meth:`init_spectra`). It becomes the optimised leaf (``requires_grad``).
    size : (int, int)
        Image ``(h, w)``.
    decay : float
        Exponent of the ``1/f`` scaling (1: natural images).

    Notes
    -----
    :meth:`pixels` is ``sigmoid(C @ irfft2(scale * spectrum, norm='ortho') / 4)`` per pixel,
    with ``C`` the normalised colour matrix; the division by 4 (as lucid) keeps the initial
    image near the sigmoid's linear middle.
    """

    def __init__(self, spectra: torch.Tensor, size: Tuple[int, int], decay: float = 1.0) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.spectra = spectra.detach().clone().requires_grad_(True)
        dev = spectra.device
        self._scale = frequency_scale(*self.size, decay).to(dev)[None, None, :, :, None]
        self._color = _color_matrix().to(dev)

    @staticmethod
    def init_spectra(size: Tuple[int, int], seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """Initial spectra ``(len(seeds), 3, h, w // 2 + 1, 2)`` float32 on the CPU: row
        ``i`` is normal noise (sd :data:`INIT_SD`) from ``numpy.random.default_rng(seeds[i])``,
        so an image's start does not depend on the rest of its batch."""
        h, w = size
        shape = (3, h, w // 2 + 1, 2)
        rows = [np.random.default_rng(list(s)).standard_normal(shape).astype(np.float32)
                for s in seeds]
        return torch.from_numpy(np.stack(rows) * np.float32(INIT_SD))

    def pixels(self) -> torch.Tensor:
        """The images ``(N, 3, h, w)`` float32 in 0..1, differentiable in :attr:`spectra`."""
        spec = torch.view_as_complex((self.spectra * self._scale).contiguous())
        img = torch.fft.irfft2(spec, s=self.size, norm="ortho") / 4.0
        img = torch.einsum("ij,njhw->nihw", self._color, img)
        return torch.sigmoid(img)


@dataclass(frozen=True)
class Robustness:
    """Random transformations applied to the images at every step (Olah et al. 2017).

    Each image gets its own draw: the canvas is padded by ``pad`` pixels of grey (0.5),
    shifted by up to ``jitter`` pixels in each direction, scaled by a factor from
    ``scale`` and rotated by up to ``rotate`` degrees either way, all in one bilinear
    resampling to the network's input size.

    Parameters
    ----------
    pad : float
        Grey border around the image, in pixels of the image.
    jitter : float
        Largest shift, in pixels.
    scale : (float, float)
        Range of the zoom factor (uniform).
    rotate : float
        Largest rotation in degrees (uniform in ``[-rotate, rotate]``).
    """

    pad: float = 0.0
    jitter: float = 0.0
    scale: Tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pad", "jitter", "rotate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 \
                    or not math.isfinite(v):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {v!r}")
        s = self.scale
        if (not isinstance(s, (tuple, list)) or len(s) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) and v > 0 for v in s) or s[0] > s[1]):
            raise ValueError(f"`scale` must be (low, high) with 0 < low <= high, got {s!r}")
        object.__setattr__(self, "scale", (float(s[0]), float(s[1])))

    @classmethod
    def standard(cls, size: int) -> "Robustness":
        """The default for images of side ``size``: lucid's standard set (pad 12, jitters
        of 8 and 4, scale 0.9..1.1, rotation up to 10 degrees at 224 px), with the pixel
        amounts scaled to ``size`` (at 64 px: pad 3.4, jitter 3.4)."""
        k = size / 224.0
        return cls(pad=12 * k, jitter=12 * k, scale=(0.9, 1.1), rotate=10.0)

    @property
    def identity(self) -> bool:
        """True when the transformation does nothing."""
        return (self.pad == 0 and self.jitter == 0 and self.scale == (1.0, 1.0)
                and self.rotate == 0)

    def draw(self, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """One draw per generator: ``(N, 4)`` float64 rows ``(dx, dy, scale, angle)``
        (pixels, factor, radians)."""
        out = np.empty((len(rngs), 4))
        for i, rng in enumerate(rngs):
            dx, dy = rng.uniform(-self.jitter, self.jitter, 2)
            out[i] = (dx, dy, rng.uniform(*self.scale),
                      math.radians(rng.uniform(-self.rotate, self.rotate)))
        return out

    def apply(self, img: torch.Tensor, params: np.ndarray,
              out_size: Tuple[int, int]) -> torch.Tensor:
        """Transform ``img`` ``(N, 3, h, w)`` (0..1) by ``params`` (from :meth:`draw`) into
        ``(N, 3, *out_size)``; what falls outside the image is grey (0.5)."""
        n, _, h, w = img.shape
        if self.identity and tuple(out_size) == (h, w):
            return img
        p = torch.as_tensor(params, dtype=img.dtype).to(img.device)
        dx, dy, s, a = p.unbind(1)
        grow_x, grow_y = 1 + 2 * self.pad / w, 1 + 2 * self.pad / h
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        # output coordinates (in -1..1 over the padded canvas) -> image coordinates
        theta = torch.stack([torch.stack([cos * grow_x, -sin * grow_y, 2 * dx / w], 1),
                             torch.stack([sin * grow_x, cos * grow_y, 2 * dy / h], 1)], 1)
        grid = F.affine_grid(theta, [n, 3, int(out_size[0]), int(out_size[1])],
                             align_corners=False)
        return F.grid_sample(img - 0.5, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + 0.5


def resize_to(img: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """``img`` ``(N, 3, h, w)`` bilinearly resized to ``size`` (unchanged when it fits)."""
    if size is None or tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True)
