"""Target scores for the faithfulness metrics: one callable from a method, a network or a
plain function, evaluated in batches without gradients."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..dnn.algo.engine import SaliencyImage, eval_mode
from ..dnn.algo.target import Unit, check_unit, predicted_units, static_size
from ..dnn.models import DNN

__all__ = ["Scorer", "make_scorer", "score_rows"]

#: ``f(x (B, 3, H, W) on the device, image index of each row (B,)) -> (B,) scores``.
Scorer = Callable[[torch.Tensor, np.ndarray], torch.Tensor]


def _as_method(model: Any) -> Optional[SaliencyImage]:
    if isinstance(model, SaliencyImage):
        return model
    inner = getattr(model, "method", None)  # SmoothGrad and other wrappers
    return inner if isinstance(inner, SaliencyImage) else None


def _unit_list(units: Any, n: int, n_units: int) -> Optional[List[Unit]]:
    if units is None:
        return None
    if isinstance(units, (list, range, np.ndarray, torch.Tensor)):
        seq = list(units.tolist() if hasattr(units, "tolist") else units)
    else:
        seq = [units]
    if len(seq) == 1:
        seq = seq * n
    if len(seq) != n:
        raise ValueError(f"`units` must give one unit per image ({n}) or a single unit, got "
                         f"{len(seq)}")
    return [check_unit(u, n_units, f"units[{i}]") for i, u in enumerate(seq)]


def _pick(out: torch.Tensor, units: Sequence[Unit], softmax: bool) -> torch.Tensor:
    """Column ``unit - 1`` of each row of a ``(B, C)`` output (softmax first if asked)."""
    if out.ndim != 2:
        raise ValueError(f"`softmax=True` needs a (B, C) output layer, got "
                         f"{tuple(out.shape)}")
    if not all(isinstance(u, int) for u in units):
        raise ValueError(f"`units` must be ints (from 1) for a (B, C) output, got {units!r}")
    if max(units) > out.shape[1]:
        raise ValueError(f"`units` must be in 1..{out.shape[1]}, got {max(units)}")
    cols = torch.tensor([u - 1 for u in units], device=out.device)
    if softmax:
        out = torch.softmax(out, dim=1)
    return out.gather(1, cols[:, None])[:, 0]


def _device(model: Any, x: torch.Tensor) -> torch.device:
    if isinstance(model, DNN):
        return model.device
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
    return x.device


def make_scorer(model: Any, images: torch.Tensor, units: Any = None,
                softmax: bool = False) -> Tuple[Scorer, torch.device]:
    """Build the score of each image's target.

    Parameters
    ----------
    model : SaliencyImage, DNN, torch.nn.Module or callable
        * a :class:`~dnnbrain.dnn.algo.engine.SaliencyImage` (or a wrapper such as
          SmoothGrad) whose target is set: the score is its unit of its layer
          (``method.activation``: the forward pass stops at that layer);
        * a :class:`~dnnbrain.dnn.models.DNN` or ``nn.Module``: its output ``(B, C)``,
          column ``unit - 1`` (``units`` required);
        * any callable ``f(x: (B, 3, H, W)) -> (B,)`` (or ``(B, C)`` with ``units``).
    images : torch.Tensor
        ``(N, 3, H, W)`` unperturbed network input; ``'predicted'`` units are resolved on
        it once, so perturbed images keep the class predicted for the original.
    units : unit, list of units (one per image), or None
        Counted from 1; a tuple is one spatial unit ``(c, row, col)``, a list (or array)
        one unit per image. None: the method's own unit (it must have one only).
    softmax : bool
        Score the softmax probability of the unit over a ``(B, C)`` output (RISE scores
        probabilities) instead of the raw value.

    Returns
    -------
    scorer : callable
        ``scorer(x, rows) -> (B,)`` tensor on the device, without gradients; ``rows`` are
        the image indices (int numpy array) of the rows of ``x``.
    device : torch.device
        Where ``x`` must be.

    Raises
    ------
    ValueError
        If the method has no target, units are missing/ill-formed, or ``softmax`` is asked
        of a score that has no class axis.
    """
    n = len(images)
    method = _as_method(model)
    if method is not None:
        if method.layer is None:
            raise ValueError("`model` is a saliency method without a target: call "
                             "set_layer(layer, unit) first")
        size = static_size(method.dnn.layer2module(method.layer))
        ulist = _unit_list(units, n, size)
        if ulist is None:
            if len(method.units) != 1:
                raise ValueError(f"`units` is needed: the method targets {len(method.units)}"
                                 " units; give one per image")
            ulist = list(method.units) * n
        dev = method.dnn.device
        if softmax or any(u == "predicted" for u in ulist if isinstance(u, str)):
            with torch.no_grad():
                outs = [method.layer_output(images[i:i + 64].to(dev), method.layer)
                        for i in range(0, n, 64)]
            out = torch.cat(outs)
            pred = predicted_units(out, method.reduce, method.target_layout(out, images[:1]))
            ulist = [pred[i] if isinstance(u, str) else u for i, u in enumerate(ulist)]
        if softmax:
            def score(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
                out = method.layer_output(x, method.layer)
                return _pick(out, [ulist[int(r)] for r in rows], True)
        else:
            def score(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
                return method.activation(x, [ulist[int(r)] for r in rows])
        return score, dev

    if not callable(model):
        raise TypeError(f"`model` must be a SaliencyImage, a DNN, an nn.Module or a callable,"
                        f" got {type(model).__name__}")
    module = model.model if isinstance(model, DNN) else (
        model if isinstance(model, nn.Module) else None)
    ulist = _unit_list(units, n, 0)
    dev = _device(model, images)

    def score(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        ctx = eval_mode(module) if module is not None else contextlib.nullcontext()
        with ctx, torch.no_grad():
            out = model(x)
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"`model` must return a tensor, got {type(out).__name__}")
        if out.ndim == 1 and ulist is None and not softmax:
            if out.shape[0] != x.shape[0]:
                raise ValueError(f"`model` must return ({x.shape[0]},) scores, got "
                                 f"{tuple(out.shape)}")
            return out
        if out.ndim != 2:
            raise ValueError("`model` must return (B,) scores, or (B, C) outputs with "
                             f"`units`; got {tuple(out.shape)}")
        if ulist is None:
            raise ValueError("`units` is needed to pick a score from the (B, C) output")
        if any(isinstance(u, str) for u in ulist):
            raise ValueError("`units` 'predicted' needs a saliency method as `model`")
        return _pick(out, [ulist[int(r)] for r in rows], softmax)
    return score, dev


def score_rows(scorer: Scorer, make_batch: Callable[[int, int], Tuple[torch.Tensor,
                                                                      np.ndarray]],
               n_rows: int, batch_size: int, desc: str = "scoring") -> np.ndarray:
    """Evaluate ``scorer`` on ``n_rows`` perturbed images, ``batch_size`` at a time.

    ``make_batch(start, stop)`` returns the images of rows ``start:stop`` (on the device)
    and their image indices. Scores stay on the device until one final copy.

    Returns
    -------
    numpy.ndarray
        ``(n_rows,)`` float64.
    """
    outs = []
    with torch.no_grad():
        for start in tqdm(range(0, n_rows, batch_size), desc=desc, leave=False,
                          disable=None):
            xb, rows = make_batch(start, min(start + batch_size, n_rows))
            out = scorer(xb, rows)
            if out.shape != (len(xb),):
                raise ValueError(f"the score must be ({len(xb)},), got {tuple(out.shape)}")
            outs.append(out.detach())
    return torch.cat(outs).to("cpu", torch.float64).numpy()


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int, or ValueError naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    return int(batch_size)
