"""Activations of many layers for many stimuli: one forward pass per batch.

>>> from dnnbrain.dnn.models import ShapeNet
>>> from dnnbrain.io.stim import demo_stimulus_file
>>> from dnnbrain.probe.activations import activations
>>> act = activations(ShapeNet(), demo_stimulus_file(), ['conv2', 'fc1'], pool='mean')
>>> act['conv2'].shape, act['fc1'].shape                  # doctest: +SKIP
((12, 32), (12, 64))

Every batch runs the network once, in eval mode and without gradients, and the pass stops
right after the deepest requested layer (:mod:`dnnbrain.probe.taps`). Small sets come back
in memory as float32 numpy arrays; with ``out=`` the rows stream into one ``.npy`` file
per layer opened as a memory map, with a manifest, resumable after a kill and shardable
over processes (:mod:`dnnbrain.probe.actstore`). :func:`iter_activations` is the stream
itself, for probes that reduce over the stimuli as they go (top-k) and keep nothing else.
"""
from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..dnn.models import DNN
from .actsource import Source, as_source
from .taps import POOLS, LayerSpec, Taps, parse_layers

log = logging.getLogger(__name__)

__all__ = ["activations", "iter_activations", "Extraction", "DEFAULT_BATCH_SIZE"]

#: Stimuli per forward pass by default.
DEFAULT_BATCH_SIZE = 64
Units = Union[None, Sequence[Any], Mapping[str, Any]]


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _on_device(dnn: DNN, device: Any) -> DNN:
    """``dnn`` itself when it lives on ``device`` (None: wherever it is), else a copy of
    it moved there: the user's model is never moved."""
    if device is None:
        return dnn
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"`device` must be a torch device such as 'cpu', 'cuda' or "
                         f"'cuda:0', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r}: CUDA is not available here; use 'cpu'")
    here = dnn.device
    if here.type == dev.type and (dev.index is None or here.index == dev.index):
        return dnn
    moved = copy.copy(dnn)
    moved.model = copy.deepcopy(dnn.model).to(dev)
    return moved


