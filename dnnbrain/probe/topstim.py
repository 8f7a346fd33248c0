"""Top (and bottom) stimuli per unit over a stimulus set of any size, streaming.

>>> from dnnbrain.dnn.models import ShapeNet
>>> from dnnbrain.io.stim import demo_stimulus_file
>>> from dnnbrain.probe.topstim import top_stimuli
>>> top = top_stimuli(ShapeNet(), demo_stimulus_file(), 'conv4', units=[1, 2], k=3)
>>> top.top.index.shape, top.top.location.shape           # (units, k), (units, k, 2)
((2, 3), (2, 3, 2))

The stimuli stream through :func:`dnnbrain.probe.activations.iter_activations` (one
no-grad forward per batch, stopped after the layer). Each batch's unit values are merged
into a running best-``k`` per unit kept on the device (:class:`RunningTopK`): memory is
``units x k`` (plus one batch), never proportional to the number of stimuli.

* A channel of a conv map (or of a token layer's patch grid) is reduced over space by its
  ``'max'`` (DNNBrain's default for top stimuli) or ``'mean'``; the location
  ``(row, col)`` of its maximum (from 1, the first in row-major order where torch reports
  it so) is kept with each selected stimulus, for either reduction.
* A spatial unit ``(c, row, col)`` (from 1) and a unit of a vector layer (fc) are their
  own value.
* Order: descending values for the top, ascending for the bottom; equal values are ordered
  by stimulus order (the lower index first), exactly as a stable full sort of every
  stimulus' value would order them. NaN values rank last.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch

from ..dnn.algo.target import check_reduce, reduce_channels
from ..io.stim import Stimulus
from .activations import DEFAULT_BATCH_SIZE, Extraction

__all__ = ["RunningTopK", "Ranking", "TopStimuli", "top_stimuli", "selection_table"]


class RunningTopK:
    """The running best ``k`` values of ``n_units`` units, updated batch by batch.

    State: ``values`` ``(U, <=k)``, ``index`` ``(U, <=k)`` int64 (stimulus rows, from 0)
    and ``location`` ``(U, <=k, 2)`` int64 (or None), on the device of the first batch;
    their size never exceeds ``U x k`` whatever the number of batches.

    Parameters
    ----------
    k : int
        How many to keep per unit.
    largest : bool
        True: the largest values (top); False: the smallest (bottom).
    """

    def __init__(self, k: int, largest: bool = True) -> None:
        self.k, self.largest = int(k), bool(largest)
        self.values: Optional[torch.Tensor] = None
        self.index: Optional[torch.Tensor] = None
        self.location: Optional[torch.Tensor] = None

    def update(self, values: torch.Tensor, start: int,
               location: Optional[torch.Tensor] = None) -> None:
        """Merge one batch: ``values`` ``(B, U)`` of stimuli ``start .. start + B - 1``,
        ``location`` ``(B, U, 2)`` or None.

        The kept entries (earlier stimuli) come first and are themselves in rank order
        with ties by index, so a *stable* sort of the concatenation breaks every tie by
        stimulus order (``torch.topk`` does not promise which of equal values it keeps).
        """
        b, u = values.shape
        v = values.t()
        idx = torch.arange(start, start + b, device=v.device).expand(u, b)
        loc = None if location is None else location.transpose(0, 1)
        if self.values is not None:
            v = torch.cat([self.values, v], 1)
            idx = torch.cat([self.index, idx], 1)
            if loc is not None:
                loc = torch.cat([self.location, loc], 1)
        key = torch.nan_to_num(v, nan=-float("inf") if self.largest else float("inf"))
        order = torch.sort(key, dim=1, descending=self.largest, stable=True).indices
        order = order[:, :self.k]
        self.values, self.index = v.gather(1, order), idx.gather(1, order)
        if loc is not None:
            self.location = loc.gather(1, order[..., None].expand(-1, -1, 2))


@dataclass(frozen=True)
class Ranking:
    """The selected stimuli of every unit, best first.

    Attributes
    ----------
    index : numpy.ndarray
        ``(U, k)`` int64 stimulus rows (from 0, in the stimulus set's order).
    value : numpy.ndarray
        ``(U, k)`` float32 unit values.
    location : numpy.ndarray or None
        ``(U, k, 2)`` int64 ``(row, col)`` of the channel's maximum, counted from 1; for
        a spatial unit its own position; None for a vector layer.
    """

    index: np.ndarray
    value: np.ndarray
    location: Optional[np.ndarray]


@dataclass(frozen=True)
class TopStimuli:
    """The result of :func:`top_stimuli`.

    Attributes
    ----------
    layer : str
        The layer as given.
    units : list
        The units (channel ints or ``(c, row, col)`` tuples, from 1), one per row of the
        rankings.
    k : int
    reduce : str
        ``'max'`` or ``'mean'`` (over space, for channels of a map).
    ids : list of str
        The stimulus ids of the whole set, in order (:attr:`Ranking.index` indexes them).
    top : Ranking
    bottom : Ranking or None
        Present when asked for (``bottom=True``).
    values : numpy.ndarray or None
        ``(U, N)`` float32: every stimulus' value of every unit, in stimulus order, when
        asked for (``keep_values=True``; memory ``U x N``), else None.
    """

    layer: str
    units: List[Any]
    k: int
    reduce: str
    ids: List[str]
    top: Ranking
    bottom: Optional[Ranking] = None
    values: Optional[np.ndarray] = None

    def ranking(self, which: str = "top") -> Ranking:
        """The ranking ``which`` (``'top'`` or ``'bottom'``); ValueError for another name
        or for ``'bottom'`` when it was not asked for."""
        if which not in ("top", "bottom"):
            raise ValueError(f"`which` must be 'top' or 'bottom', got {which!r}")
        ranking = self.top if which == "top" else self.bottom
        if ranking is None:
            raise ValueError("`which` 'bottom': no bottom ranking; pass bottom=True to "
                             "top_stimuli")
        return ranking

    def selected_ids(self, unit: int = 0, which: str = "top") -> List[str]:
        """Stimulus ids of row ``unit`` (from 0) of ranking ``which``, best first."""
        return [self.ids[i] for i in self.ranking(which).index[unit]]


def _values(act: torch.Tensor, reduce: str, spatial: bool) -> tuple:
    """``(B, U, ...)`` activations -> ``(B, U)`` values and ``(B, U, 2)`` locations (from
    1) or None."""
    if spatial or act.ndim == 2:
        return act, None
    if act.ndim != 4:
        return reduce_channels(act, reduce), None
    w = act.shape[-1]
    peak, where = act.flatten(2).max(-1)
    loc = torch.stack([where // w + 1, where % w + 1], -1)
    return (peak if reduce == "max" else reduce_channels(act, reduce)), loc


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"`k` must be an int in 1..{n} (the number of stimuli), got {k!r}")
    return int(k)


def top_stimuli(dnn: Any, stimuli: Any, layer: str,
                units: Union[None, Sequence[Any]] = None, k: int = 10,
                reduce: str = "max", bottom: bool = False,
                batch_size: int = DEFAULT_BATCH_SIZE, device: Any = None,
                preprocessed: bool = False, progress: bool = False,
                keep_values: bool = False) -> TopStimuli:
    """The ``k`` stimuli that drive each unit most (and, with ``bottom``, least).

    Parameters
    ----------
    dnn : dnnbrain.dnn.models.DNN
        The network; used as it is (no hook outlives the call, modes unchanged).
    stimuli : Stimulus, str, os.PathLike, list of images, or (N, 3, H, W) array/tensor
        Any stimulus set :func:`dnnbrain.probe.activations.activations` takes.
    layer : str
        Layer name or dotted path, optionally ``@<call>``.
    units : None or list
        None: every channel of the layer. Channel ints (from 1), or spatial units
        ``(c, row, col)`` (from 1).
    k : int
        Stimuli per unit, at most the number of stimuli.
    reduce : {'max', 'mean'}
        A channel of a map over space.
    bottom : bool
        Also the ``k`` stimuli with the smallest values (ascending).
    batch_size : int
        Stimuli per forward pass.
    device : str, torch.device or None
        Where the passes (and the running top-k) run; None: the model's device.
    preprocessed : bool
        ``stimuli`` is an ``(N, 3, H, W)`` tensor of network input.
    progress : bool
        Show a progress bar.
    keep_values : bool
        Also return every stimulus' value of every unit (:attr:`TopStimuli.values`,
        ``(U, N)``): the response distributions, from the same pass.

    Returns
    -------
    TopStimuli

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        Naming the bad parameter, its value and the valid choices.
    """
    check_reduce(reduce)
    if not isinstance(bottom, (bool, np.bool_)):
        raise TypeError(f"`bottom` must be True or False, got {bottom!r}")
    if not isinstance(keep_values, (bool, np.bool_)):
        raise TypeError(f"`keep_values` must be True or False, got {keep_values!r}")
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be one layer name (a str), got {layer!r}")
    ext = Extraction(dnn, stimuli, [layer], "none", units, batch_size, device, preprocessed)
    k = _check_k(k, ext.n)
    spec = ext.specs[0]
    best = RunningTopK(k, largest=True)
    worst = RunningTopK(k, largest=False) if bottom else None
    n_units = 0
    kept: List[torch.Tensor] = []  # on the device: one copy to the CPU at the end
    for start, acts in ext.stream(progress=progress):
        vals, loc = _values(acts[spec.key], reduce, spec.spatial)
        n_units = vals.shape[1]
        if keep_values:
            kept.append(vals.float())
        best.update(vals, start, loc)
        if worst is not None:
            worst.update(vals, start, loc)
    unit_list = list(spec.units) if spec.units is not None else list(range(1, n_units + 1))

    def finish(state: RunningTopK) -> Ranking:
        loc = None if state.location is None else state.location.cpu().numpy()
        if spec.spatial:
            pos = np.array([[u[1], u[2]] for u in unit_list], dtype=np.int64)
            loc = np.repeat(pos[:, None], k, 1)
        return Ranking(state.index.cpu().numpy().astype(np.int64),
                       state.values.float().cpu().numpy(), loc)

    return TopStimuli(layer, unit_list, k, reduce, list(ext.source.ids), finish(best),
                      finish(worst) if worst is not None else None,
                      torch.cat(kept).t().contiguous().cpu().numpy() if keep_values else None)


def selection_table(stim: Stimulus, result: TopStimuli, unit: int,
                    which: str = "top") -> Stimulus:
    """The selected rows of ``stim`` for row ``unit`` (from 0) of ``result``'s ranking
    ``which``, best first, as a stimulus table (DNNBrain's ``.stim.csv``): every column of
    ``stim`` plus ``value`` (float64) and, for a channel of a map, the ``row``/``col`` of
    its maximum (from 1)."""
    ranking = result.ranking(which)
    sub = stim[ranking.index[unit]]
    data = {k: v for k, v in sub.data.items() if k not in ("value", "row", "col")}
    data["value"] = ranking.value[unit].astype(np.float64)
    if ranking.location is not None:
        data["row"] = ranking.location[unit, :, 0]
        data["col"] = ranking.location[unit, :, 1]
    return Stimulus(data, path=sub.root, type=sub.header["type"],
                    title=sub.header.get("title", ""))
