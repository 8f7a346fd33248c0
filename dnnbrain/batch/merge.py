"""Merging the manifest parts of a sharded run into ``manifest.csv`` (and ``index.html``).

The last shard to finish merges by itself. Merges hold an exclusive lock on the folder
(:func:`~dnnbrain.batch.lock.folder_lock`), and so does a shard while it removes its old
part and ``manifest.csv`` at its start: each shard writes its part and then waits for the
lock, so when shards finish together the one that gets it second sees every part (and
merges) or finds ``manifest.csv`` already merged by the other (and leaves it); a merge
never misses a part nor runs twice. ``dnn_saliency_batch RUN.yaml -merge`` (or
:func:`merge`) does it by hand. Merging needs every part ``manifest.part<k>of<n>.csv`` and
every work item complete; its rows come out in the order a single process writes them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from .config import Prepared, prepare
from .gallery import INDEX_NAME, write_index
from .lock import folder_lock, merge_lock
from .plan import WorkItem, make_plan, unit_text
from .store import (MANIFEST_NAME, check_output_dir, clean_temps, find_parts, read_manifest,
                    read_marker, write_manifest)

log = logging.getLogger(__name__)
ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def merge_parts(prep: Prepared, plan: Sequence[WorkItem], n: int,
                strict: bool) -> Optional[Path]:
    """Merge the ``n`` manifest parts into ``manifest.csv`` and write ``index.html``.

    Parameters
    ----------
    prep : Prepared
        The validated run.
    plan : sequence of WorkItem
        Every work item of the run (all shards).
    n : int
        Number of shards.
    strict : bool
        Raise when the parts cannot be merged (else log and return None), and merge even
        when ``manifest.csv`` exists (``-merge``); a shard that finishes merges with
        ``strict=False``.

    Returns
    -------
    pathlib.Path or None
        ``manifest.csv``, or None (non-strict) when a part is missing, a work item is not
        complete, or another shard merged already.
    """
    out = Path(prep.config["outputs"]["dir"])
    with folder_lock(out):  # waits for a merge in progress: never leaves the work undone
        if not strict and (out / MANIFEST_NAME).is_file():
            log.info("another shard merged the manifest parts already")
            return None
        return _merge_locked(prep, plan, n, strict)


def _merge_locked(prep: Prepared, plan: Sequence[WorkItem], n: int,
                  strict: bool) -> Optional[Path]:
    cfg, save = prep.config, prep.config["outputs"]["save"]
    out = Path(cfg["outputs"]["dir"])
    parts = find_parts(out).get(n, {})
    why = ""
    if len(parts) < n:
        why = f"manifest parts {sorted(set(range(n)) - set(parts))} of {n} are missing"
    else:
        undone = [it.key for it in plan if read_marker(out, it, save) is None]
        if undone:
            why = f"{len(undone)} of {len(plan)} work items are not complete ({undone[:3]})"
    if why:
        if strict:
            raise ValueError(f"cannot merge the manifest in '{out}': {why}; run the missing "
                             "shards first")
        log.info("not merging yet: %s", why)
        return None
    order: Dict[Tuple[str, ...], int] = {}
    for it in plan:
        t, label = cfg["targets"][it.target], cfg["methods"][it.method]["label"]
        for sid in prep.stim.ids[it.start:it.stop]:
            for u in t["units"]:
                order[(sid, str(it.target), label, unit_text(u))] = len(order)
    rows = [row for k in range(n) for row in read_manifest(parts[k])]
    keys = [(r.get("stimulus"), r.get("target"), r.get("method"), r.get("requested_unit"))
            for r in rows]
    if len(set(keys)) != len(keys) or set(keys) != set(order):
        msg = (f"the {n} manifest parts in '{out}' do not list every map exactly once "
               f"({len(keys)} rows, {len(order)} maps planned); rerun the shards")
        if strict:
            raise ValueError(msg)
        log.warning(msg)
        return None
    rows = [r for _, r in sorted(zip((order[k] for k in keys), rows), key=lambda p: p[0])]
    manifest = write_manifest(out / MANIFEST_NAME, rows, save)
    write_index(out, cfg, rows, prep.stim, prep.dnn)
    # only the merge's own temporaries: shards of this run may still be live
    clean_temps(out, {MANIFEST_NAME, INDEX_NAME})
    log.info("merged %d manifest parts into %s", n, manifest)
    return manifest


def merge(config: ConfigLike, out: Optional[Union[str, os.PathLike]] = None,
          allow_code: bool = False) -> Path:
    """Merge the manifest parts of a sharded run into ``manifest.csv`` and write
    ``index.html`` (what the last shard to finish does by itself).

    Parameters
    ----------
    config : str, os.PathLike or mapping
        The run config the shards ran.
    out : str, os.PathLike or None
        Overrides ``outputs.dir``.
    allow_code : bool
        Let ``model.factory`` name the user's own code (see :func:`load_config`).

    Returns
    -------
    pathlib.Path
        ``manifest.csv``.

    Raises
    ------
    ValueError
        If no complete set of parts exists or a work item is not complete.
    """
    prep = prepare(config, out, allow_code)
    outdir = Path(prep.config["outputs"]["dir"])
    check_output_dir(outdir, prep.config, force=False)
    groups = find_parts(outdir)
    if not groups:
        raise ValueError(f"no manifest parts (manifest.part<k>of<n>.csv) in '{outdir}'")
    plan = make_plan(prep.config, len(prep.stim))
    errors = []
    with merge_lock(outdir):
        for n in sorted(groups, key=lambda n: (len(groups[n]) < n, -n)):
            try:
                return merge_parts(prep, plan, n, strict=True)
            except ValueError as err:
                errors.append(str(err))
    raise ValueError("; ".join(errors))
