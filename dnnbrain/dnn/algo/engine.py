"""The saliency engine: one base class owns the whole sequence.

check the target -> images to network input -> rows (image x unit), chunked -> register
hooks -> forward, stopped at the target layer -> pick each row's unit -> gradient by
``torch.autograd.grad`` -> remove hooks -> one CPU numpy array.

A method is a small subclass that overrides :meth:`SaliencyImage._attribute` (or just
sets :attr:`SaliencyImage.relu_mode`), or a wrapper around :meth:`SaliencyImage.gradient`.

The class holds the state and the calls; the steps are functions it passes itself to:
:mod:`~.prechecks` (checks, rows per pass), :mod:`~.forward` (hooks, layout, forward to the
target, no-grad passes), :mod:`~.backward` (gradients), :mod:`~.rows` (a call's rows).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..base import to_input
from ..models import DNN
from ..tokens import TokenLayout, layout_of
from . import backward, forward, prechecks
from .budget import Budget, parse_budget
from .calls import Call, CallCounts, check_call
from .checks import SIGMA_MULTIPLIER
from .clean import CleanOutput
from .forward import eval_mode
from .passes import smooth_maps
from .rows import run_rows
from .target import (LABEL, Unit, check_reduce, check_units, from_base, labels_to_units,
                     static_size)

__all__ = ["SaliencyImage", "eval_mode"]  # eval_mode: imported from here elsewhere


class SaliencyImage:
    """Base class of every saliency method: a map of which input pixels drive one unit.

    Parameters
    ----------
    dnn : DNN
        The network (see :mod:`dnnbrain.dnn.models`).
    from_layer : str or None
        Target layer; with ``from_chn`` the same as calling :meth:`set_layer`.
    from_chn : unit or list of units or None
        Target unit(s), counted from 1 (see :mod:`dnnbrain.dnn.algo.target`).
    batch_size : int or None
        Rows (image x unit x sample) per forward/backward pass; None: 32, or with a
        ``memory_budget`` as many as fit.
    memory_budget : int, str or None
        Bytes (or ``'512MiB'``, ``'2GB'`` ...) the gradient passes of one call may use
        beyond the model itself: rows per pass are then the most that fit (at most
        ``batch_size`` when it is given), estimated from what autograd saves for one row
        (see :mod:`dnnbrain.dnn.algo.budget`). Perturbation methods (occlusion,
        Score-CAM) keep ``batch_size``.

    Attributes
    ----------
    channels_last : bool or None
        Memory layout of 4-D inputs in the passes. None (default): channels-last on the
        CPU, where oneDNN's convolutions and pooling run 10-40 % faster on it, when the
        network accepts it (``dnn.channels_last``: the named networks do), else the
        input's layout; True or False forces it on any device. The model is not touched
        and maps come back in the usual layout; values agree to float32 rounding.
    resolved_units : list of list of units or None
        After a call (:meth:`backprop`, :meth:`backprop_smooth`), the unit each map
        explains: ``resolved_units[n][u]`` for image ``n`` and requested unit ``u``, the
        requested unit itself, except ``'predicted'``, replaced by the 1-based unit chosen
        for that image (on the clean input). None before the first call.

    Notes
    -----
    The model is used as it is: no hook survives a call (success or error), no module is
    swapped, and its train/eval flags, ``requires_grad`` and the input are left as they
    were. Maps are computed on the model's device in eval mode and returned as float32
    numpy on the CPU.
    """

    #: ReLU backward rule during the forward pass: None, ``'guided'`` or ``'deconv'``.
    relu_mode: Optional[str] = None
    #: Where the ReLU rule applies: ``'relu'`` (ReLUs only; any other elementwise
    #: activation in the forward pass is a ValueError) or ``'all'`` (the rule's
    #: generalisation at every elementwise activation, see :mod:`dnnbrain.dnn.algo.relu`).
    activations: str = "relu"
    #: Forward/backward rows one map costs (IG steps, occlusion windows ...); chunking uses it.
    rows_per_map: int = 1
    #: The method computes several units of one image from shared passes (perturbation
    #: methods): each call then gets whole images, all their units, one row per unit.
    shares_units: bool = False
    channels_last: Optional[bool] = None
    _clean: Optional[CleanOutput] = None  # the recorder of clean_output(), inside its block

    def __init__(self, dnn: DNN, from_layer: Optional[str] = None, from_chn: Any = None,
                 batch_size: Optional[int] = None, memory_budget: Budget = None) -> None:
        if not isinstance(dnn, DNN):
            raise TypeError(f"`dnn` must be a dnnbrain DNN (wrap a module with DNN(model)), "
                            f"got {type(dnn).__name__}")
        if batch_size is not None and (not isinstance(batch_size, int) or
                                       isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}")
        self.dnn = dnn
        self.batch_size = 32 if batch_size is None else batch_size
        self._capped = batch_size is not None
        self.memory_budget = parse_budget(memory_budget)
        self._costs: dict = {}
        self._checked: set = set()  # (input shape, target) pairs check_input passed
        self._outputs = 0  # maps the running call returns (memory budget)
        self.layer: Optional[str] = None
        self.units: List[Unit] = []
        self._many = False
        self.reduce = "mean"
        self.call: Call = None
        self._labels: Optional[List[int]] = None  # 1-based, for one call (labelled())
        self._calls = CallCounts()
        self.resolved_units: Optional[List[List[Unit]]] = None
        self._picked: Optional[List[List[Unit]]] = None  # 'predicted' as gradient() chose
        if from_layer is not None or from_chn is not None:
            self.set_layer(from_layer, from_chn)

    # ---------------------------------------------------------------- target
    def set_layer(self, layer: str, unit: Any, reduce: str = "mean",
                  call: Call = None, unit_base: int = 1) -> "SaliencyImage":
        """Aim at ``unit`` of ``layer``.

        Parameters
        ----------
        layer : str
            A name from ``dnn.layers`` or a dotted module path.
        unit : int, (int, int, int), 'predicted', 'label', callable, or a list of these
            Counted from ``unit_base`` (1). A list gives one map per unit along an extra
            axis. ``'label'``: each image's own class, from the labels of
            :meth:`labelled`.
        reduce : {'mean', 'max'}
            How a conv channel's map becomes one number.
        call : None, 'first', 'last' or int
            Which call is explained when the layer's module runs more than once in one
            forward pass: ``'first'``, ``'last'``, or the ``k``-th (from 1; ``-1`` is the
            last). None (default): the last, as captum does, with a one-time warning
            when the layer does run more than once (see :mod:`dnnbrain.dnn.algo.calls`).
        unit_base : {1, 0}
            How the numbers of ``unit`` count: 1 (default, as DNNBrain) or 0 (class
            indices from 0, as Slideflow and PyHealth). Stored 1-based:
            :meth:`get_layer` gives ``unit + 1`` for ``unit_base=0``.

        Returns
        -------
        SaliencyImage
            self, so calls chain.
        """
        module = self.dnn.layer2module(layer)
        check_reduce(reduce)
        call = check_call(call)
        self.units, self._many = check_units(from_base(unit, unit_base), static_size(module))
        self.layer, self.reduce, self.call = layer, reduce, call
        return self

    @contextlib.contextmanager
    def labelled(self, labels: Any, unit_base: int = 1) -> Iterator["SaliencyImage"]:
        """Each image's class for the calls inside the ``with`` block: the unit
        ``'label'`` then explains image ``i``'s ``labels[i]``.

        Parameters
        ----------
        labels : sequence, numpy.ndarray or torch.Tensor of int
            ``(N,)``: one label per image of each call inside the block.
        unit_base : {1, 0}
            How ``labels`` count: 1 (label ``k`` is unit ``k``) or 0 (class indices from
            0, e.g. a PyHealth or Slideflow batch: label ``k`` is unit ``k + 1``).

        Examples
        --------
        >>> m = VanillaSaliencyImage(dnn).set_layer('fc2', 'label')   # doctest: +SKIP
        >>> with m.labelled(batch['label'], unit_base=0):            # doctest: +SKIP
        ...     maps = m.backprop(batch['image'], preprocessed=True)
        """
        if self.layer is None:
            raise ValueError("no target: call set_layer(layer, unit) first")
        units = labels_to_units(labels, len(labels), unit_base,
                                static_size(self.dnn.layer2module(self.layer)))
        before, self._labels = self._labels, units
        try:
            yield self
        finally:
            self._labels = before

    @contextlib.contextmanager
    def clean_output(self) -> Iterator[CleanOutput]:
        """Keep, for the calls inside the ``with`` block, the target layer's output on
        the clean input where the call's own passes computed it (no extra pass; see
        :mod:`dnnbrain.dnn.algo.clean` for which methods do).

        Yields
        ------
        CleanOutput
            Its ``output`` after each call: ``(N, ...)`` on the device, or None.

        Examples
        --------
        >>> with m.clean_output() as clean:                          # doctest: +SKIP
        ...     maps = m.backprop(x, preprocessed=True)
        >>> acts = clean.output      # the target layer's output for x, or None
        """
        before, self._clean = self._clean, CleanOutput()
        try:
            yield self._clean
        finally:
            self._clean = before

    def probe_units(self) -> List[Unit]:
        """The target units with ``'label'`` as unit 1: for checks and probes whose cost
        or validity does not depend on which class is explained."""
        return [1 if isinstance(u, str) and u == LABEL else u for u in self.units]

    def get_layer(self) -> Tuple[Optional[str], Any]:
        """The target as ``(layer, unit)`` (unit as given: one, or a list)."""
        return self.layer, (list(self.units) if self._many else
                            (self.units[0] if self.units else None))

    # ---------------------------------------------------------------- public API
    def backprop(self, image: Any, to_layer: Optional[str] = None,
                 preprocessed: bool = False) -> np.ndarray:
        """Saliency of the target unit(s) for one image or a batch.

        Parameters
        ----------
        image : image, list of images, (N, ...) array/tensor, or Stimulus
            PIL image, path, or pixels (HWC/CHW, uint8 0..255 or float 0..1); all go
            through ``dnn.test_transform``.
        to_layer : str or None
            Return the map at this layer's input instead of the image (gradient methods).
        preprocessed : bool
            ``image`` is already ``test_transform`` output, ``(N, 3, H, W)`` or
            ``(3, H, W)``: used as it is, so large batches skip PIL.

        Returns
        -------
        numpy.ndarray, float32
            ``(3, H, W)`` for one image and one unit (gradient methods; map-valued methods
            such as Grad-CAM give ``(H, W)``); a batch adds a leading ``N`` axis, a unit list
            a ``U`` axis after it: ``(N, U, ...)``.
        """
        x, batch = self._prepare(image, preprocessed)
        out = self._run(x, lambda xb, ub: self._attribute(xb, ub, to_layer))
        return self._shape(out, batch)

    def backprop_smooth(self, image: Any, n_iter: int = 25,
                        sigma_multiplier: float = SIGMA_MULTIPLIER,
                        to_layer: Optional[str] = None, seed: Optional[int] = None,
                        mode: str = "mean", preprocessed: bool = False) -> np.ndarray:
        """SmoothGrad (Smilkov et al., 2017): average this method's map over noisy copies.

        Parameters
        ----------
        n_iter : int
            Noisy samples per image.
        sigma_multiplier : float
            Noise standard deviation as a fraction of ``max - min`` of each preprocessed image
            (default 0.1, DNNBrain's; the same default as :class:`SmoothGrad`).
        seed : int or None
            Noise seed: same seed, same map. The noise is added to a copy; the input is
            never changed.
        mode : {'mean', 'squared', 'vargrad'}
            Mean of the maps, mean of their squares (PAIR's ``magnitude=True``), or their
            variance (VarGrad, Adebayo et al., 2018).

        Returns
        -------
        numpy.ndarray
            Same shape as :meth:`backprop`.
        """
        return smooth_maps(self, image, n_iter, sigma_multiplier, to_layer, seed, mode,
                           preprocessed)

    def gradient(self, x: torch.Tensor, units: Sequence[Unit],
                 to_layer: Optional[str] = None, relu_mode: Optional[str] = None,
                 at_output: Optional[str] = None, create_graph: bool = False,
                 weights: Optional[torch.Tensor] = None, keep_values: bool = True
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Gradient of each row's unit w.r.t. the network input, ``to_layer``'s input, or
        ``at_output``'s output: ``(grad, wrt)`` for ``x`` ``(B, 3, H, W)`` on the device
        (parameters: :func:`dnnbrain.dnn.algo.backward.unit_gradient`)."""
        return backward.unit_gradient(self, x, units, to_layer, relu_mode, at_output,
                                      create_graph, weights, keep_values)

    def summed_leaf(self) -> Optional[str]:
        """Where to differentiate when the input gradients of many inputs of one image
        are only summed (:func:`dnnbrain.dnn.algo.passes.gradient_sums`): the affine stem
        (``dnn.stem``) when the target runs after it, else None (the input itself). Sum
        the gradients there, then call :meth:`stem_backward` once per image."""
        return self.dnn.stem if self.layer is not None and \
            self.dnn.after_stem(self.layer) else None

    def stem_backward(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Input gradient ``(B, 3, H, W)`` for a gradient ``grad`` at the stem's output,
        by one backward at ``x`` (:func:`dnnbrain.dnn.algo.backward.stem_backward`)."""
        return backward.stem_backward(self, x, grad)

    def rows_per_pass(self, x: torch.Tensor, units: Sequence[Unit],
                      to_layer: Optional[str] = None, at_output: Optional[str] = None,
                      images: int = 0, keep_values: bool = True) -> int:
        """Rows per gradient pass: ``batch_size``, or with a ``memory_budget`` the most
        rows of ``x``'s shape that fit (:func:`dnnbrain.dnn.algo.prechecks.rows_per_pass`)."""
        return prechecks.rows_per_pass(self, x, units, to_layer, at_output, images,
                                       keep_values)

    def activation(self, x: torch.Tensor, units: Sequence[Unit]) -> torch.Tensor:
        """Scores ``(B,)`` of each row's unit, without gradients (forward stops at the layer)."""
        return forward.unit_scores(self, x, units)

    def target_layout(self, out: torch.Tensor, x: torch.Tensor) -> Optional[TokenLayout]:
        """Token layout of the target layer's output ``out`` for the input ``x``
        (``(B, 3, H, W)``), or None for an ordinary ``(B, C, ...)`` output
        (:func:`dnnbrain.dnn.tokens.layout_of`)."""
        return layout_of(self.dnn, self.layer, out, tuple(x.shape[-2:]))

    def layer_output(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Output of any ``layer`` for ``x``, without gradients: ``(B, C, ...)`` on the
        device. The target layer's is its explained call (:meth:`set_layer`), where the
        pass stops; another's is its latest call before that (as ``at_output``), or
        without a target its first."""
        return forward.layer_output(self, x, layer)

    def fixed_units(self, x: torch.Tensor, units: Sequence[Unit]) -> List[Unit]:
        """``units`` with ``'predicted'`` replaced by each row's predicted unit for the clean
        input ``x``, so every perturbed copy or path point explains the same unit."""
        return forward.fixed_units(self, x, units)

    # ---------------------------------------------------------------- checks (prechecks)
    def check_input(self, shape: Tuple[int, ...]) -> None:
        """Check, before any work, that this method can run at its target on inputs of
        ``shape``: what needs the input size or the network's structure (an input the
        network cannot take, a ``call`` of the target that does not exist, a
        ``memory_budget`` too small for one row; per method a ``cam_layer`` after the
        target, an occlusion ``window`` larger than the image ...). Types and ranges are
        checked by the constructor already. The passes run it themselves (once per shape
        and target), by this same code; it costs at most a few one-row passes
        (:func:`dnnbrain.dnn.algo.prechecks.check_input`).

        Parameters
        ----------
        shape : tuple of int
            ``(3, H, W)``: one preprocessed network input.

        Raises
        ------
        ValueError
            Naming the parameter, its value and what would fit.
        """
        prechecks.check_input(self, shape)

    def _probe(self, shape: Tuple[int, ...]) -> torch.Tensor:
        return prechecks.probe_input(self, shape)

    def _check_budget(self, x: torch.Tensor, **kw: Any) -> None:
        prechecks.check_budget(self, x, **kw)

    def _check_once(self, shape: Tuple[int, ...]) -> None:
        prechecks.check_once(self, shape)

    @property
    def plain_gradient(self) -> bool:
        """True when this method's map is the gradient under :attr:`relu_mode` (it does
        not override :meth:`_attribute`)."""
        return type(self)._attribute is SaliencyImage._attribute

    # ---------------------------------------------------------------- for subclasses
    def _attribute(self, x: torch.Tensor, units: List[Unit],
                   to_layer: Optional[str]) -> torch.Tensor:
        """Map for each row of ``x`` (``(B, 3, H, W)`` on the device); override in methods."""
        grad, _ = self.gradient(x, units, to_layer, self.relu_mode)
        return grad

    # ---------------------------------------------------------------- one pass (forward)
    def _target_output(self, cap: dict) -> torch.Tensor:
        return forward.target_output(self, cap)

    def _memory_format(self, x: torch.Tensor) -> Optional[torch.memory_format]:
        return forward.memory_format(self, x)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return forward.to_layout(self, x)

    def _forward(self, x: torch.Tensor) -> None:
        forward.run_forward(self, x)

    def _hooks(self, to_layer: Optional[str] = None, at_output: Optional[str] = None,
               target: Optional[str] = None, grad_from_leaf: bool = False, tap: bool = False,
               x: Optional[torch.Tensor] = None) -> ContextManager[dict]:
        return forward.method_hooks(self, to_layer, at_output, target, grad_from_leaf, tap, x)

    # ---------------------------------------------------------------- a call's rows
    def _prepare(self, image: Any, preprocessed: bool) -> Tuple[torch.Tensor, bool]:
        if self.layer is None:
            raise ValueError("no target: call set_layer(layer, unit) first")
        x, batch = to_input(image, self.dnn.test_transform, preprocessed)
        return x.to(self.dnn.device), batch

    def _run(self, x: torch.Tensor, fn, rows_factor: int = 1,
             net_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``fn(x_rows, unit_rows)`` over all (image, unit) rows in chunks, ``(N, U, ...)``
        on the device (:func:`dnnbrain.dnn.algo.rows.run_rows`)."""
        return run_rows(self, x, fn, rows_factor, net_input)

    def _shape(self, out: torch.Tensor, batch: bool) -> np.ndarray:
        if not self._many:
            out = out[:, 0]
        if not batch:
            out = out[0]
        return out.detach().to("cpu", torch.float32).contiguous().numpy()
