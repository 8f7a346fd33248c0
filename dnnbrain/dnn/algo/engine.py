"""The saliency engine: one base class owns the whole sequence.

check the target -> images to network input -> rows (image x unit), chunked -> register
hooks -> forward, stopped at the target layer -> pick each row's unit -> gradient by
``torch.autograd.grad`` -> remove hooks -> one CPU numpy array.

A method is a small subclass that overrides :meth:`SaliencyImage._attribute` (or just
sets :attr:`SaliencyImage.relu_mode`), or a wrapper around :meth:`SaliencyImage.gradient`.
"""
from __future__ import annotations

import contextlib
from contextlib import nullcontext
import logging
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..base import to_input
from ..models import DNN
from ..tokens import TokenLayout, layout_of
from .calls import Call, CallCounts, call_index, check_call, count_calls
from .budget import Budget, RowCost, parse_budget, probe_row_bytes, rows_within
from .checks import SIGMA_MULTIPLIER, input_errors
from .clean import CleanOutput
from .forward import StopForward, eval_mode, pass_hooks
from .passes import smooth_maps
from .relu import relu_override
from .rows import run_rows
from .target import (LABEL, REDUCE, Unit, check_units, from_base, labels_to_units,
                     resolve_predicted, select, static_size)

log = logging.getLogger(__name__)


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
        if reduce not in REDUCE:
            hint = ("; 'maxabs' and 'sumabs' reduce a map's channels: "
                    "dnnbrain.viz.reduce_channels(maps, 'maxabs')"
                    if reduce in ("maxabs", "sumabs") else "")
            raise ValueError(f"`reduce` must be one of {list(REDUCE)} (how the unit's "
                             f"activation map becomes one number), got {reduce!r}{hint}")
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
        ``at_output``'s output.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, 3, H, W)`` network input on the model's device.
        units : sequence of units
            One per row (or one for all rows).
        to_layer : str or None
            Differentiate w.r.t. this layer's input (DNNBrain's ``to_layer``).
        relu_mode : None, 'guided' or 'deconv'
            ReLU backward rule; other elementwise activations follow :attr:`activations`
            (a ValueError naming them by default).
        at_output : str or None
            Differentiate w.r.t. this layer's output (CAM methods); not with ``to_layer``.
        create_graph : bool
            Keep the graph of the gradient (for second derivatives).
        weights : torch.Tensor or None
            ``(B,)`` factor on each row's score, hence on its gradient.
        keep_values : bool
            False: the caller needs the gradient only. With ``to_layer``/``at_output`` the
            model then continues on the layer's own tensor instead of a copy of it (an
            in-place layer after it may overwrite it), and ``wrt`` is None.

        Returns
        -------
        grad : torch.Tensor
            ``(B, ...)`` gradient, shaped like the tensor differentiated against.
        wrt : torch.Tensor or None
            That tensor (detached): the input, the layer input or the layer output.
        """
        if to_layer is not None and at_output is not None:
            raise ValueError("give `to_layer` or `at_output`, not both")
        for name, layer in (("to_layer", to_layer), ("at_output", at_output)):
            if layer is not None:
                self.dnn.layer2module(layer, name)
        inner = to_layer is not None or at_output is not None
        tap = inner and not keep_values and not create_graph
        with self._hooks(to_layer, at_output, grad_from_leaf=inner, tap=tap, x=x) as cap, \
                torch.enable_grad():
            # with an inner leaf, nothing before it needs a graph: forward without one, the
            # leaf's hook switches recording on (no_grad's exit restores the mode)
            xg = self._layout(x.detach())
            xg = xg if inner else xg.requires_grad_(True)
            with relu_override(relu_mode, self.activations, self.dnn.model), \
                    (torch.no_grad() if inner else nullcontext()):
                self._forward(xg)
            out = self._target_output(cap)
            if self._clean is not None:
                self._clean.saw(x, out)
            wrt = xg
            for key, name, what in (("input", to_layer, "`to_layer`"),
                                    ("act", at_output, "`at_output`")):
                if name is not None:
                    if key not in cap:
                        raise ValueError(f"{what} {name!r} does not run before the target "
                                         f"layer {self.layer!r}")
                    wrt = cap[key]
            lay = self.target_layout(out, x)
            if self._picked is not None and any(isinstance(u, str) for u in units):
                self._picked.append(resolve_predicted(out.detach(), units, self.reduce, lay))
            score = select(out, units, self.layer, self.reduce, lay)
            if weights is not None:
                score = score * weights.to(score.dtype)
            (grad,) = torch.autograd.grad(score.sum(), wrt, create_graph=create_graph)
        if "sink" in cap:  # tapped: the gradient came through the sink
            grad = cap["sink"][0]
        return grad, (wrt.detach() if keep_values else None)

    def summed_leaf(self) -> Optional[str]:
        """Where to differentiate when the input gradients of many inputs of one image
        are only summed (:func:`dnnbrain.dnn.algo.passes.gradient_sums`): the affine stem
        (``dnn.stem``) when the target runs after it, else None (the input itself). Sum
        the gradients there, then call :meth:`stem_backward` once per image."""
        return self.dnn.stem if self.layer is not None and \
            self.dnn.after_stem(self.layer) else None

    def stem_backward(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Input gradient ``(B, 3, H, W)`` for a gradient ``grad`` at the stem's output.

        The stem is affine, so its Jacobian is the same at every input: one backward at
        ``x`` (``(B, 3, H, W)``, one row per row of ``grad``) serves a sum of gradients
        taken at any inputs, ``J^T sum_k g_k = sum_k J^T g_k``.
        """
        with self._hooks(target=self.dnn.stem, x=x) as cap, torch.enable_grad():
            xg = self._layout(x.detach()).requires_grad_(True)
            self._forward(xg)
            (out,) = torch.autograd.grad(self._target_output(cap), xg, grad)
        return out

    def rows_per_pass(self, x: torch.Tensor, units: Sequence[Unit],
                      to_layer: Optional[str] = None, at_output: Optional[str] = None,
                      images: int = 0, keep_values: bool = True) -> int:
        """Rows per gradient pass: ``batch_size``, or with a ``memory_budget`` the most
        rows of ``x``'s shape that fit (at most ``batch_size`` when it was given).

        The cost of a row is measured once per input shape and leaf by a one-row probe
        (:func:`dnnbrain.dnn.algo.budget.probe_row_bytes`, with ``to_layer``,
        ``at_output`` and ``keep_values`` as in :meth:`gradient`). Six input-sized buffers
        per image of the pass's caller (``images``: path ends, sums) and four per map of
        the whole call (the maps, their concatenation and copies) are set aside first.
        """
        if self.memory_budget is None:
            return self.batch_size
        key = (tuple(x.shape[1:]), x.dtype, x.device, self.layer, self.call, self.reduce,
               to_layer, at_output, keep_values, self.relu_mode, self._memory_format(x))
        cost: Optional[RowCost] = self._costs.get(key)
        if cost is None:
            row, unit = x[:1], list(units[:1])
            cost = probe_row_bytes(
                self.dnn.model, lambda: self.gradient(row, unit, to_layer, self.relu_mode,
                                                      at_output, keep_values=keep_values)[0],
                row.numel() * row.element_size())
            self._costs[key] = cost
        fixed = (6 * images + 4 * self._outputs) * cost.input
        rows = rows_within(self.memory_budget, cost, fixed,
                           f"{type(self).__name__} at {self.layer!r}")
        return min(rows, self.batch_size) if self._capped else rows

    def activation(self, x: torch.Tensor, units: Sequence[Unit]) -> torch.Tensor:
        """Scores ``(B,)`` of each row's unit, without gradients (forward stops at the layer)."""
        with self._hooks(x=x) as cap, torch.no_grad():
            self._forward(x)
            out = self._target_output(cap)
            return select(out, units, self.layer, self.reduce, self.target_layout(out, x))

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
        if self.layer is not None and \
                self.dnn.layer2module(layer) is not self.dnn.layer2module(self.layer):
            with self._hooks(at_output=layer, x=x) as cap, torch.no_grad():
                self._forward(x)
                self._target_output(cap)
                if "act" not in cap:
                    raise ValueError(f"layer {layer!r} does not run before the target "
                                     f"layer {self.layer!r}")
                return cap["act"].detach()
        with self._hooks(target=layer, x=x) as cap, torch.no_grad():
            self._forward(x)
            if "output" not in cap:
                raise ValueError(f"layer {layer!r} did not run in the forward pass")
            return cap["output"]

    def fixed_units(self, x: torch.Tensor, units: Sequence[Unit]) -> List[Unit]:
        """``units`` with ``'predicted'`` replaced by each row's predicted unit for the clean
        input ``x``, so every perturbed copy or path point explains the same unit."""
        if not any(isinstance(u, str) for u in units):
            return list(units)
        out = self.layer_output(x, self.layer)
        if self._clean is not None:
            self._clean.saw(x, out)
        return resolve_predicted(out, units, self.reduce, self.target_layout(out, x))

    def check_input(self, shape: Tuple[int, ...]) -> None:
        """Check, before any work, that this method can run at its target on inputs of
        ``shape``: what needs the input size or the network's structure (an input the
        network cannot take, a ``call`` of the target that does not exist, a
        ``memory_budget`` too small for one row; per method a ``cam_layer`` after the
        target, an occlusion ``window`` larger than the image ...). Types and ranges are
        checked by the constructor already. The passes run it themselves (once per shape
        and target), by this same code; it costs at most a few one-row passes.

        Parameters
        ----------
        shape : tuple of int
            ``(3, H, W)``: one preprocessed network input.

        Raises
        ------
        ValueError
            Naming the parameter, its value and what would fit.
        """
        if not (isinstance(shape, tuple) and shape and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise ValueError(f"`shape` must be a tuple of positive ints (C, H, W), got "
                             f"{shape!r}")
        if self.layer is None:
            raise ValueError("no target: call set_layer(layer, unit) first")
        x = self._probe(shape)
        module = self.dnn.layer2module(self.layer)
        with eval_mode(self.dnn.model), self._input_errors(x):
            if isinstance(self.call, int) and self.call > 0:  # the explained call exists
                n = count_calls(module, lambda: self.dnn.model(self._layout(x)))
                call_index(self.call, n, self.layer)
            else:  # counts the calls where the choice needs it (kept for the passes)
                self._stop_call(module, x)
            if self.relu_mode is not None and self.activations == "relu":
                self._check_rule(x)
        if not self.shares_units:  # as _run: perturbation methods keep batch_size
            self._check_budget(x)

    def _check_rule(self, x: torch.Tensor) -> None:
        """One forward of the probe row ``x`` under :attr:`relu_mode`, up to the target:
        the ValueError naming any non-ReLU elementwise activation comes before any work
        (see :mod:`dnnbrain.dnn.algo.relu`)."""
        with self._hooks(x=x), torch.enable_grad():
            xg = self._layout(x.detach()).requires_grad_(True)
            with relu_override(self.relu_mode, self.activations, self.dnn.model):
                self._forward(xg)

    def _probe(self, shape: Tuple[int, ...]) -> torch.Tensor:
        """One blank input row ``(1, *shape)`` on the device, as the passes get it."""
        return torch.zeros((1,) + tuple(shape), device=self.dnn.device)

    def _check_budget(self, x: torch.Tensor, **kw: Any) -> None:
        """:meth:`rows_per_pass` for one row and one map (``kw`` as the pass calls it):
        ValueError when not even that fits in ``memory_budget``."""
        if self.memory_budget is not None:
            outputs, self._outputs = self._outputs, max(1, self._outputs)
            try:
                self.rows_per_pass(x, self.probe_units()[:1], **kw)
            finally:
                self._outputs = outputs

    def _check_once(self, shape: Tuple[int, ...]) -> None:
        key = (shape, self.layer, self.reduce, getattr(self, "call", None),
               tuple(repr(u) for u in self.units))
        if key not in self._checked:
            self.check_input(shape)
            self._checked.add(key)

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

    # ---------------------------------------------------------------- machinery
    def _target_output(self, cap: dict) -> torch.Tensor:
        if "output" not in cap:
            if cap.get("calls"):
                n = cap["calls"]
                raise ValueError(f"`call` {self.call} of layer {self.layer!r}: the layer runs "
                                 f"{n} time{'s' if n != 1 else ''} in one forward pass")
            raise ValueError(f"target layer {self.layer!r} did not run in the forward pass")
        return cap["output"]

    def _stop_call(self, module: nn.Module, x: Optional[torch.Tensor]) -> int:
        """The call of ``module`` the forward pass stops at (from 1): the explained call
        of the target layer's module (:class:`~dnnbrain.dnn.algo.calls.CallCounts`:
        counted once per input shape by a no-grad forward of one row of ``x`` where the
        choice needs it), else the first."""
        if self.layer is None or module is not self.dnn.layer2module(self.layer):
            return 1
        key = (self.layer,) if x is None else (
            self.layer, tuple(x.shape[1:]), x.dtype, x.device, self._memory_format(x))
        with self._input_errors(x):
            return self._calls.stop_at(self.call, self.layer, module, key,
                                       lambda: self.dnn.model(self._layout(x[:1].detach())),
                                       type(self).__name__)

    def _memory_format(self, x: torch.Tensor) -> Optional[torch.memory_format]:
        """``torch.channels_last`` when the passes run ``x`` channels-last (see
        :attr:`channels_last`), else None (``x`` keeps its layout)."""
        on = self.channels_last
        if on is None:
            on = self.dnn.channels_last and x.device.type == "cpu"
        return torch.channels_last if on and x.ndim == 4 else None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the layout the passes use (see :attr:`channels_last`)."""
        fmt = self._memory_format(x)
        return x if fmt is None else x.contiguous(memory_format=fmt)

    def _forward(self, x: torch.Tensor) -> None:
        """The model on ``x`` up to the target (see :meth:`_input_errors`)."""
        with self._input_errors(x):
            try:
                self.dnn.model(self._layout(x))
            except StopForward:
                pass

    def _input_errors(self, x: torch.Tensor):
        """Torch's complaints about an input the network cannot take become a ValueError
        naming `image` (:func:`dnnbrain.dnn.algo.checks.input_errors`)."""
        return input_errors(self.dnn, x)

    @contextlib.contextmanager
    def _hooks(self, to_layer: Optional[str] = None, at_output: Optional[str] = None,
               target: Optional[str] = None, grad_from_leaf: bool = False,
               tap: bool = False, x: Optional[torch.Tensor] = None) -> Iterator[dict]:
        """Eval mode and the hooks of one forward pass
        (:func:`~dnnbrain.dnn.algo.forward.pass_hooks`): capture ``target``'s output
        (default: the target layer) at its explained call (:meth:`_stop_call`; ``x``: the
        pass's input, for the call count) and stop there; capture ``to_layer``'s input or
        ``at_output``'s output at their most recent call before that as gradient leaves.
        Both last exactly as long as the ``with`` block."""
        target = target if target is not None else self.layer
        if target is None:
            raise ValueError("no target: call set_layer(layer, unit) first")
        inner = to_layer if to_layer is not None else at_output
        with eval_mode(self.dnn.model):
            module = self.dnn.layer2module(target)
            with pass_hooks(module, self._stop_call(module, x),
                            None if inner is None else self.dnn.layer2module(inner),
                            at_output, grad_from_leaf, tap) as cap:
                yield cap

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
