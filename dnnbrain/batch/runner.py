"""Running a run config: work items, resume, shards, manifest, gallery.

>>> from dnnbrain.batch import run
>>> result = run("docs/examples/demo_run.yaml", out="/tmp/demo")   # doctest: +SKIP
>>> result.manifest                                                  # doctest: +SKIP
PosixPath('/tmp/demo/manifest.csv')
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from ..dnn.algo.registry import make_method
from ..dnn.algo.target import LABEL
from ..dnn.classes import ClassNames, class_names, class_of
from .config import Prepared, prepare
from .gallery import link_evaluation, link_probe, write_index
from .launch import parse_shard, runtime_device
from .merge import merge_parts
from .probe import run_probe
from .plan import Shard, WorkItem, make_plan, map_files, map_stem, shard_items, unit_text
from . import network
from .lock import folder_lock, run_lock
from .unitstats import BatchStats
from .store import (CONFIG_NAME, MANIFEST_NAME, check_output_dir, clean_temps, marker_path,
                    part_name, read_marker, write_config, write_manifest)
from .writer import MapWriter

log = logging.getLogger(__name__)
ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]


@dataclass
class RunResult:
    """What a call of :func:`run` did.

    Attributes
    ----------
    out_dir : pathlib.Path
        The output folder.
    manifest : pathlib.Path or None
        ``manifest.csv`` once the whole run is complete (for a shard: once every shard's
        part exists and was merged), else this shard's part; None for a dry run.
    config : dict
        The resolved config.
    shard : (int, int) or None
        ``(k, n)`` for shard ``k`` of ``n``.
    items : list of WorkItem
        This process's work items.
    todo : list of WorkItem
        The items that were (or, for a dry run, would be) computed; the others were
        already complete and were skipped.
    maps : int
        Maps computed.
    compute_s : float
        Seconds spent in the methods' ``backprop`` calls.
    forward_s : float
        Seconds of the runner's own forward passes for the manifest's activations and
        predicted classes, where the methods' passes did not give them, and of the
        one-row probe per target that checks whether its output is the network's
        (:mod:`dnnbrain.batch.unitstats`).
    write_s : float
        Seconds the writer threads spent writing the maps' files and markers, summed
        over the threads (they write while the next item computes).
    evaluate_s : float
        Seconds of the ``evaluate:`` section (0 without one).
    wall_s : float
        Seconds of the whole call.
    dry_run : bool
        Nothing was computed or written.
    """

    out_dir: Path
    manifest: Optional[Path]
    config: Dict[str, Any]
    shard: Optional[Shard]
    items: List[WorkItem]
    todo: List[WorkItem]
    maps: int = 0
    compute_s: float = 0.0
    forward_s: float = 0.0
    write_s: float = 0.0
    evaluate_s: float = 0.0
    wall_s: float = 0.0
    dry_run: bool = False

    @property
    def maps_per_s(self) -> float:
        """Maps per second of the maps alone: :attr:`maps` / :attr:`compute_s` (0 when
        nothing was computed)."""
        return self.maps / self.compute_s if self.compute_s > 0 else 0.0

    @property
    def run_maps_per_s(self) -> float:
        """Maps per second of the whole run (reading, computing, writing, manifest,
        gallery, evaluation): :attr:`maps` / :attr:`wall_s`."""
        return self.maps / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Batch:
    """One stimulus batch, its network input and what every target's unit did."""

    start: int
    x_cpu: torch.Tensor
    x: torch.Tensor
    stats: BatchStats
    labels: Optional[List[int]] = None  # each stimulus's unit 'label' (label + 1)


def describe(item: WorkItem, config: Mapping[str, Any]) -> str:
    """One line about a work item, as ``-dry-run`` lists it."""
    t = config["targets"][item.target]
    units = ", ".join(unit_text(u) for u in t["units"])
    n = (item.stop - item.start) * len(t["units"])
    return (f"{item.key}: {config['methods'][item.method]['label']} on targets[{item.target}]"
            f" ({t['layer']} units {units}) for stimuli {item.start}..{item.stop - 1}"
            f" ({n} maps)")


def _read_batch(dnn: Any, prep: Prepared, item: WorkItem) -> torch.Tensor:
    """The network input ``(B, 3, H, W)`` (CPU) of an item's stimuli."""
    return dnn.test_transform.batch([str(p) for p in prep.stim.paths[item.start:item.stop]])


