"""What the manifest says about a stimulus batch: every target's unit activations, the
unit each map explains, and each stimulus's predicted class.

They come from the methods' own passes where those ran the clean stimuli to the target
layer (:meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.clean_output`: vanilla, guided,
deconvnet, gradient x input, Grad-CAM, Grad-CAM++, and any method whose only unit is
``'predicted'``): the activations from the target layer's output, the predicted class too
when that output *is* the network's output (the target is the output layer, at the call
the network returns). Whatever is still missing when an item's manifest rows are due
(a stochastic or perturbation method; the predicted class of a hidden-layer target) comes
from one forward pass of the whole network over the batch, with hooks, as before — at most
one per batch, shared by all its targets and methods. Values agree with that forward's to
float32 rounding (the same tensors, through the same code below).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..dnn.algo.calls import call_index
from ..dnn.algo.forward import eval_mode, input_layout
from ..dnn.algo.target import LABEL, predicted_units, select
from ..dnn.tokens import layout_of
from .plan import unit_text

#: A target's manifest figures: activations ``(N, U)`` and the unit each map explains.
Stats = Tuple[np.ndarray, List[List[str]]]


def unit_stats(dnn: Any, target: Mapping[str, Any], out: torch.Tensor, x: torch.Tensor,
               labels: Optional[List[int]]) -> Stats:
    """A target's activations ``(N, U)`` (float32) and explained units (text, per unit
    and stimulus) from its layer's output ``out`` ``(N, ...)`` for the batch ``x``."""
    layer = target["layer"]
    acts, actual = [], []
    lay = layout_of(dnn, layer, out, tuple(x.shape[-2:]))
    for u in target["units"]:
        uu = tuple(u) if isinstance(u, list) else u
        rows = labels if u == LABEL else [uu]
        acts.append(select(out, rows, layer, target["reduce"], lay))
        actual.append([str(v) for v in predicted_units(out, target["reduce"], lay)]
                      if u == "predicted" else [str(v) for v in labels]
                      if u == LABEL else [unit_text(u)] * len(out))
    return torch.stack(acts, 1).float().cpu().numpy(), actual


def _outputs(dnn: Any, layers: Sequence[str], x: torch.Tensor,
             seen: Callable[[str, torch.Tensor], Any]) -> Tuple[Any, Dict[str, list]]:
    """The whole network on ``x`` without gradients: its output (a tuple's first item)
    and, per call, ``seen(layer, output)`` of every tensor output of each of ``layers``,
    taken at once (a later in-place layer may overwrite the output)."""
    got: Dict[str, list] = {layer: [] for layer in layers}

    def hook(layer: str):
        def fn(module, inputs, out):
            if isinstance(out, torch.Tensor):
                got[layer].append(seen(layer, out))
        return fn

    handles = []
    try:
        with eval_mode(dnn.model), torch.no_grad():
            for layer in layers:
                handles.append(dnn.layer2module(layer).register_forward_hook(hook(layer)))
            logits = dnn.model(input_layout(dnn, x))  # the engine's layout
    finally:
        for h in handles:
            h.remove()
    return (logits[0] if isinstance(logits, (tuple, list)) else logits), got


def forward_stats(dnn: Any, targets: Sequence[Mapping[str, Any]], x: torch.Tensor,
                  labels: Optional[List[int]]) -> Tuple[List[int], Dict[int, Stats]]:
    """One forward pass of the whole network over a batch: each stimulus's predicted class
    (1-based) and every target's :func:`unit_stats` at its explained call."""
    def seen(layer: str, out: torch.Tensor) -> Dict[int, Stats]:
        return {t: unit_stats(dnn, tg, out, x, labels) for t, tg in enumerate(targets)
                if tg["layer"] == layer}

    logits, got = _outputs(dnn, list(dict.fromkeys(t["layer"] for t in targets)), x, seen)
    stats, missing = {}, []
    for t, tg in enumerate(targets):
        calls = got[tg["layer"]]
        if not calls:
            missing.append(f"targets[{t}] ({tg['layer']!r})")
            continue
        stats[t] = calls[call_index(tg.get("call"), len(calls), tg["layer"]) - 1][t]
    if missing:
        raise ValueError(f"{', '.join(missing)}: the layer did not run in the forward pass "
                         "or gave no tensor")
    return predicted_units(logits), stats


