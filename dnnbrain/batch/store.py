"""The output folder of a run: resolved config, completion markers, manifests, temp files.

Completion: a work item is complete when its marker ``.progress/<item key>.json`` exists,
carries the item's current digest, and every file its rows list exists. The marker is
written atomically after all of the item's files, so a run killed at any moment leaves
only complete items marked; their files are never partial (every write is atomic).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import yaml

from ..io.maps import atomic_write
from .plan import WorkItem
from .schema import SAVE_KINDS

log = logging.getLogger(__name__)

CONFIG_NAME = "config.resolved.yaml"
MANIFEST_NAME = "manifest.csv"
PROGRESS_DIR = ".progress"
#: The run lock (:mod:`dnnbrain.batch.lock`); kept in the folder, empty.
LOCK_NAME = ".lock"
#: Manifest columns before the file columns (one per ``outputs.save`` kind).
COLUMNS = ("stimulus", "target", "layer", "unit", "requested_unit", "class", "reduce",
           "method", "activation", "predicted_class", "network")
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")
_PART_RE = re.compile(r"^manifest\.part(?P<k>\d+)of(?P<n>\d+)\.csv$")


def part_name(k: int, n: int) -> str:
    """File name of shard ``k``'s manifest part: ``manifest.part<k>of<n>.csv``."""
    return f"manifest.part{k}of{n}.csv"


def find_parts(out: Path) -> Dict[int, Dict[int, Path]]:
    """Manifest parts in ``out``, by shard count ``n`` then shard ``k``."""
    groups: Dict[int, Dict[int, Path]] = {}
    for f in out.glob("manifest.part*of*.csv") if out.is_dir() else []:
        m = _PART_RE.match(f.name)
        if m:
            groups.setdefault(int(m["n"]), {})[int(m["k"])] = f
    return groups


# ------------------------------------------------------------------------------ config


def comparable(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config without ``outputs.dir`` and ``title`` (a moved folder, a renamed file:
    the same run) and without the ``network`` record."""
    cfg = json.loads(json.dumps(dict(config), default=str))
    cfg.get("outputs", {}).pop("dir", None)
    cfg.pop("title", None)
    cfg.pop("network", None)  # compared on its own (batch.network.check_folder)
    return cfg


def _diff(a: Any, b: Any, path: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in list(dict.fromkeys([*a, *b]))
                for d in _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "<config>"]


def check_output_dir(out: Path, config: Mapping[str, Any], force: bool) -> bool:
    """Refuse an output folder that holds another run (unless ``force``).

    Returns
    -------
    bool
        True when the folder holds a run with a different config (allowed by ``force``).

    Raises
    ------
    FileExistsError
        If ``out`` holds a different resolved config, or is a non-empty folder that no
        run wrote, and ``force`` is False; the message names the differing keys.
    """
    stored = out / CONFIG_NAME
    if stored.is_file():
        old = yaml.safe_load(stored.read_text(encoding="utf-8")) or {}
        diff = _diff(comparable(old), comparable(config))
        if diff and not force:
            raise FileExistsError(f"`outputs.dir` '{out}' holds a run with a different config "
                                  f"({stored}); differing keys: {diff[:8]}. Pass -force to "
                                  "run this config there (unchanged maps are kept)")
        return bool(diff)
    # lock files and a concurrent shard's temporaries do not make a folder another run's
    foreign = [f for f in out.iterdir() if not (f.name.startswith(LOCK_NAME)
                                                 or _TEMP_RE.match(f.name))] if out.is_dir() else []
    if foreign and not force:
        raise FileExistsError(f"`outputs.dir` '{out}' is not empty and holds no {CONFIG_NAME}"
                              "; pass -force to write into it, or choose an empty folder")
    return False


def write_config(out: Path, config: Mapping[str, Any]) -> Path:
    """Write ``config.resolved.yaml`` atomically."""
    text = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
    return atomic_write(out / CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ----------------------------------------------------------------------------- markers


def marker_path(out: Path, item: WorkItem) -> Path:
    """Completion marker of ``item``."""
    return out / PROGRESS_DIR / f"{item.key}.json"


def write_marker(out: Path, item: WorkItem, rows: Sequence[Mapping[str, str]]) -> Path:
    """Mark ``item`` complete (atomically, after all its files): its digest and rows."""
    text = json.dumps({"digest": item.digest, "rows": list(rows)}, sort_keys=True, indent=0)
    return atomic_write(marker_path(out, item), lambda t: t.write_text(text, encoding="utf-8"))


def read_marker(out: Path, item: WorkItem,
                save: Sequence[str]) -> Optional[List[Dict[str, str]]]:
    """The manifest rows of a complete ``item``; None when it is not complete (no marker,
    another digest, an unreadable marker, or a listed file missing)."""
    path = marker_path(out, item)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("digest") != item.digest:
        return None
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        return None
    for row in rows:
        if not all(row.get(kind) and (out / row[kind]).is_file() for kind in save):
            return None
    return rows


def item_files(rows: Iterable[Mapping[str, str]], save: Sequence[str]) -> Set[str]:
    """Relative paths of every file the rows list."""
    return {row[kind] for row in rows for kind in save}


def clean_temps(out: Path, only: Optional[Set[str]] = None) -> int:
    """Remove temporary files a killed writer left in ``out`` (``.name.<hex>.tmp...``).

    Parameters
    ----------
    out : pathlib.Path
        The output folder.
    only : set of str or None
        Relative posix paths of the destinations whose temporaries may go (the files of
        this shard's items: other shards may be writing theirs); None removes all.

    Returns
    -------
    int
        How many were removed.
    """
    removed = 0
    for folder, _, files in os.walk(out):
        for name in files:
            m = _TEMP_RE.match(name)
            if not m:
                continue
            dest = (Path(folder) / m["name"]).relative_to(out).as_posix()
            if only is None or dest in only:
                try:
                    os.unlink(Path(folder) / name)
                    removed += 1
                except OSError:
                    pass
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run", removed)
    return removed


# ---------------------------------------------------------------------------- manifest


def columns(save: Sequence[str]) -> List[str]:
    """Manifest header for the ``save`` kinds."""
    return list(COLUMNS) + [k for k in SAVE_KINDS if k in save]


def write_manifest(path: Path, rows: Sequence[Mapping[str, str]],
                   save: Sequence[str]) -> Path:
    """Write manifest rows as CSV, atomically (``\\n`` line ends, header first)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(save), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_manifest(path: Path) -> List[Dict[str, str]]:
    """Rows of a manifest (or manifest part) as dicts of str; ValueError naming the file
    when it is not UTF-8 CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"manifest '{path}' is not a UTF-8 CSV file ({err}); re-run "
                         "dnn_saliency_batch to rewrite it") from None