def _load_batch(prep: Prepared, item: WorkItem, x_cpu: torch.Tensor, device: torch.device,
                dnn: Any, ends: Dict[Tuple[int, tuple], bool]) -> _Batch:
    """A stimulus batch on the device, its labels where a target asks for them, and its
    manifest figures still to come (:class:`~dnnbrain.batch.unitstats.BatchStats`)."""
    x = x_cpu.to(device)
    targets = prep.config["targets"]
    labels = None  # each stimulus's 'label' unit, where a target asks for it
    if any(LABEL in t["units"] for t in targets):
        labels = [int(v) + 1 for v in prep.stim.labels[item.start:item.stop]]
    return _Batch(item.start, x_cpu, x, BatchStats(dnn, targets, x, labels, ends), labels)


def _rows(config: Mapping[str, Any], item: WorkItem, ids: Sequence[str],
          batch: _Batch, dnn: Any, names: Optional[ClassNames]) -> List[Dict[str, str]]:
    """Manifest rows of an item: stimulus-major, then unit; ``class`` names the unit's
    class (``names``) on the output layer, else it is empty."""
    target, method = config["targets"][item.target], config["methods"][item.method]
    acts, actual, predicted = batch.stats.of(item.target)
    rows = []
    for i in range(item.stop - item.start):
        sid = ids[item.start + i]
        for j, u in enumerate(target["units"]):
            row = {"stimulus": sid, "target": str(item.target), "layer": target["layer"],
                   "unit": actual[j][i], "requested_unit": unit_text(u),
                   "class": (class_of(dnn, target["layer"], int(actual[j][i]), names)
                             if names and actual[j][i].isdigit() else None) or "",
                   "reduce": target["reduce"], "method": method["label"],
                   "activation": f"{float(acts[i, j]):.9g}",
                   "predicted_class": str(predicted[i]),
                   "network": config["network"]["fingerprint"]}
            row.update(map_files(method["label"], target["layer"], u, map_stem(sid),
                                 config["outputs"]["save"], target.get("call")))
            rows.append(row)
    return rows


def _item_paths(config: Mapping[str, Any], item: WorkItem, ids: Sequence[str]) -> List[str]:
    target, label = config["targets"][item.target], config["methods"][item.method]["label"]
    files = [f for sid in ids[item.start:item.stop] for u in target["units"]
             for f in map_files(label, target["layer"], u, map_stem(sid),
                                config["outputs"]["save"], target.get("call")).values()]
    return files + [f".progress/{item.key}.json"]


def _compute(prep: Prepared, todo: Sequence[WorkItem], out: Path, workers: int,
             progress: Optional[bool]) -> Tuple[int, float, float, float]:
    """Compute and write ``todo``; returns (maps, seconds inside ``backprop``, seconds
    the writers spent, seconds of the runner's own forward passes for the manifest)."""
    cfg = prep.config
    device = runtime_device(cfg["model"]["device"])
    dnn = prep.dnn.to(device)
    units = [len(t["units"]) for t in cfg["targets"]]
    total = sum((it.stop - it.start) * units[it.target] for it in todo)
    writer = MapWriter(out, cfg["outputs"], dnn.test_transform, workers)
    bar = tqdm(total=total, unit="map", disable=None if progress is None else not progress,
               desc="saliency", dynamic_ncols=True)
    objs: Dict[Tuple[int, int], Any] = {}
    batch: Optional[_Batch] = None
    compute = forward = 0.0
    ends: Dict[Tuple[int, tuple], bool] = {}  # (target, input shape) -> its output ends the net
    devices = [device.index or 0] if device.type == "cuda" else []
    firsts = [it for k, it in enumerate(todo) if k == 0 or todo[k - 1].start != it.start]
    following = {a.start: b for a, b in zip(firsts, firsts[1:])}
    names = class_names(dnn, prep.stim)
    reader = ThreadPoolExecutor(1, "dnnbrain-reader")  # reads the next batch meanwhile
    pending = {it.start: reader.submit(_read_batch, dnn, prep, it) for it in firsts[:1]}
    try:
        with torch.random.fork_rng(devices=devices):
            for it in todo:
                if batch is None or batch.start != it.start:
                    x_cpu = pending.pop(it.start).result()
                    nxt = following.get(it.start)
                    if nxt is not None and nxt.start not in pending:
                        pending[nxt.start] = reader.submit(_read_batch, dnn, prep, nxt)
                    forward += batch.stats.forward_s if batch is not None else 0.0
                    batch = _load_batch(prep, it, x_cpu, device, dnn, ends)
                    writer.submit_views(prep.stim.ids[it.start:it.stop], x_cpu)
                if (it.target, it.method) not in objs:
                    t, m = cfg["targets"][it.target], dict(cfg["methods"][it.method])
                    name = m.pop("name")
                    m.pop("label")
                    uu = [tuple(u) if isinstance(u, list) else u for u in t["units"]]
                    objs[it.target, it.method] = make_method(
                        dnn, name, t["layer"], uu, t["reduce"], cfg["batch_size"],
                        t.get("call"), **m)
                want = batch.stats.wants(it.target)  # its clean pass spares the forward
                torch.manual_seed(cfg["seed"] + it.index)
                tic = time.perf_counter()
                obj = objs[it.target, it.method]
                with contextlib.ExitStack() as stack:
                    if LABEL in cfg["targets"][it.target]["units"]:
                        stack.enter_context(obj.labelled(batch.labels))
                    clean = stack.enter_context(obj.clean_output()) if want else None
                    maps = obj.backprop(batch.x, preprocessed=True)
                compute += time.perf_counter() - tic
                if clean is not None:
                    batch.stats.take(it.target, clean.output)
                writer.submit(it, _rows(cfg, it, prep.stim.ids, batch, dnn, names), maps,
                              batch.x_cpu)
                bar.update(maps.shape[0] * maps.shape[1])
        forward += batch.stats.forward_s if batch is not None else 0.0
        writer.close()
    except BaseException:
        writer.close(cancel=True)
        raise
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return total, compute, writer.seconds, forward


