""":func:`evaluate_run`: every metric over the maps of a ``dnn_saliency_batch`` run.

The option checks, the results' assembly and the files written are here; the scoring
passes over the maps (localisation, faithfulness, randomisation) are
:mod:`dnnbrain.evaluate.passes`.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..batch.config import check_device
from ..batch.plan import unit_text
from ..batch.schema import Problems
from ..io.maps import atomic_write, existing_part
from ..metrics.faithfulness import ROAD_PERCENTAGES
from . import passes as _passes, report
from .compute import Options
from .load import PathLike, Run, StimLike, build_dnn, parse_unit, read_run
from .passes import Key, _per_map, _randomisation
from .plots import write_plots

log = logging.getLogger(__name__)

#: Metric families :func:`evaluate_run` computes, in table order.
METRICS = ("localisation", "road", "deletion_insertion", "randomisation")
#: Keyword arguments of :func:`evaluate_run` a YAML ``evaluate:`` mapping may hold.
#: Marker file beside results written by a run's own ``evaluate:`` section.
RUN_MARKER = ".written-by-run"
OPTIONS = ("metrics", "out_dir", "stim", "road_percentages", "road_noise", "n_steps",
           "randomisation_images", "pointing_tolerance", "batch_size", "seed", "device",
           "plots", "overwrite", "progress")
#: Stimuli whose network input is built at once (see :mod:`dnnbrain.evaluate.passes`).
CHUNK = _passes.CHUNK
JSON_NAME, CSV_NAME, MD_NAME = "metrics.json", "table.csv", "table.md"


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_options(metrics: Union[str, Sequence[str]], road_percentages: Sequence[float],
                  road_noise: float, n_steps: int, randomisation_images: int,
                  pointing_tolerance: float, batch_size: int, seed: int) -> Options:
    """Validate the settings of :func:`evaluate_run` (ValueError naming the parameter)."""
    names = [metrics] if isinstance(metrics, str) else list(metrics or [])
    bad = [m for m in names if m not in METRICS]
    if not names or bad:
        raise ValueError(f"`metrics` must be a non-empty list of {list(METRICS)}, got "
                         f"{bad or metrics!r}")
    try:
        pcts = tuple(float(p) for p in road_percentages)
    except (TypeError, ValueError):
        pcts = ()
    if not pcts or not all(0 <= p < 1 for p in pcts) or list(pcts) != sorted(set(pcts)):
        raise ValueError("`road_percentages` must be increasing numbers in [0, 1), got "
                         f"{road_percentages!r}")
    for name, v in (("road_noise", road_noise), ("pointing_tolerance", pointing_tolerance)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < np.inf:
            raise ValueError(f"`{name}` must be a finite number >= 0, got {v!r}")
    return Options(tuple(m for m in METRICS if m in names), pcts, float(road_noise),
                   _int("n_steps", n_steps, 1),
                   _int("randomisation_images", randomisation_images, 1),
                   float(pointing_tolerance), _int("batch_size", batch_size, 1),
                   _int("seed", seed, 0))


def _groups(run: Run) -> Dict[Key, List[int]]:
    """Manifest row indices per (target, method label), in target then method order."""
    order = {m["label"]: i for i, m in enumerate(run.config.get("methods", []))}
    groups: Dict[Key, List[int]] = {}
    for r, row in enumerate(run.rows):
        groups.setdefault((int(row["target"]), row["method"]), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 1e9))))


def _record(run: Run, row: Dict[str, str]) -> Dict[str, Any]:
    i = run.index[row["stimulus"]]
    labels = run.stim.labels
    unit = parse_unit(row["unit"])
    return {"stimulus": row["stimulus"], "target": int(row["target"]), "layer": row["layer"],
            "unit": list(unit) if isinstance(unit, tuple) else unit, "method": row["method"],
            "map": row[run.kind], "activation": float(row["activation"]),
            "label_unit": None if labels is None else int(labels[i]) + 1}


def _classes(run: Run, t: int, units: Sequence[Any]) -> List[str]:
    """The class names of target ``t``'s ``units`` from the manifest's ``class`` column,
    in unit order; empty unless every unit is a named class (the output layer's)."""
    named = {r["unit"]: r.get("class", "") for r in run.rows if r["target"] == str(t)}
    names = [named.get(unit_text(u), "") for u in units]
    return names if names and all(names) else []


def _targets(run: Run, records: List[Dict]) -> List[Dict[str, Any]]:
    out = []
    for t, tg in enumerate(run.config.get("targets", [])):
        units = ", ".join(unit_text(u) for u in tg["units"])
        names = _classes(run, t, tg["units"])
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        out.append({"index": t, "layer": tg["layer"], "units": tg["units"],
                    "reduce": tg["reduce"], "classes": names,
                    "label": f"targets[{t}]: {tg['layer']} units {units}"
                             + (f" ({', '.join(names)})" if names else "")
                             + f" (reduce {tg['reduce']})",
                    "short": f"{tg['layer']} " + (units if units == "predicted" else
                                                  f"units {units.replace(', ', ',')}")
                             + (f"\n({shown})" if names else ""),
                    "chance": report.chance(records, t)})
    return out


def evaluate_run(run_dir: PathLike, metrics: Union[str, Sequence[str]] = METRICS,
                 out_dir: Optional[PathLike] = None, stim: StimLike = None,
                 road_percentages: Sequence[float] = ROAD_PERCENTAGES,
                 road_noise: float = 0.01, n_steps: int = 32, randomisation_images: int = 4,
                 pointing_tolerance: float = 0.0, batch_size: int = 32, seed: int = 0,
                 device: Optional[str] = None, plots: bool = True, overwrite: bool = True,
                 progress: Optional[bool] = True, allow_code: bool = False,
                 by_run: bool = False) -> Dict[str, Any]:
    """Evaluate the saved maps of a ``dnn_saliency_batch`` run and compare its methods.

    Reads ``manifest.csv`` and ``config.resolved.yaml`` of ``run_dir``, rebuilds the
    network and the stimuli from the config, loads every map and computes, per map:

    * ``localisation`` — :func:`~dnnbrain.metrics.proportional_energy`,
      :func:`~dnnbrain.metrics.average_saliency_focus`,
      :func:`~dnnbrain.metrics.pointing_game`,
      :func:`~dnnbrain.metrics.relevance_rank_accuracy` against the stimulus's ground
      truth (boxes scaled from the original image to the map, else its mask; stimuli
      without either are skipped with a warning);
    * ``road`` — ROAD MoRF and LeRF curves and AUCs (Rong et al., 2022);
    * ``deletion_insertion`` — RISE's deletion and insertion curves and AUCs (Petsiuk et
      al., 2018);

    the score being the map's own unit at its own layer (for ``'predicted'``, the unit
    the manifest lists); and per (target, method):

    * ``randomisation`` — the cascading model-randomisation check (Adebayo et al., 2018)
      on the first ``randomisation_images`` stimuli, maps recomputed with the method's
      parameters from the config.

    Results are aggregated per (target, method) (mean, sample std, n) and written to
    ``out_dir``: ``metrics.json``, ``table.csv``, ``table.md`` and PNG plots
    (``localisation.png``, ``road.png``, ``deletion_insertion.png``,
    ``randomisation.png``), each atomically. See ``docs/evaluate.rst``.

    Every keyword can come from a YAML mapping (``evaluate_run(run, **cfg['evaluate'])``;
    :data:`OPTIONS` lists them).

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run folder (``manifest.csv``, ``config.resolved.yaml``, maps).
    metrics : str or sequence of str
        Families among :data:`METRICS`.
    out_dir : str, os.PathLike or None
        Output folder; None: ``run_dir/eval``.
    stim : str, os.PathLike, list of paths, Stimulus or None
        Stimuli overriding the config's (a ``.stim.csv`` with ground truth, the stimuli
        moved...); they must contain every stimID of the manifest.
    road_percentages : sequence of float
        Shares of pixels ROAD removes, increasing, in ``[0, 1)``.
    road_noise : float
        Standard deviation of ROAD's imputation noise (network-input units).
    n_steps : int
        Steps of the deletion/insertion games (curves have ``n_steps + 1`` points).
    randomisation_images : int
        Stimuli per (target, method) in the randomisation check.
    pointing_tolerance : float
        Pixels by which the pointing game grows the ground truth.
    batch_size : int
        Perturbed images per forward pass (and method batch size when recomputing).
    seed : int
        Seed of ROAD's noise, tie-breaks and re-initialisations; same seed, same results
        (whatever ``batch_size``). The global torch random state is left as it was.
    device : str or None
        ``'cpu'``, ``'cuda'``, ``'cuda:N'``...; None: the config's ``model.device``.
    plots : bool
        Write the PNG figures.
    overwrite : bool
        Replace results already in ``out_dir``; False raises FileExistsError instead.
    progress : bool or None
        tqdm progress bars (None: only on a terminal).
    allow_code : bool
        Let the run's ``model.factory`` be the user's own code (as the run itself needed
        ``allow_code``); not an option of a config's ``evaluate:`` section.
    by_run : bool
        The run's own ``evaluate:`` section is calling (:func:`dnnbrain.batch.run`): the
        results get a marker file (:data:`RUN_MARKER`), and a later call with
        ``overwrite=False`` (``dnn_saliency_eval RUN_DIR`` without ``-force``) replaces
        them instead of refusing. Results of any other call are never replaced without
        ``overwrite``.

    Returns
    -------
    dict
        The content of ``metrics.json`` (``run``, ``settings``, ``targets``, ``methods``,
        ``maps``, ``aggregate``), plus ``table`` (the Markdown text) and ``files`` (the
        paths written).

    Raises
    ------
    FileNotFoundError
        If ``run_dir``, its manifest or config, a listed map file or the stimuli are
        missing (the message names the path).
    ValueError
        On an invalid option (naming it and the valid choices) or a manifest that does
        not match the stimuli.
    FileExistsError
        If ``out_dir`` holds results and ``overwrite`` is False.
    """
    tic = time.perf_counter()
    opts = check_options(metrics, road_percentages, road_noise, n_steps,
                         randomisation_images, pointing_tolerance, batch_size, seed)
    if device is not None:
        problems = Problems()
        if check_device(problems, "device", device) is None:
            raise ValueError(f"`device` {problems.items[0][1]}")
    run = read_run(run_dir, stim)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "eval"
    above = existing_part(out)
    if above is not None and not above.is_dir():
        raise FileExistsError(f"`out_dir` (-out) '{out}' cannot be a folder: '{above}' is a "
                              "file")
    by_run_before = (out / RUN_MARKER).is_file()
    if not overwrite and (out / JSON_NAME).exists() and not by_run_before:
        raise FileExistsError(f"`out_dir` '{out}' already holds {JSON_NAME} of an earlier "
                              "dnn_saliency_eval; pass -force (overwrite=True) to replace it, "
                              "or -out DIR to write elsewhere")
    if by_run_before and not by_run:
        log.info("replacing the results the run's own evaluate: section wrote in '%s'", out)
    groups = _groups(run)
    records = [_record(run, row) for row in run.rows]
    needs_net = set(opts.metrics) - {"localisation"}
    cuda = list(range(torch.cuda.device_count())) if needs_net else []
    with torch.random.fork_rng(devices=cuda):  # building a network draws random numbers
        dnn = build_dnn(run.config, device, run.run_dir, allow_code) if needs_net else None
        torch.manual_seed(opts.seed)
        xs = _per_map(run, dnn, groups, records, opts, progress)
        rand = (_randomisation(run, dnn, groups, opts, progress)
                if "randomisation" in opts.metrics else {})
    settings: Dict[str, Any] = {"metrics": list(opts.metrics), "batch_size": opts.batch_size,
                                "seed": opts.seed}
    if "road" in opts.metrics:
        settings.update(road_percentages=list(opts.road_percentages),
                        road_noise=opts.road_noise)
    if "deletion_insertion" in opts.metrics:
        settings.update(n_steps=opts.n_steps, deletion_insertion_x=xs.get("deletion"))
    if "localisation" in opts.metrics:
        settings["pointing_tolerance"] = opts.pointing_tolerance
    if "randomisation" in opts.metrics:
        settings["randomisation_images"] = opts.randomisation_images
    result: Dict[str, Any] = {
        "run": {"dir": str(run.run_dir.absolute()), "title": run.config.get("title", ""),
                "model": run.config.get("model", {}).get("name")
                or run.config.get("model", {}).get("factory"),
                "stimuli": (run.config.get("stimuli") if stim is None else str(stim)
                            if isinstance(stim, (str, os.PathLike)) else str(run.stim.root)),
                "n_maps": len(run.rows)},
        "settings": settings, "targets": _targets(run, records),
        "methods": list(dict.fromkeys(label for _, label in groups)),
        "maps": records, "aggregate": report.aggregate(groups, records, rand)}
    table = report.markdown(result)
    files = [report.write_json(out / JSON_NAME, result),
             report.write_csv(out / CSV_NAME, result), report.write_markdown(out / MD_NAME,
                                                                             table)]
    if plots:
        files += write_plots(out, result)
    if by_run:
        atomic_write(out / RUN_MARKER, lambda f: Path(f).write_text(
            "written by the evaluate: section of dnn_saliency_batch; dnn_saliency_eval "
            "replaces these results without -force\n", encoding="utf-8"))
    else:
        (out / RUN_MARKER).unlink(missing_ok=True)
    log.info("evaluated %d maps of %d methods in %.1f s; results in %s", len(run.rows),
             len(result["methods"]), time.perf_counter() - tic, out)
    return {**result, "table": table, "files": [str(f) for f in files]}


__all__ = ["evaluate_run", "check_options", "METRICS", "OPTIONS"]
