"""The target layer's output on a call's clean input, as the call's own passes computed it.

Many methods run the network on the unmodified input anyway: a plain gradient (vanilla,
guided, deconvnet), gradient x input and Grad-CAM / Grad-CAM++ run a forward pass of every
row of the call to the target layer; the other methods resolve ``'predicted'`` on the
clean rows first (SmoothGrad, Integrated Gradients, occlusion, Score-CAM, XRAI ...), so
they have the output where every chunk of rows holds a ``'predicted'`` unit (always when
it is the only unit).
:meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.clean_output` keeps that output for the
calls inside its ``with`` block, so a caller that also needs the units' activations on the
clean images (the batch runner's manifest, :mod:`dnnbrain.batch.unitstats`) need not run
the network again. Where some rows had no such pass (SmoothGrad's noisy copies, IG's path
points, occlusion's occluded copies, without ``'predicted'``) the output is None: nothing
is guessed from a perturbed input.

How it is recorded (:func:`~dnnbrain.dnn.algo.rows.run_rows`): before each chunk of rows
the recorder watches the chunk's clean rows, one tensor object; a forward pass of the
engine (:meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.gradient`,
:meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.fixed_units`) whose input *is* that
object reports its target output. A pass on anything else (a noisy copy, a path point, a
one-row probe) is a different tensor and is never taken.
"""
from __future__ import annotations

from typing import List, Optional

import torch


class CleanOutput:
    """What :meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.clean_output` yields.

    Attributes
    ----------
    output : torch.Tensor or None
        After a call inside the ``with`` block: the target layer's output at its explained
        call (see ``call`` of :meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.set_layer`)
        for each image of the call, ``(N, ...)``, detached, on the model's device, as the
        call's passes computed it (one row per image: the row of its first unit). None
        before a call, and after a call whose passes did not all run the clean input to
        the target layer (see the module's notes).
    """

    def __init__(self) -> None:
        self.output: Optional[torch.Tensor] = None
        self._rows: Optional[torch.Tensor] = None  # the chunk's clean rows, watched
        self._seen: Optional[torch.Tensor] = None  # their target output, once a pass ran
        self._parts: Optional[List[torch.Tensor]] = None  # per chunk; None: a chunk had none

    def start(self) -> None:
        """A call begins: forget the last call's output."""
        self.output, self._rows, self._seen, self._parts = None, None, None, []

    def watch(self, rows: torch.Tensor) -> None:
        """The next chunk's clean rows (the very tensor its passes get)."""
        self._rows, self._seen = rows, None

    def saw(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """A forward pass on ``x`` gave the target output ``out``; kept when ``x`` is the
        watched rows."""
        if self._rows is not None and x is self._rows and isinstance(out, torch.Tensor) \
                and len(out) == len(x):
            self._seen = out.detach()

    def chunk_done(self, keep: List[int]) -> None:
        """The chunk's passes are over: keep rows ``keep`` (its images' first units) of
        what they saw, or mark the call as incomplete."""
        if self._parts is not None and self._seen is not None:
            self._parts.append(self._seen[keep] if keep else self._seen[:0])
        else:
            self._parts = None
        self._rows, self._seen = None, None

    def finish(self) -> None:
        """The call's rows are all done: :attr:`output` from the chunks' parts."""
        parts = self._parts
        self.output = None if not parts else (torch.cat(parts) if len(parts) > 1
                                              else parts[0])
        self._rows, self._seen, self._parts = None, None, None
