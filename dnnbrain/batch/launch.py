"""Which process of a launch this is: its shard and its local device.

One place reads what a launcher tells a process, for the batch runner
(:func:`dnnbrain.batch.run`) and the activation store (:func:`dnnbrain.probe.activations`
with ``out``), in this order:

1. an explicit shard (``-shard k/n``, ``shard='k/n'`` or ``(k, n)``) wins;
2. torchrun: ``RANK`` / ``WORLD_SIZE`` (local device ``LOCAL_RANK``);
3. SLURM ``srun``: ``SLURM_PROCID`` / ``SLURM_NTASKS`` (local device ``SLURM_LOCALID``);
4. else one process does everything.

The local device (``model.device: auto``, ``dnn_act -device auto``) is ``cuda:<local rank>``
(modulo the GPUs the process sees, so a task that SLURM binds to one GPU uses it), or
``cuda`` without a local rank, or the CPU without CUDA. Inconsistent values (a rank not
below the world size, a local rank not below it, a non-integer) are a one-line ValueError
naming the variables.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch

log = logging.getLogger(__name__)
Shard = Tuple[int, int]
#: (rank, world size, local rank) variables of each launcher, in the order they are read.
LAUNCHERS = (("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK")),
             ("SLURM", ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")))


_SHARD_RULE = "integers 'k/n' with 0 <= k < n (e.g. '0/2')"


def _int(value: object, what: str, given: object, rule: str = _SHARD_RULE) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {rule}, got {given!r}") from None


def _launcher(env: Mapping[str, str]) -> Optional[Tuple[str, Sequence[str]]]:
    """The first launcher whose rank or world size is set (None: none)."""
    for name, keys in LAUNCHERS:
        if keys[0] in env or keys[1] in env:
            return name, keys
    return None


def _from_env(env: Mapping[str, str]) -> Optional[Shard]:
    found = _launcher(env)
    if found is None:
        return None
    name, (rank, world, _) = found
    missing = [k for k in (rank, world) if k not in env]
    if missing:
        raise ValueError(f"{name}: {missing[0]} is not set but "
                         f"{rank if missing[0] == world else world} is; set both "
                         f"{rank}/{world} or pass -shard k/n")
    where = f"{rank}/{world}"
    given = f"{env[rank]}/{env[world]}"
    k, n = _int(env[rank], where, given), _int(env[world], where, given)
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"{where} must satisfy 0 <= {rank} < {world}, got {k}/{n}")
    log.info("shard %d/%d from %s's %s", k, n, name, where)
    return k, n


def parse_shard(shard: Union[str, Shard, None] = None,
                env: Optional[Mapping[str, str]] = None) -> Optional[Shard]:
    """The shard ``(k, n)`` this process computes, or None when one process does all.

    Parameters
    ----------
    shard : 'k/n', (k, n) or None
        An explicit shard (it wins over the environment); None reads torchrun's
        ``RANK`` / ``WORLD_SIZE``, else SLURM's ``SLURM_PROCID`` / ``SLURM_NTASKS``.
    env : mapping or None
        The environment (default ``os.environ``).

    Returns
    -------
    (int, int) or None
        ``(k, n)`` with ``0 <= k < n`` and ``n > 1``; None for ``n == 1`` or no launcher.

    Raises
    ------
    ValueError
        On a malformed shard, ``k`` out of range, or a launcher that set only one of its
        two variables (one line naming them).
    """
    env = os.environ if env is None else env
    if shard is None:
        sh = _from_env(env)
    else:
        given = shard
        if isinstance(shard, str):
            k_text, sep, n_text = shard.partition("/")
            shard = (k_text, n_text) if sep else (shard, "")
        try:
            k_raw, n_raw = shard
        except (TypeError, ValueError):
            raise ValueError(f"`shard` must be 'k/n' with integers 0 <= k < n (e.g. '0/2'), "
                             f"got {given!r}") from None
        k, n = _int(k_raw, "`shard`", given), _int(n_raw, "`shard`", given)
        if n < 1 or not 0 <= k < n:
            raise ValueError(f"`shard` must be 'k/n' with 0 <= k < n, got {k}/{n}")
        sh = (k, n)
    return None if sh is None or sh[1] == 1 else sh


def local_rank(env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """This process's rank on its machine: torchrun's ``LOCAL_RANK``, else SLURM's
    ``SLURM_LOCALID`` (None when neither is set).

    Raises
    ------
    ValueError
        If it is not an integer >= 0, or not below the launcher's world size.
    """
    env = os.environ if env is None else env
    for name, (_, world, local) in LAUNCHERS:
        if local not in env:
            continue
        value = _int(env[local], local, env[local], "an integer >= 0")
        n = _int(env[world], world, env[world], "an integer >= 1") if world in env else None
        if value < 0 or (n is not None and value >= n):
            raise ValueError(f"{name}: {local} must satisfy 0 <= {local} < {world}, got "
                             f"{value} (of {n})" if n is not None else
                             f"{name}: {local} must be an integer >= 0, got {value}")
        return value
    return None


def runtime_device(device: str, env: Optional[Mapping[str, str]] = None) -> torch.device:
    """The device a process uses: ``'auto'`` is ``cuda:<local rank>`` (:func:`local_rank`,
    modulo the GPUs visible) when CUDA is available, ``cuda`` without a local rank, else
    the CPU; anything else as given."""
    if device != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    rank = local_rank(env)
    return torch.device("cuda" if rank is None else f"cuda:{rank % torch.cuda.device_count()}")

