"""The metrics of one group of maps: one method, one target, a chunk of stimuli.

Thin, batched calls into :mod:`dnnbrain.metrics`; the score of every faithfulness
metric is the map's own unit at its own layer (a ``'vanilla'`` method's ``activation``,
whose forward pass stops at that layer).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..dnn.algo.calls import Call
from ..dnn.algo.registry import make_method
from ..dnn.models import DNN
from ..metrics import (PerturbationCurves, average_saliency_focus, deletion_insertion,
                       model_randomisation, pointing_game, proportional_energy, road,
                       relevance_rank_accuracy, saliency_magnitude)

log = logging.getLogger(__name__)

#: Localisation metrics, in table order.
LOCALISATION = ("proportional_energy", "average_saliency_focus", "pointing_game",
                "relevance_rank_accuracy")


@dataclass(frozen=True)
class Options:
    """Validated settings of an evaluation (see :func:`dnnbrain.evaluate.evaluate_run`)."""

    metrics: Tuple[str, ...]
    road_percentages: Tuple[float, ...]
    road_noise: float
    n_steps: int
    randomisation_images: int
    pointing_tolerance: float
    batch_size: int
    seed: int


def localisation(mag: np.ndarray, mask: np.ndarray, tolerance: float) -> Dict[str, Any]:
    """The four localisation metrics of one magnitude map ``(H, W)`` against a bool mask
    ``(H, W)``, plus ``gt_area_fraction`` (:math:`|G| / HW`: the chance level of
    proportional energy, rank accuracy and pointing game for a map of random values)."""
    return {"proportional_energy": proportional_energy(mag, mask),
            "average_saliency_focus": average_saliency_focus(mag, mask),
            "pointing_game": pointing_game(mag, mask, tolerance),
            "relevance_rank_accuracy": relevance_rank_accuracy(mag, mask),
            "gt_area_fraction": float(mask.mean())}


def magnitudes(maps: Sequence[np.ndarray], size: Tuple[int, int], what: str) -> np.ndarray:
    """``(N, H, W)`` float64 magnitudes of ``maps`` at the network input ``size``; maps of
    another size are resized bilinearly (with a warning)."""
    mag = saliency_magnitude(np.stack(maps), "maps", batch=True)
    if mag.shape[1:] != tuple(size):
        log.warning("%s: maps are %s, the network input %s: resized (bilinear) for the "
                    "faithfulness metrics", what, mag.shape[1:], tuple(size))
        t = torch.from_numpy(mag)[:, None]
        mag = torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear",
                                              align_corners=False)[:, 0].clamp_min(0).numpy()
    return mag


def faithfulness(dnn: DNN, layer: str, reduce: str, units: List[Any], x: torch.Tensor,
                 mag: np.ndarray, opts: Options, call: Call = None
                 ) -> Dict[str, PerturbationCurves]:
    """ROAD MoRF/LeRF and deletion/insertion curves of a batch of maps.

    Parameters
    ----------
    dnn : DNN
        The network.
    layer, reduce : str
        The maps' target layer and channel reduction.
    units : list
        The unit (from 1) each map explains (``'predicted'`` already resolved).
    x : torch.Tensor
        ``(N, 3, H, W)`` network input, one row per map.
    mag : numpy.ndarray
        ``(N, H, W)`` map magnitudes.
    opts : Options
        Which families, percentages, steps, noise, seed, batch size.
    call : None, 'first', 'last' or int
        The target's explained call (the run's ``targets[].call``).

    Returns
    -------
    dict of str to PerturbationCurves
        ``'road_morf'``, ``'road_lerf'``, ``'deletion'``, ``'insertion'`` (those asked for).
    """
    score = make_method(dnn, "vanilla", layer, units[0], reduce, opts.batch_size, call=call)
    out: Dict[str, PerturbationCurves] = {}
    if "road" in opts.metrics:
        for order in ("morf", "lerf"):
            out[f"road_{order}"] = road(score, x, mag, opts.road_percentages, order,
                                        units=list(units), noise=opts.road_noise,
                                        seed=opts.seed, batch_size=opts.batch_size)
    if "deletion_insertion" in opts.metrics:
        games = deletion_insertion(score, x, mag, n_steps=opts.n_steps, units=list(units),
                                   seed=opts.seed, batch_size=opts.batch_size)
        out["deletion"], out["insertion"] = games.deletion, games.insertion
    return out


def curve_record(curves: Mapping[str, PerturbationCurves], k: int) -> Dict[str, Any]:
    """Map ``k``'s part of the curves: per-map JSON fields ``road`` and/or
    ``deletion_insertion``."""
    rec: Dict[str, Any] = {}
    if "road_morf" in curves:
        morf, lerf = curves["road_morf"], curves["road_lerf"]
        rec["road"] = {"original": float(morf.original[k]),
                       "morf": morf.scores[k].tolist(), "lerf": lerf.scores[k].tolist(),
                       "morf_auc": float(morf.auc[k]), "lerf_auc": float(lerf.auc[k])}
    if "deletion" in curves:
        de, ins = curves["deletion"], curves["insertion"]
        rec["deletion_insertion"] = {"deletion": de.scores[k].tolist(),
                                     "insertion": ins.scores[k].tolist(),
                                     "deletion_auc": float(de.auc[k]),
                                     "insertion_auc": float(ins.auc[k])}
    return rec


def randomisation(dnn: DNN, method: Mapping[str, Any], layer: str, reduce: str,
                  x: torch.Tensor, units: List[Any], opts: Options, call: Call = None
                  ) -> Dict[str, Any]:
    """Cascading model randomisation (Adebayo et al., 2018) of one method and target.

    The maps are recomputed with the method's parameters from the run config, on a copy
    of the network whose layers (every parametrised layer up to ``layer``, top down) are
    re-initialised one after the other (:func:`~dnnbrain.metrics.model_randomisation`),
    at the target's explained ``call``.

    Returns
    -------
    dict
        ``layers`` (None for the trained network, then the layer randomised at each step),
        ``spearman_abs``, ``spearman_signed``, ``ssim`` (means over images, one per step;
        None where undefined) and ``final_spearman_abs`` (per image, after the last step).
    """
    # model_randomisation's own `seed` (the re-initialisations) shadows a method's `seed`:
    # the method keeps its default seed, the same for every step, so steps stay comparable
    params = {k: v for k, v in method.items() if k not in ("name", "label", "seed")}
    steps = model_randomisation(dnn, method["name"], x, layer, list(units), seed=opts.seed,
                                preprocessed=True, reduce=reduce,
                                batch_size=opts.batch_size, call=call, **params)

    def num(v: float) -> Optional[float]:
        return float(v) if np.isfinite(v) else None

    return {"layers": [s.layer for s in steps],
            "spearman_abs": [num(s.spearman_abs) for s in steps],
            "spearman_signed": [num(s.spearman_signed) for s in steps],
            "ssim": [num(s.ssim) for s in steps],
            "final_spearman_abs": [num(v) for v in steps[-1].per_image["spearman_abs"]]}
