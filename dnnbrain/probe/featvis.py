"""Feature visualisation: synthesise the images that drive a unit most.

>>> from dnnbrain.dnn.models import ShapeNet
>>> from dnnbrain.probe import visualise
>>> vis = visualise(ShapeNet(), 'fc2', 4, steps=64)      # class 4 (star)
>>> vis.images.shape, vis.activation.shape                # (1, 64, 64, 3), (1,)

Gradient ascent (Adam) on a Fourier-domain, colour-decorrelated image
(:mod:`dnnbrain.probe.param`), each step seen through random padding, jitter, scaling
and rotation, with an optional diversity penalty across the images of one unit: the
recipe of Olah, Mordvintsev & Schubert (2017), "Feature Visualization", Distill
(doi:10.23915/distill.00007). Units count from 1 as everywhere in dnnbrain
(:mod:`dnnbrain.probe.objective`); the forward pass stops at the target layer.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from ..dnn.algo.calls import check_call
from ..dnn.algo.checks import check_number
from ..dnn.algo.forward import eval_mode
from ..dnn.algo.target import check_reduce
from ..dnn.base import luma
from ..dnn.models import DNN
from ..io.maps import save_png
from .objective import UnitPass, gram_similarity, parse_units
from .param import FourierImage, Robustness, resize_to

log = logging.getLogger(__name__)

TRANSFORMS = ("standard", "none")


@dataclass
class FeatureVis:
    """Synthesised images and how strongly they drive their unit.

    Attributes
    ----------
    images : numpy.ndarray
        float32 pixels in 0..1, ``(n, H, W, 3)`` for one unit, ``(U, n, H, W, 3)`` for a
        list of ``U`` units.
    activation : numpy.ndarray
        float32 score of each image's unit for the image exactly as returned (no
        transformation; resized to the network's input size if ``size`` differs):
        ``(n,)`` or ``(U, n)``.
    trace : numpy.ndarray
        float32 score of each (transformed) image at every step: ``(steps, n)`` or
        ``(steps, U, n)``.
    layer : str
        Target layer.
    unit : object
        The unit(s) as given.
    seed : int
        The seed: the same seed gives the same images on the CPU (bit for bit).
    """

    images: np.ndarray
    activation: np.ndarray
    trace: np.ndarray
    layer: str
    unit: Any
    seed: int

    def uint8(self) -> np.ndarray:
        """The images as uint8 0..255 (same shape as :attr:`images`)."""
        return np.rint(np.clip(self.images, 0, 1) * 255).astype(np.uint8)

    def save(self, folder: Union[str, Path], prefix: str = "featvis") -> List[Path]:
        """Write every image as ``{prefix}_{i}.png`` (one unit) or ``{prefix}_u{k}_{i}.png``
        (``k`` the position in the unit list, ``i`` the image, both from 0) in
        ``folder`` (created), atomically; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        imgs = self.uint8()
        paths = []
        if imgs.ndim == 4:
            for i, im in enumerate(imgs):
                paths.append(save_png(folder / f"{prefix}_{i}.png", im))
        else:
            for k, group in enumerate(imgs):
                for i, im in enumerate(group):
                    paths.append(save_png(folder / f"{prefix}_u{k}_{i}.png", im))
        return paths


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    return int(value)


def _sizes(dnn: DNN, size: Any) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """The image's ``(h, w)`` and the network input's."""
    net = dnn.test_transform.size
    if size is None:
        if net is None:
            raise ValueError(f"`size` must be given for {dnn.name}: its test_transform keeps "
                             "the image size (give an int or (H, W))")
        return tuple(net), tuple(net)
    hw = (size, size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) \
        else size
    if (not isinstance(hw, (tuple, list)) or len(hw) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 8 for v in hw)):
        raise ValueError(f"`size` must be None, an int >= 8 or (H, W) ints >= 8, got {size!r}")
    hw = (int(hw[0]), int(hw[1]))
    return hw, (tuple(net) if net is not None else hw)