def _evaluate(outdir: Path, options: Mapping[str, Any], progress: Optional[bool],
              allow_code: bool = False) -> None:
    """The ``evaluate:`` section: :func:`dnnbrain.evaluate.evaluate_run` on the finished run;
    a relative ``out_dir`` is inside the run folder. Results an earlier
    ``dnn_saliency_eval`` wrote there are left as they are (a warning says so) unless
    the section sets ``overwrite``."""
    from ..evaluate import evaluate_run
    from ..evaluate.core import JSON_NAME, RUN_MARKER
    opts = dict(options)
    if opts.get("out_dir") is not None:
        opts["out_dir"] = outdir / opts["out_dir"]
    there = Path(opts.get("out_dir") or outdir / "eval")
    if (there / JSON_NAME).is_file() and not (there / RUN_MARKER).is_file() \
            and "overwrite" not in opts:  # a user's dnn_saliency_eval results stay
        log.warning("'%s' holds results of dnn_saliency_eval: the run's evaluate: section "
                    "leaves them (evaluate: {overwrite: true} replaces them)", there)
        return
    evaluate_run(outdir, progress=progress,
                 allow_code=allow_code, by_run=True, **opts)


def run(config: ConfigLike, force: bool = False, dry_run: bool = False,
        shard: Union[str, Shard, None] = None, out: Optional[Union[str, os.PathLike]] = None,
        progress: Optional[bool] = None, workers: int = 2,
        allow_code: bool = False) -> RunResult:
    """Run a saliency experiment described by a run config (see ``docs/batch.rst``).

    Parameters
    ----------
    config : str, os.PathLike or mapping
        A YAML run config, or the config as a dict; validated first (all problems at once).
    force : bool
        Accept an output folder holding a run with a different config (or files of no
        run). Maps whose inputs did not change are kept; the others are recomputed.
    dry_run : bool
        List the work (:attr:`RunResult.todo`) without computing or writing anything.
    shard : 'k/n', (k, n) or None
        Compute only shard ``k`` (from 0) of ``n``; None reads torchrun's or SLURM's
        variables (:func:`dnnbrain.batch.launch.parse_shard`), else one process does
        everything.
    out : str, os.PathLike or None
        Overrides ``outputs.dir``.
    progress : bool or None
        Show a tqdm bar (None: only on a terminal).
    workers : int
        Writer threads (0: write in the computing thread).
    allow_code : bool
        Let ``model.factory`` name the user's own code (see :func:`load_config`); the
        config alone can never turn this on.

    Returns
    -------
    RunResult

    Raises
    ------
    ValueError
        On an invalid config (every problem listed) or a bad ``shard``.
    FileExistsError
        If the output folder holds another run, or maps of another network (both
        fingerprints named), and ``force`` is False; at once (``RunLockedError``) if
        another live run holds the folder (:mod:`dnnbrain.batch.lock`).
    """
    tic = time.perf_counter()
    sh = parse_shard(shard)
    prep = prepare(config, out, allow_code)
    cfg, save = prep.config, prep.config["outputs"]["save"]
    outdir = Path(cfg["outputs"]["dir"])
    plan = make_plan(cfg, len(prep.stim))
    mine = shard_items(plan, sh)
    check_output_dir(outdir, cfg, force)  # refused before the folder is locked or made
    network.check_folder(outdir, CONFIG_NAME, cfg["network"], force)
    if dry_run:  # no lock, nothing written
        todo = [it for it in mine if read_marker(outdir, it, save) is None]
        log.info("dry run%s: %d of %d work items to compute, %d complete", _where(sh),
                 len(todo), len(mine), len(mine) - len(todo))
        return RunResult(outdir, None, cfg, sh, mine, todo, dry_run=True,
                         wall_s=time.perf_counter() - tic)
    with run_lock(outdir, sh):
        return _run_locked(prep, plan, mine, sh, force, workers, progress, tic, allow_code)