class Extraction:
    """A checked extraction: network, layers, pooling, units and stimuli.

    Parameters
    ----------
    dnn : DNN
        The network.
    stimuli : Stimulus, path, images or (N, 3, H, W) array/tensor
        See :mod:`dnnbrain.probe.actsource`.
    layers : str or list of str
        Layer names or dotted paths, each optionally ``@<call>`` (see
        :mod:`dnnbrain.probe.taps`).
    pool : {'none', 'mean', 'max'}
        Pooling over space (patch tokens on token layers).
    units : None, list or dict
        Every unit (None), a channel subset (ints from 1) or spatial units
        ``(c, row, col)`` (from 1), for all layers or ``{layer: list}``.
    batch_size : int
        Stimuli per forward pass.
    device : str, torch.device or None
        Where the passes run; None: the model's device. Another device runs a copy of the
        model (the user's stays where it is).
    preprocessed : bool
        ``stimuli`` is an ``(N, 3, H, W)`` tensor of network input (no transform).
    channels_last : bool or None
        See :class:`dnnbrain.probe.taps.Taps`.

    Attributes
    ----------
    specs : list of LayerSpec
    source : Source
    taps : Taps
    """

    def __init__(self, dnn: DNN, stimuli: Any, layers: Union[str, Sequence[str]],
                 pool: str = "none", units: Units = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, device: Any = None,
                 preprocessed: bool = False, channels_last: Optional[bool] = None) -> None:
        if not isinstance(dnn, DNN):
            raise TypeError(f"`dnn` must be a dnnbrain DNN (wrap a module with DNN(model)), "
                            f"got {type(dnn).__name__}")
        if pool not in POOLS:
            raise ValueError(f"`pool` must be one of {list(POOLS)}, got {pool!r}")
        self.batch_size = _check_batch_size(batch_size)
        self.specs: List[LayerSpec] = parse_layers(dnn, layers, units)
        self.dnn = _on_device(dnn, device)
        if self.dnn is not dnn:  # the copy's modules
            self.specs = parse_layers(self.dnn, layers, units)
        self.pool = pool
        self.source: Source = as_source(stimuli, dnn.test_transform, preprocessed)
        self.taps = Taps(self.dnn, self.specs, pool, channels_last)

    @property
    def keys(self) -> List[str]:
        """The layers as given (result keys), in order."""
        return [s.key for s in self.specs]

    @property
    def n(self) -> int:
        """Number of stimuli."""
        return len(self.source)

    @property
    def n_batches(self) -> int:
        """Number of batches (the last may be short)."""
        return -(-self.n // self.batch_size)

    def rows(self, b: int) -> Tuple[int, int]:
        """Rows ``[start, stop)`` of batch ``b``."""
        return b * self.batch_size, min((b + 1) * self.batch_size, self.n)

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Each layer's row shape (without the stimulus axis), from one forward pass of
        the first stimulus."""
        x = self.source.load(0, 1).to(self.dnn.device)
        return {k: tuple(v.shape[1:]) for k, v in self.taps.run(x).items()}

    def stream(self, batches: Optional[Iterable[int]] = None, progress: bool = False
               ) -> Iterator[Tuple[int, Dict[str, torch.Tensor]]]:
        """``(start, {layer: (B, ...) tensor on the device})`` per batch, in order; the
        next batch's images load in a thread while the current one runs. No hook is left
        between batches (each pass registers and removes its own)."""
        todo = list(range(self.n_batches)) if batches is None else sorted(set(batches))
        bad = [b for b in todo if not isinstance(b, (int, np.integer)) or
               not 0 <= b < self.n_batches]
        if bad:
            raise ValueError(f"`batches` must be batch indices in 0..{self.n_batches - 1}, "
                             f"got {bad[:5]}")
        return self._stream(todo, progress)

    def _stream(self, todo: List[int], progress: bool
                ) -> Iterator[Tuple[int, Dict[str, torch.Tensor]]]:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(self.rows(b)[1] - self.rows(b)[0] for b in todo), unit="stim",
                   desc="activations", disable=not progress, leave=False)
        # image files decode in a thread while the network runs; a tensor is sliced inline
        files = not isinstance(self.source.items, (np.ndarray, torch.Tensor))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dnnbrain-load") \
            if files and len(todo) > 1 else None

        def load(i: int) -> Any:
            if i >= len(todo):
                return None
            rows = self.rows(todo[i])
            return pool.submit(self.source.load, *rows) if pool else self.source.load(*rows)
        try:
            nxt = load(0)
            for i, b in enumerate(todo):
                x = nxt.result() if pool else nxt
                nxt = load(i + 1) if pool else None
                out = self.taps.run(x.to(self.dnn.device, non_blocking=True))
                if not pool and i + 1 < len(todo):
                    nxt = load(i + 1)
                bar.update(len(x))
                yield self.rows(b)[0], out
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            bar.close()


def iter_activations(dnn: DNN, stimuli: Any, layers: Union[str, Sequence[str]],
                     pool: str = "none", units: Units = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, device: Any = None,
                     preprocessed: bool = False, batches: Optional[Iterable[int]] = None,
                     channels_last: Optional[bool] = None, progress: bool = False
                     ) -> Iterator[Tuple[int, Dict[str, torch.Tensor]]]:
    """Stream the activations batch by batch, keeping nothing.

    Everything is checked before the first batch (this is not a lazy generator function:
    bad input raises at the call). Parameters as :func:`activations`, plus:

    Parameters
    ----------
    batches : iterable of int or None
        Only these batch indices (batch ``b`` is rows ``[b * batch_size, ...)``); None:
        all, in order.

    Yields
    ------
    start : int
        Row of the batch's first stimulus.
    acts : dict of str to torch.Tensor
        ``{layer: (B, ...) float32}`` on the passes' device (the model's), shapes as
        :func:`activations` gives them per row. Each batch's tensors are new: keep them or
        drop them.

    Examples
    --------
    >>> best = None                                                # doctest: +SKIP
    >>> for start, acts in iter_activations(dnn, stim, ['conv5'], pool='max'):
    ...     top = acts['conv5'].max(0)                               # running maximum
    """
    ext = Extraction(dnn, stimuli, layers, pool, units, batch_size, device, preprocessed,
                     channels_last)
    return ext.stream(batches, progress)


def activations(dnn: DNN, stimuli: Any, layers: Union[str, Sequence[str]],
                pool: str = "none", units: Units = None,
                batch_size: int = DEFAULT_BATCH_SIZE, out: Union[None, str, os.PathLike] = None,
                device: Any = None, preprocessed: bool = False, shard: Any = None,
                force: bool = False, sync: bool = True, channels_last: Optional[bool] = None,
                progress: bool = False) -> Any:
    """Activations of ``layers`` for every stimulus, one forward pass per batch.

    Parameters
    ----------
    dnn : DNN
        The network (a named one or ``DNN(your_module)``); used as it is: no hook outlives
        the call, its modes and parameters are unchanged.
    stimuli : Stimulus, str, os.PathLike, list of images, or (N, 3, H, W) array/tensor
        A :class:`~dnnbrain.io.stim.Stimulus`, a ``.stim.csv`` file, a folder of images,
        one image file, a list of paths / PIL images / pixel arrays, or pixels as an
        array; with ``preprocessed=True`` a tensor of network input.
    layers : str or list of str
        Names from ``dnn.layers`` or dotted module paths; ``name@first`` / ``@last`` /
        ``@<k>`` picks the call of a module that runs more than once (default: the last).
    pool : {'none', 'mean', 'max'}
        ``'mean'`` / ``'max'`` over space (over the patch tokens of a token layer) give
        ``(N, C)``; ``'none'`` keeps ``(N, C, H, W)`` (a token layer's patch grid, prefix
        tokens dropped; a linear layer is ``(N, C)`` either way).
    units : None, list, or dict {layer: list}
        None: every unit. Ints (from 1): those channels only, ``(N, U, ...)``.
        ``(c, row, col)`` tuples (from 1): those spatial units, ``(N, U)``.
    batch_size : int
        Stimuli per forward pass. A resumed or sharded store keeps its own.
    out : str, os.PathLike or None
        None: return the arrays. A folder: stream to ``<out>/<layer>.npy`` with
        ``manifest.json`` (see :mod:`dnnbrain.probe.actstore`).
    device : str, torch.device or None
        Where the passes run; None: the model's device (another runs a copy of the model).
    preprocessed : bool
        ``stimuli`` is already ``dnn.test_transform`` output ``(N, 3, H, W)``.
    shard : 'k/n', (k, n) or None
        With ``out``: compute only batches ``k, k + n, ...`` (None: torchrun's or
        SLURM's variables, as the batch runner shards: :mod:`dnnbrain.batch.launch`).
        The last shard to finish marks the store complete.
    force : bool
        With ``out``: replace a store made with other settings (else FileExistsError).
    sync : bool
        With ``out``: ``msync`` each batch's rows to disk before marking them done (a
        killed process loses nothing either way; this also survives power loss).
    channels_last : bool or None
        Run 4-D inputs channels-last (None: on the CPU for networks that accept it).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict of str to numpy.ndarray, or ActivationStore
        Without ``out``: ``{layer: float32 array (N, ...)}`` in ``layers`` order. With
        ``out``: the store, read lazily (:class:`~dnnbrain.probe.actstore.ActivationStore`).

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        Bad input, named (checked before any pass runs).
    FileExistsError
        ``out`` holds another store or other files (without ``force``), or another
        process runs the same store or shard.
    """
    ext = Extraction(dnn, stimuli, layers, pool, units, batch_size, device, preprocessed,
                     channels_last)
    if out is not None:
        from .actstore import write_store
        return write_store(ext, out, shard=shard, force=force, sync=sync, progress=progress)
    result: Dict[str, np.ndarray] = {}
    for start, acts in ext.stream(progress=progress):
        for key, t in acts.items():
            if key not in result:
                result[key] = np.empty((ext.n,) + tuple(t.shape[1:]), np.float32)
            result[key][start:start + len(t)] = t.cpu().numpy()
    return result
