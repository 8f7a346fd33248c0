"""Stimuli for the probes: whatever a user passes -> ids and batches of network input.

Accepted (:func:`as_source`):

* a :class:`~dnnbrain.io.stim.Stimulus`, a ``.stim.csv`` file, a folder of images (sorted
  by relative path, as :meth:`Stimulus.from_folder`) or one image file;
* a list or tuple of image paths, PIL images or pixel arrays (anything
  :func:`dnnbrain.dnn.base.load_image` reads);
* an ``(N, 3, H, W)`` array or tensor: pixels (through ``test_transform``), or, with
  ``preprocessed=True``, the transform's output used as it is (large sets skip PIL).

Images are read batch by batch (:meth:`Source.load`), never all at once, so a stimulus set
of any size costs one batch of memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence

import numpy as np
import torch

from ..dnn.base import ImageTransform, to_input
from ..io.stim import IMAGE_EXTENSIONS, Stimulus

__all__ = ["Source", "as_source"]


class Source:
    """Stimuli with ids, loaded a batch at a time.

    Parameters
    ----------
    ids : list of str
        One id per stimulus, in order (stimIDs, paths as given, or row numbers).
    items : sequence
        What :func:`dnnbrain.dnn.base.to_input` takes for one stimulus each (paths, PIL
        images, arrays), or one ``(N, 3, H, W)`` array/tensor.
    transform : ImageTransform
        The network's ``test_transform``.
    preprocessed : bool
        ``items`` is already network input (no transform).
    """

    def __init__(self, ids: List[str], items: Any, transform: ImageTransform,
                 preprocessed: bool = False) -> None:
        self.ids = list(ids)
        self.items = items
        self.transform = transform
        self.preprocessed = preprocessed

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as network input: float32 ``(B, 3, H, W)`` on the CPU."""
        part = self.items[start:stop]
        if isinstance(part, (np.ndarray, torch.Tensor)):
            x, _ = to_input(part, self.transform, self.preprocessed)
        else:
            x, _ = to_input(list(part), self.transform)
        return x


def _stimulus(stim: Stimulus, transform: ImageTransform) -> Source:
    stim.check_files()
    return Source(list(stim.ids), [str(p) for p in stim.paths], transform)


def as_source(stimuli: Any, transform: ImageTransform, preprocessed: bool = False) -> Source:
    """Any accepted stimulus set (see the module notes) -> :class:`Source`.

    Parameters
    ----------
    stimuli : Stimulus, str, os.PathLike, sequence of images, or (N, 3, H, W) array/tensor
        The stimuli.
    transform : ImageTransform
        The network's ``test_transform``.
    preprocessed : bool
        ``stimuli`` is an ``(N, 3, H, W)`` tensor/array of network input.

    Returns
    -------
    Source

    Raises
    ------
    FileNotFoundError
        A missing file or folder (or image files a stimulus table lists).
    TypeError, ValueError
        Anything else; the message names `stimuli` and the accepted forms.
    """
    if not isinstance(preprocessed, (bool, np.bool_)):
        raise TypeError(f"`preprocessed` must be True or False, got {preprocessed!r}")
    if isinstance(stimuli, Stimulus):
        src = _stimulus(stimuli, transform)
    elif isinstance(stimuli, (str, os.PathLike)):
        path = Path(stimuli)
        if not path.exists():
            raise FileNotFoundError(f"`stimuli` not found: '{path}'")
        if path.is_dir():
            src = _stimulus(Stimulus.from_folder(path), transform)
        elif path.name.endswith(".csv"):
            src = _stimulus(Stimulus.read(path), transform)
        elif path.suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS}:
            src = Source([str(stimuli)], [str(path)], transform)
        else:
            raise ValueError(f"`stimuli` must be a .stim.csv file, a folder or an image file "
                             f"({', '.join(IMAGE_EXTENSIONS)}), got '{path}'")
    elif isinstance(stimuli, (np.ndarray, torch.Tensor)):
        if stimuli.ndim != 4:
            raise ValueError(f"`stimuli` as an array must be (N, 3, H, W), got shape "
                             f"{tuple(stimuli.shape)}")
        src = Source([str(i) for i in range(len(stimuli))], stimuli, transform, preprocessed)
    elif isinstance(stimuli, (list, tuple)):
        items: Sequence[Any] = list(stimuli)
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
                raise FileNotFoundError(f"`stimuli[{i}]` not found: '{item}'")
        ids = [str(s) if isinstance(s, (str, os.PathLike)) else str(i)
               for i, s in enumerate(items)]
        src = Source(ids, items, transform)
    else:
        raise TypeError(f"`stimuli` must be a Stimulus, a .stim.csv file, a folder, image "
                        f"paths or images, or an (N, 3, H, W) array/tensor, got "
                        f"{type(stimuli).__name__}")
    if preprocessed and not isinstance(src.items, (np.ndarray, torch.Tensor)):
        raise ValueError("`preprocessed=True` needs `stimuli` as an (N, 3, H, W) tensor or "
                         "array of network input")
    if len(src) == 0:
        raise ValueError("`stimuli` holds no stimuli")
    return src