def _where(sh: Optional[Shard]) -> str:
    """``' (shard k/n)'`` or ``''``, for messages."""
    return "" if sh is None else f" (shard {sh[0]}/{sh[1]})"


def _run_locked(prep: Prepared, plan: List[WorkItem], mine: List[WorkItem],
                sh: Optional[Shard], force: bool, workers: int, progress: Optional[bool],
                tic: float, allow_code: bool) -> RunResult:
    """:func:`run` once the output folder is locked (the folder checked again: a run may
    have finished there meanwhile)."""
    cfg, save = prep.config, prep.config["outputs"]["save"]
    outdir = Path(cfg["outputs"]["dir"])
    changed = check_output_dir(outdir, cfg, force)
    new_net = network.check_folder(outdir, CONFIG_NAME, cfg["network"], force)
    todo = [it for it in mine if read_marker(outdir, it, save) is None]
    result = RunResult(outdir, None, cfg, sh, mine, todo)
    if changed:
        log.warning("'%s' holds a run with another config; -force: maps whose inputs "
                    "changed are recomputed", outdir)
    write_config(outdir, cfg)
    prep.dnn = network.use_run_network(prep.dnn, outdir, cfg["network"], replace=new_net)
    if sh is not None:
        with folder_lock(outdir):  # not while a merge reads the parts (see .merge)
            for name in (part_name(*sh), MANIFEST_NAME):
                (outdir / name).unlink(missing_ok=True)
        clean_temps(outdir, {f for it in mine for f in _item_paths(cfg, it, prep.stim.ids)})
    else:
        clean_temps(outdir)
    result.maps, result.compute_s, result.write_s, result.forward_s = _compute(
        prep, todo, outdir, workers, progress)
    rows = []
    for it in mine:
        item_rows = read_marker(outdir, it, save)
        if item_rows is None:
            raise FileNotFoundError(f"work item {it.key} lost files while running (marker "
                                    f"{marker_path(outdir, it)}); run again to redo it")
        rows += item_rows
    if sh is None:
        result.manifest = write_manifest(outdir / MANIFEST_NAME, rows, save)
        write_index(outdir, cfg, rows, prep.stim, prep.dnn)
    else:
        result.manifest = write_manifest(outdir / part_name(*sh), rows, save)
        result.manifest = merge_parts(prep, plan, sh[1], strict=False) or result.manifest
    if cfg.get("evaluate") is not None and result.manifest.name == MANIFEST_NAME:
        ev = time.perf_counter()
        _evaluate(outdir, cfg["evaluate"], progress, allow_code)  # single or merging process
        result.evaluate_s = time.perf_counter() - ev
        where = cfg["evaluate"].get("out_dir")
        link_evaluation(outdir, None if where is None else outdir / where)
    if cfg.get("probe") is not None and result.manifest.name == MANIFEST_NAME:
        run_probe(outdir, cfg, prep.dnn, prep.stim, progress)  # single or merging process
        link_probe(outdir, cfg)
    result.wall_s = time.perf_counter() - tic
    log.info("%s%s: computed %d of %d work items (%d already complete): %d maps; "
             "%.1f maps/s for the maps alone (%.2f s in the methods), %.1f maps/s for the "
             "whole run (%.2f s; writing %.2f s in the writer threads, forward passes for "
             "the manifest %.2f s, evaluation %.2f s); manifest %s", outdir, _where(sh),
             len(todo), len(mine), len(mine) - len(todo), result.maps, result.maps_per_s,
             result.compute_s, result.run_maps_per_s, result.wall_s, result.write_s,
             result.forward_s, result.evaluate_s, result.manifest)
    return result