def _robustness(transforms: Any, side: int) -> Robustness:
    if isinstance(transforms, Robustness):
        return transforms
    if transforms == "standard":
        return Robustness.standard(side)
    if transforms == "none" or transforms is None:
        return Robustness()
    raise ValueError(f"`transforms` must be one of {list(TRANSFORMS)}, None or a "
                     f"dnnbrain.probe.param.Robustness, got {transforms!r}")


def _work_dnn(dnn: DNN, device: Any) -> DNN:
    """``dnn`` itself on its own device, else a copy of it on ``device`` (the user's model
    never moves)."""
    if device is None:
        return dnn
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"`device` must be None or a torch device ('cpu', 'cuda', "
                         f"'cuda:1' ...), got {device!r}") from None
    here = dnn.device
    if dev.type == here.type and (dev.index is None or dev.index == here.index):
        return dnn
    log.info("visualise: running on a copy of %s on %s", dnn.name, dev)
    return copy.deepcopy(dnn).to(dev)


def visualise(dnn: DNN, layer: str, unit: Any, n: int = 1, steps: int = 256,
              lr: float = 0.05, size: Union[int, Tuple[int, int], None] = None,
              diversity: float = 0.0, diversity_layer: Optional[str] = None,
              transforms: Union[str, Robustness, None] = "standard", reduce: str = "mean",
              call: Union[str, int, None] = None, decay: float = 1.0, seed: int = 0,
              device: Union[str, torch.device, None] = None,
              progress: bool = False) -> FeatureVis:
    """Synthesise ``n`` images that maximise ``unit`` of ``layer``.

    Parameters
    ----------
    dnn : DNN
        The network. Its model is used as it is and left as it was: train/eval flags,
        parameters, ``requires_grad`` and device unchanged, no hook left (on success or
        error); it runs in eval mode.
    layer : str
        Target layer (a name in ``dnn.layers`` or a dotted module path). The forward pass
        stops there: nothing after it is computed.
    unit : int, (int, int, int), ('cls', int), callable, 1-D float array, or a list
        Counted from 1: a channel ``c`` (a conv channel's map reduced over space by
        ``reduce``; a class on an output layer), a spatial unit ``(c, row, col)``,
        ``('cls', c)`` on a token layer, a callable ``f(layer_output) -> (n,)`` tensor
        (it gets the ``n`` rows of its unit), or a direction: a float vector over the
        layer's channels (see :mod:`dnnbrain.probe.objective`). A list (or a 2-D float
        array of directions) synthesises ``n`` images per unit in the same passes.
    n : int
        Images per unit.
    steps : int
        Adam steps.
    lr : float
        Adam's learning rate (on the Fourier coefficients).
    size : int, (int, int) or None
        Image side(s) in pixels; None: the network's input size (``test_transform.size``).
        Images are resized to the network's input size before the forward pass.
    diversity : float
        Weight of the diversity penalty (Olah et al. 2017): the cosine similarity of the
        channel Gram matrices of ``diversity_layer``'s output between the ``n`` images
        of a unit, subtracted from the objective. 0 (default) turns it off; it needs
        ``n >= 2``.
    diversity_layer : str or None
        Where the penalty looks (None: the target layer). For a class unit pick a conv
        layer, whose Gram matrix describes texture.
    transforms : {'standard', 'none'}, None or Robustness
        Transformation robustness: ``'standard'`` is :meth:`Robustness.standard` for the
        image size (pad, jitter, scale 0.9..1.1, rotation +-10 degrees); each image draws
        its own transformation at every step.
    reduce : {'mean', 'max'}
        How a conv channel becomes one number.
    call : None, 'first', 'last' or int
        Which call of a layer that runs several times (:mod:`dnnbrain.dnn.algo.calls`).
    decay : float
        Exponent of the ``1/f`` frequency scaling (0: white, 1: natural images).
    seed : int
        Seeds the initial spectra and the transformations (numpy generators seeded per
        image; the global torch/numpy random state is not used). Same seed, same images
        (bit for bit on the CPU); image ``i`` of a unit does not depend on the others'
        presence without diversity.
    device : str, torch.device or None
        Where to optimise; None: the model's device. Another device runs a copy of the
        network there (the user's model stays where it is).
    progress : bool
        Show a tqdm bar over the steps.

    Returns
    -------
    FeatureVis
        ``images`` ``(n, H, W, 3)`` float32 in 0..1 (``(U, n, H, W, 3)`` for a unit list;
        for a grayscale network, ``dnn.test_transform.channels == 1``, the gray image it
        saw in all three channels),
        their ``activation`` ``(n,)`` / ``(U, n)`` and the score ``trace`` per step.

    Raises
    ------
    ValueError or TypeError
        One line naming the parameter, the bad value and the valid choices.
    """
    if not isinstance(dnn, DNN):
        raise TypeError(f"`dnn` must be a dnnbrain DNN (wrap a module with DNN(model)), got "
                        f"{type(dnn).__name__}")
    module = dnn.layer2module(layer)
    units, many = parse_units(unit, module)
    n = _check_int("n", n, 1)
    steps = _check_int("steps", steps, 1)
    seed = _check_int("seed", seed, 0)
    lr = check_number("lr", lr, 0)
    diversity = check_number("diversity", diversity, 0, open_low=False)
    decay = check_number("decay", decay, 0, open_low=False)
    check_reduce(reduce)
    if diversity > 0 and n < 2:
        raise ValueError(f"`diversity` {diversity} needs n >= 2 images per unit, got n={n}")
    if diversity_layer is not None:
        dnn.layer2module(diversity_layer, "diversity_layer")
    call = check_call(call)
    img_hw, net_hw = _sizes(dnn, size)
    robust = _robustness(transforms, min(img_hw))
    if not hasattr(dnn.test_transform, "normalize"):
        raise TypeError(f"`dnn.test_transform` must be a dnnbrain ImageTransform (with "
                        f"normalize), got {type(dnn.test_transform).__name__}")
    work = _work_dnn(dnn, device)
    dev = work.device

    u = len(units)
    rows = [(j,) for _ in range(u) for j in range(n)]  # image j of every unit: same seeds
    rngs = [np.random.default_rng([seed, 1, j]) for (j,) in rows]
    image = FourierImage(FourierImage.init_spectra(img_hw, [(seed, 0, j) for (j,) in rows])
                         .to(dev), img_hw, decay)
    units = [v.to(dev) if isinstance(v, torch.Tensor) else v for v in units]
    objective = UnitPass(work, layer, units, n, reduce, call, diversity_layer)
    gray = getattr(work.test_transform, "channels", 3) == 1  # a grayscale network sees luma

    def normalize(px: torch.Tensor) -> torch.Tensor:
        return work.test_transform.normalize(luma(px) if gray else px)
    opt = torch.optim.Adam([image.spectra], lr=lr)
    trace = []
    log.info("visualise %s %s unit %r: %d image(s) x %d unit(s), %d steps on %s",
             dnn.name, layer, unit, n, u, steps, dev)
    with eval_mode(work.model):
        for _ in tqdm(range(steps), desc="visualise", unit="step", disable=not progress):
            with torch.enable_grad():
                x = normalize(robust.apply(image.pixels(), robust.draw(rngs), net_hw))
                scores, act = objective(x)
                loss = -scores.sum()
                if diversity > 0:
                    loss = loss + diversity * gram_similarity(act, u)
                (image.spectra.grad,) = torch.autograd.grad(loss, image.spectra)
            opt.step()
            trace.append(scores.detach())
        with torch.no_grad():
            pixels = image.pixels()
            final, _ = objective(normalize(resize_to(pixels, net_hw)))
    shape = (u, n) if many else (n,)
    if gray:  # shown as the network saw them
        pixels = luma(pixels).expand(-1, 3, -1, -1)
    images = pixels.permute(0, 2, 3, 1).to("cpu", torch.float32).numpy()
    return FeatureVis(images=images.reshape(shape + images.shape[1:]),
                      activation=final.to("cpu", torch.float32).numpy().reshape(shape),
                      trace=torch.stack(trace).to("cpu", torch.float32).numpy()
                      .reshape((steps,) + shape),
                      layer=layer, unit=unit, seed=seed)

