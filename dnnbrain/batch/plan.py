"""The work of a run: output names, work items (stimulus batch x target x method), shards.

A work item computes one method for all units of one target on one batch of stimuli, in
one call. Items are ordered batch, then target, then method; shard ``k`` of ``n`` takes
items ``k, k + n, k + 2n, ...``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .launch import Shard
from .schema import SAVE_KINDS


@dataclass(frozen=True)
class WorkItem:
    """One unit of work.

    Attributes
    ----------
    index : int
        Position in the full plan (all shards).
    start, stop : int
        Stimulus rows ``[start, stop)`` of the batch.
    target : int
        Index into ``config['targets']``.
    method : int
        Index into ``config['methods']``.
    key : str
        Name of the item's completion marker (``<label>__t<target>__s<start>-<stop>``).
    digest : str
        Hash of everything the item's outputs depend on (model and the fingerprint of its
        network, stimuli, batch size, seed, target, method, output options): a marker with
        another digest does not count.
    """

    index: int
    start: int
    stop: int
    target: int
    method: int
    key: str
    digest: str


def unit_folder(unit: Any) -> str:
    """Output folder of a unit: ``unit3``, ``unitpred``, ``unitlabel`` (each stimulus's
    own class) or ``unit3_4_5`` (channel, row, col)."""
    return "unit" + unit_text(unit, short=True)


def unit_text(unit: Any, short: bool = False) -> str:
    """A unit as text: ``'3'``, ``'predicted'`` (``'pred'`` with ``short``), ``'label'``,
    ``'3_4_5'``, ``'cls_3'``."""
    if unit == "predicted":
        return "pred" if short else "predicted"
    if unit == "label":
        return "label"
    if isinstance(unit, (list, tuple)):
        return "_".join(v if isinstance(v, str) else str(int(v)) for v in unit)
    return str(int(unit))


def map_stem(stim_id: str) -> str:
    """Output name of a stimulus: its stimID without the file ending, kept below the unit
    folder (``a/b.png`` -> ``a/b``); ``..``, ``.`` and drive/root parts are dropped."""
    parts = [p for p in PurePosixPath(str(stim_id).replace("\\", "/")).parts
             if p not in ("", ".", "..", "/") and not p.endswith(":")]
    if not parts:
        return "stimulus"
    parts[-1] = PurePosixPath(parts[-1]).stem or parts[-1]
    return "/".join(parts)


def layer_folder(layer: str, call: Any = None) -> str:
    """Output folder of a target layer: its name, with ``@<call>`` when the target sets
    which call it explains (``relu@first``, ``relu@2``), so that two targets on the
    calls of one module never share a folder."""
    return layer if call is None else f"{layer}@{call}"


def map_files(method_label: str, layer: str, unit: Any, stem: str,
              save: Sequence[str], call: Any = None) -> Dict[str, str]:
    """Relative (posix) paths of one map's files, by kind, in ``save`` order."""
    folder = f"{method_label}/{layer_folder(layer, call)}/{unit_folder(unit)}/{stem}"
    return {kind: folder + SAVE_KINDS[kind] for kind in save}


def config_digest(config: Mapping[str, Any], *parts: Any) -> str:
    """sha256 (hex, 16 chars) of the config fields maps depend on, plus ``parts``."""
    outputs = {k: v for k, v in config["outputs"].items() if k != "dir"}
    net = (config.get("network") or {}).get("fingerprint")
    data = [config["model"], config["stimuli"], config["batch_size"], config["seed"],
            outputs, net, *parts]
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_plan(config: Mapping[str, Any], n_stim: int) -> List[WorkItem]:
    """Every work item of a resolved config over ``n_stim`` stimuli, in plan order."""
    bs = int(config["batch_size"])
    items: List[WorkItem] = []
    for start in range(0, n_stim, bs):
        stop = min(start + bs, n_stim)
        for t, target in enumerate(config["targets"]):
            for m, method in enumerate(config["methods"]):
                digest = config_digest(config, target, method)
                key = f"{method['label']}__t{t}__s{start:06d}-{stop:06d}"
                items.append(WorkItem(len(items), start, stop, t, m, key, digest))
    return items


def shard_items(items: Sequence[WorkItem], shard: Optional[Shard]) -> List[WorkItem]:
    """The items shard ``(k, n)`` computes (all of them for None)."""
    if shard is None:
        return list(items)
    k, n = shard
    return list(items[k::n])
