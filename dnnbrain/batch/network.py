"""The network of a run: its record (fingerprint, saved weights) and the run folder's copy.

A run records which network made its maps: ``network: {fingerprint, weights}`` in
``config.resolved.yaml`` (and a ``network`` column in the manifest). ``fingerprint`` is
:func:`~dnnbrain.dnn.fingerprint.fingerprint` of the network's weights; ``weights`` is
``network.pth`` (in the run folder) for a network with random weights (``pretrained:
false``) or built by a ``factory``, else null (the weights come from a file the config
names). Every process of the run (shards, resumes) and ``dnn_saliency_eval`` use that
saved file, verified against the fingerprint. See ``docs/batch.rst``.
"""
from __future__ import annotations

import io
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import yaml

from ..dnn.fingerprint import fingerprint
from ..dnn.models import DNN, load_reason
from ..io.maps import atomic_write
from .schema import Problems, type_name

log = logging.getLogger(__name__)

#: File name of a run's saved weights, in the run folder.
WEIGHTS_NAME = "network.pth"
#: Keys of the ``network`` record.
RECORD_KEYS = ("fingerprint", "weights")


def saves_weights(model: Mapping[str, Any]) -> bool:
    """True when a resolved ``model`` section builds weights no file holds (random, or a
    factory's): the run then saves them as ``network.pth``."""
    return "factory" in model or (not model.get("pretrained") and model.get("weights") is None)


def record(model: Mapping[str, Any], dnn: DNN) -> Dict[str, Any]:
    """The ``network`` record of a run whose ``model`` section built ``dnn``."""
    return {"fingerprint": fingerprint(dnn.model),
            "weights": WEIGHTS_NAME if saves_weights(model) else None}


def check_pin(p: Problems, value: Any, built: Optional[Mapping[str, Any]]) -> None:
    """The optional ``network`` key of a config (a resolved config fed back): a mapping
    with ``fingerprint`` (and ``weights``); the network the config builds must have that
    fingerprint."""
    if value is None:
        return
    if not isinstance(value, Mapping) or any(k not in RECORD_KEYS for k in value):
        p.add("network", f"must be null or a mapping with keys {list(RECORD_KEYS)} (as "
                         f"config.resolved.yaml records it), got {type_name(value)} {value!r}")
        return
    pin = value.get("fingerprint")
    if pin is not None and not isinstance(pin, str):
        p.add("network.fingerprint", f"must be a string (sha256 hex), got {type_name(pin)}")
    elif pin is not None and built is not None and pin != built["fingerprint"]:
        p.add("network.fingerprint", f"the config builds the network {built['fingerprint']},"
                                     f" not the recorded {pin}")


def stored_record(out: Path, config_name: str) -> Optional[Dict[str, Any]]:
    """The ``network`` record of the run in ``out`` (None: no run, or one without it)."""
    try:
        old = yaml.safe_load((out / config_name).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    rec = old.get("network") if isinstance(old, dict) else None
    return rec if isinstance(rec, dict) and rec.get("fingerprint") else None


def check_folder(out: Path, config_name: str, rec: Mapping[str, Any], force: bool) -> bool:
    """Compare the network a config builds with the one that made the maps in ``out``.

    Returns
    -------
    bool
        True when they differ and ``force`` is given (the old network's maps are then
        recomputed: every item's digest holds the fingerprint).

    Raises
    ------
    FileExistsError
        When they differ and ``force`` is False; the message names both fingerprints.
    """
    old = stored_record(out, config_name)
    if old is None or old["fingerprint"] == rec["fingerprint"]:
        return False
    if not force:
        raise FileExistsError(f"`outputs.dir` '{out}' holds maps of the network "
                              f"{old['fingerprint']}, but the config now builds the network "
                              f"{rec['fingerprint']}; pass -force to recompute them with it")
    log.warning("'%s': the network changed (%s -> %s); -force: its maps are recomputed", out,
                old["fingerprint"], rec["fingerprint"])
    return True


def _load_into(dnn: DNN, path: Path, rec: Mapping[str, Any]) -> DNN:
    """Load ``path`` into ``dnn`` (ours) and check it is the recorded network."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        dnn.model.load_state_dict(state)
    except FileNotFoundError:
        raise FileNotFoundError(f"the run's saved network '{path}' (config.resolved.yaml "
                                f"`network.weights`) not found") from None
    except Exception as err:  # not a weights file, or weights of another architecture
        msg = load_reason(err)
        raise ValueError(f"the run's saved network '{path}' cannot be loaded: {msg}") from None
    got = fingerprint(dnn.model)
    if got != rec["fingerprint"]:
        raise ValueError(f"the run's saved network '{path}' has the fingerprint {got}, but "
                         f"the run records {rec['fingerprint']}: the file was changed")
    return dnn


def use_run_network(dnn: DNN, out: Path, rec: Mapping[str, Any], replace: bool) -> DNN:
    """The network a run process computes with: for a record with saved weights, the
    first process to start saves them (atomically, never over another process's file
    unless ``replace``); the others load that file and verify its fingerprint."""
    if not rec.get("weights"):
        return dnn
    path = out / WEIGHTS_NAME  # never a path the YAML names
    if path.is_file() and not replace:
        return _load_into(dnn, path, rec)
    buf = io.BytesIO()  # torch.save names its archive after a file: the bytes must not vary
    torch.save({k: v.detach().cpu() for k, v in dnn.model.state_dict().items()}, buf)
    if replace:
        atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
    else:
        _save_new(path, buf.getvalue())
    return _load_into(dnn, path, rec)


def _save_new(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path`` unless a file is there: the first writer wins (a hard
    link never replaces a file); the others then load the winner's file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_run_network(dnn: DNN, run_dir: Path, rec: Optional[Mapping[str, Any]]) -> DNN:
    """The network that made a run's maps, for evaluation: ``dnn`` (built from the run's
    config, ours) with the run's saved weights loaded, verified against the record.

    Raises
    ------
    FileNotFoundError
        If the record names saved weights that are missing.
    ValueError
        If the saved weights (or, without saved weights, the network the config builds)
        do not have the recorded fingerprint; the message names both.
    """
    if rec is None:  # a run written before networks were recorded
        log.warning("'%s' records no network; evaluating the network its config builds",
                    run_dir)
        return dnn
    if rec.get("weights"):
        return _load_into(dnn, Path(run_dir) / WEIGHTS_NAME, rec)  # never a path the YAML names
    got = fingerprint(dnn.model)
    if got != rec["fingerprint"]:
        raise ValueError(f"the config of '{run_dir}' now builds the network {got}, but its "
                         f"maps were made by the network {rec['fingerprint']}")
    return dnn
