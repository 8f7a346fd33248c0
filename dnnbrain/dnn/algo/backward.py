"""The engine's gradient passes, for a saliency method (``method``, a
:class:`~dnnbrain.dnn.algo.engine.SaliencyImage`).

* :func:`unit_gradient`: the sequence itself for one chunk of rows -- hooks, forward
  stopped at the target layer, each row's unit picked, ``torch.autograd.grad`` w.r.t. the
  input or an inner layer's input or output, hooks removed
  (:meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.gradient`);
* :func:`stem_backward`: one backward through the network's affine stem, which turns a
  sum of gradients at the stem's output into the input gradient
  (:meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.stem_backward`).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional, Sequence, Tuple

import torch

from .forward import method_hooks, run_forward, target_output, to_layout
from .relu import relu_override
from .target import Unit, resolve_predicted, select


def unit_gradient(method: Any, x: torch.Tensor, units: Sequence[Unit],
                  to_layer: Optional[str] = None, relu_mode: Optional[str] = None,
                  at_output: Optional[str] = None, create_graph: bool = False,
                  weights: Optional[torch.Tensor] = None, keep_values: bool = True
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gradient of each row's unit w.r.t. the network input, ``to_layer``'s input, or
    ``at_output``'s output.

    Parameters
    ----------
    method : SaliencyImage
        Its network, target (layer, ``reduce``, ``call``) and :attr:`activations`; inside
        its ``clean_output()`` block the target output is recorded, and while a call
        resolves ``'predicted'`` units the units this pass picks.
    x : torch.Tensor
        ``(B, 3, H, W)`` network input on the model's device.
    units : sequence of units
        One per row (or one for all rows).
    to_layer : str or None
        Differentiate w.r.t. this layer's input (DNNBrain's ``to_layer``).
    relu_mode : None, 'guided' or 'deconv'
        ReLU backward rule; other elementwise activations follow ``method.activations``
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
            method.dnn.layer2module(layer, name)
    inner = to_layer is not None or at_output is not None
    tap = inner and not keep_values and not create_graph
    with method_hooks(method, to_layer, at_output, grad_from_leaf=inner, tap=tap, x=x) as cap, \
            torch.enable_grad():
        # with an inner leaf, nothing before it needs a graph: forward without one, the
        # leaf's hook switches recording on (no_grad's exit restores the mode)
        xg = to_layout(method, x.detach())
        xg = xg if inner else xg.requires_grad_(True)
        with relu_override(relu_mode, method.activations, method.dnn.model), \
                (torch.no_grad() if inner else nullcontext()):
            run_forward(method, xg)
        out = target_output(method, cap)
        if method._clean is not None:
            method._clean.saw(x, out)
        wrt = xg
        for key, name, what in (("input", to_layer, "`to_layer`"),
                                ("act", at_output, "`at_output`")):
            if name is not None:
                if key not in cap:
                    raise ValueError(f"{what} {name!r} does not run before the target "
                                     f"layer {method.layer!r}")
                wrt = cap[key]
        lay = method.target_layout(out, x)
        if method._picked is not None and any(isinstance(u, str) for u in units):
            method._picked.append(resolve_predicted(out.detach(), units, method.reduce, lay))
        score = select(out, units, method.layer, method.reduce, lay)
        if weights is not None:
            score = score * weights.to(score.dtype)
        (grad,) = torch.autograd.grad(score.sum(), wrt, create_graph=create_graph)
    if "sink" in cap:  # tapped: the gradient came through the sink
        grad = cap["sink"][0]
    return grad, (wrt.detach() if keep_values else None)


def stem_backward(method: Any, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Input gradient for a gradient ``grad`` at the output of ``method``'s network stem.

    The stem (``dnn.stem``) is affine, so its Jacobian is the same at every input: one
    backward at ``x`` serves a sum of gradients taken at any inputs,
    ``J^T sum_k g_k = sum_k J^T g_k``.

    Parameters
    ----------
    method : SaliencyImage
        Its network.
    x : torch.Tensor
        ``(B, 3, H, W)``: one row per row of ``grad``.
    grad : torch.Tensor
        ``(B, ...)`` gradients at the stem's output.

    Returns
    -------
    torch.Tensor
        ``(B, 3, H, W)`` input gradient.
    """
    with method_hooks(method, target=method.dnn.stem, x=x) as cap, torch.enable_grad():
        xg = to_layout(method, x.detach()).requires_grad_(True)
        run_forward(method, xg)
        (out,) = torch.autograd.grad(target_output(method, cap), xg, grad)
    return out