def ends_network(dnn: Any, target: Mapping[str, Any], x: torch.Tensor) -> bool:
    """Whether the target layer's output at its explained call is the network's output
    (the very tensor the model returns), by one no-grad forward pass of ``x[:1]``; False
    when the layer does not run or its call does not exist (the passes say why)."""
    logits, got = _outputs(dnn, [target["layer"]], x[:1], lambda layer, out: out)
    calls = got[target["layer"]]
    try:
        k = call_index(target.get("call"), len(calls), target["layer"]) if calls else 0
    except ValueError:
        return False
    return k > 0 and calls[k - 1] is logits


class BatchStats:
    """The manifest's figures for one stimulus batch, filled from the methods' passes
    where they give them, else by one :func:`forward_stats` (see the module's notes).

    Parameters
    ----------
    dnn : DNN
        The network.
    targets : sequence of dict
        The run's resolved ``targets``.
    x : torch.Tensor
        The batch's network input ``(B, 3, H, W)`` on the device.
    labels : list of int or None
        Each stimulus's unit ``'label'`` (1-based), where a target asks for it.
    ends : dict
        ``(target, input shape) -> bool`` (:func:`ends_network`), shared by a run's
        batches so the probe runs once per target and shape.

    Attributes
    ----------
    predicted : list of int or None
        Each stimulus's predicted class, once known.
    stats : dict
        ``target -> (activations, units)`` (:func:`unit_stats`), once known.
    forward_s : float
        Seconds spent in this batch's own forward pass and probes (0 without them).
    """

    def __init__(self, dnn: Any, targets: Sequence[Mapping[str, Any]], x: torch.Tensor,
                 labels: Optional[List[int]], ends: Dict[Tuple[int, tuple], bool]) -> None:
        self.dnn, self.targets, self.x, self.labels, self._ends = dnn, targets, x, labels, ends
        self.predicted: Optional[List[int]] = None
        self.stats: Dict[int, Stats] = {}
        self.forward_s = 0.0

    def ends(self, t: int) -> bool:
        """Whether target ``t``'s output is the network's (:func:`ends_network`, cached)."""
        key = (t, tuple(self.x.shape[1:]))
        if key not in self._ends:
            tic = time.perf_counter()
            self._ends[key] = ends_network(self.dnn, self.targets[t], self.x)
            self.forward_s += time.perf_counter() - tic
        return self._ends[key]

    def wants(self, t: int) -> bool:
        """Whether a method's clean output of target ``t`` would spare the forward pass:
        the target's figures are missing and, with it, nothing else would be (the
        predicted class is known, or the target's output gives it)."""
        return t not in self.stats and (self.predicted is not None or self.ends(t))

    def take(self, t: int, out: Optional[torch.Tensor]) -> None:
        """Target ``t``'s output on the batch from a method's passes (None: it had none)."""
        if out is None or len(out) != len(self.x):
            return
        if t not in self.stats:
            self.stats[t] = unit_stats(self.dnn, self.targets[t], out, self.x, self.labels)
        if self.predicted is None and self.ends(t):
            self.predicted = predicted_units(out)

    def of(self, t: int) -> Tuple[np.ndarray, List[List[str]], List[int]]:
        """Target ``t``'s activations and units and the predicted classes, after the
        forward pass if anything is missing (figures already taken are kept, so every
        item of a target shows the same numbers)."""
        if t not in self.stats or self.predicted is None:
            tic = time.perf_counter()
            predicted, stats = forward_stats(self.dnn, self.targets, self.x, self.labels)
            self.forward_s += time.perf_counter() - tic
            self.predicted = self.predicted if self.predicted is not None else predicted
            for k, v in stats.items():
                self.stats.setdefault(k, v)
        acts, actual = self.stats[t]
        return acts, actual, self.predicted
