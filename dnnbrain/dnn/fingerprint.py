"""Which network is this: a fingerprint of its weights, and seeded construction.

>>> from dnnbrain.dnn.fingerprint import fingerprint, seeded
>>> from dnnbrain.dnn.models import build_network
>>> with seeded(0):                                   # doctest: +SKIP
...     dnn = build_network("AlexNet", pretrained=False)
>>> fingerprint(dnn.model)                            # doctest: +SKIP
'3f0c...'
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["fingerprint", "seeded"]


def fingerprint(module: nn.Module) -> str:
    """sha256 (64 hex digits) of a module's ``state_dict``: every entry's name, dtype,
    shape and bytes, in sorted name order.

    Parameters
    ----------
    module : torch.nn.Module
        The network (parameters and buffers count; where they live does not).

    Returns
    -------
    str
        The hex digest; equal for two modules exactly when their state dicts are equal
        bit for bit (names, dtypes, shapes, values).
    """
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(state[name].shape)}\0".encode("utf-8"))
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU random generator with ``seed`` for the block, inside
    :func:`torch.random.fork_rng`: the caller's random state is unchanged afterwards.

    Building a random-weight network (on the CPU, where dnnbrain builds networks) inside
    it gives the same weights every time. CUDA generators are neither touched nor
    initialised (no CUDA context is created on any device).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield
