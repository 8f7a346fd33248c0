"""Time every metric of :mod:`dnnbrain.metrics` on generated shape images and the demo net.

Run: ``python benchmarks/bench_metrics.py [--n 100] [--threads 1] [--n-steps 16]
[--batch 128] [--seed 7]``; ``--quantus`` instead compares ROAD with Quantus's (see
:func:`road_vs_quantus`). Maps are vanilla gradients of each image's true class at
``fc2`` (64x64), ground truth the generator's boxes. Prints one row per metric: total
seconds, milliseconds per map, and the metric's mean value (a sanity check that the
numbers are sensible, not a result). Uses the shipped ShapeNet weights when present,
random weights otherwise (timings are the same; values are not meaningful then).
"""
from __future__ import annotations

import argparse
import functools
import logging
import time
from typing import Callable, List, Tuple

import numpy as np
import torch

from dnnbrain.demo.shapes import make_dataset
from dnnbrain.dnn.algo import VanillaSaliencyImage, saliency
from dnnbrain.dnn.models import DNN, ShapeNet
from dnnbrain.metrics import (average_saliency_focus, boxes_to_mask, deletion_insertion,
                              edge_detector_map, model_randomisation, pointing_game,
                              proportional_energy, relevance_rank_accuracy, road)

log = logging.getLogger("bench_metrics")


def timed(fn: Callable[[], object]) -> Tuple[float, object]:
    """Wall time of one call of ``fn`` and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def true_class_maps(dnn, x: torch.Tensor, units: np.ndarray, method: str = "vanilla",
                    layer: str = "fc2", **params) -> np.ndarray:
    """``method`` maps of each image's own unit: one batched call per distinct unit."""
    out = None
    for u in np.unique(units):
        idx = np.flatnonzero(units == u)
        m = saliency(dnn, x[idx], method, layer=layer, unit=int(u), preprocessed=True,
                     **params)
        out = np.zeros((len(x),) + m.shape[1:], np.float32) if out is None else out
        out[idx] = m
    return out


class _Resize(torch.nn.Module):
    """Bilinear resize of ``(B, C, H, W)`` to ``size`` x ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(self.size, self.size),
                                               mode="bilinear", antialias=True)


class _QuantusPixelROAD:
    """Quantus's ROAD loop (``quantus.ROAD.evaluate_batch``, 0.6.0) with two fixes: the
    ranking is over the ``H*W`` pixels of an ``(N, 1, H, W)`` map (Quantus broadcasts the
    map to ``(N, 3, H, W)`` and ranks ``3 H W`` entries whose indices then overflow its
    own ``H*W`` pixel mask: IndexError on any RGB image), and the curve averages every
    batch (Quantus's ``custom_postprocess`` averages the first batch only). Imputation (Quantus's
    ``noisy_linear_imputation``), model wrapper and scoring are Quantus's own."""

    @staticmethod
    def make(noise: float, percentages: List[float]):
        import quantus

        class PixelROAD(quantus.ROAD):
            def evaluate_batch(self, model, x_batch, y_batch, a_batch, **kwargs):
                order = np.argsort(-a_batch.reshape(len(a_batch), -1), axis=1)
                results = []
                for p in self.percentages:
                    top = order[:, : int(self.a_size * p / 100)]
                    xp = np.stack([self.perturb_func(arr=xe, indices=t)
                                   for xe, t in zip(x_batch, top)])
                    xi = model.shape_input(xp, x_batch.shape, channel_first=True,
                                           batched=True)
                    results.append(y_batch == np.argmax(model.predict(xi), axis=-1))
                return [np.stack(results, axis=1).astype(int)]

            def custom_postprocess(self, **kwargs):  # Quantus averages batch 0 only
                self.per_image = np.concatenate(self.evaluation_scores)
                self.evaluation_scores = dict(zip(self.percentages, self.per_image.mean(0)))

        return PixelROAD(noise=noise, percentages=percentages, disable_warnings=True,
                         display_progressbar=False)


def road_vs_quantus(args: argparse.Namespace) -> int:
    """ROAD MoRF of dnnbrain against Quantus's on the same images, maps and model.

    ``--net shapenet224`` (default): the shipped, trained ShapeNet behind a bilinear
    224 -> 64 px resize, on generated shape images upsampled to 224 px (a model whose
    predictions change as the shape is removed: informative curves, cheap forwards);
    ``--net alexnet``: AlexNet with random weights (seeded; it predicts one class for
    every image, so the curve is flat at 1, but its forwards cost what a real network's
    do). Maps = the magnitude of the vanilla gradient of the predicted class, made
    tie-free (replaced by their ranks) so both rank pixels identically; percentages
    12.5 % ... 87.5 %, where Quantus's ``floor(p HW)`` and dnnbrain's ``round(p HW)``
    agree. Both score the same thing: does the class predicted for the original image
    survive (Quantus's ROAD value); dnnbrain through a callable returning the one-hot
    prediction. Noise 0 on both
    sides (Quantus's noise is unseeded), so the curves must be equal. dnnbrain's row is
    its default solver (C on the CPU when a compiler is there, see
    :mod:`dnnbrain.metrics.imputation_c`); the row below it is the same call on the torch
    solver.
    """
    import quantus.functions.perturb_func as qpf
    from dnnbrain.dnn.models import AlexNet
    from dnnbrain.metrics import faithfulness, imputation_c, linear_impute_batch

    torch.manual_seed(args.seed)
    images, _, _, _ = make_dataset(args.n, args.seed)
    if args.net == "alexnet":
        dnn = AlexNet(pretrained=False)
        x = dnn.test_transform.batch(list(images))
    else:
        small = ShapeNet()
        x = torch.nn.functional.interpolate(small.test_transform.batch(list(images)),
                                            size=(224, 224), mode="bilinear")
        dnn = DNN(torch.nn.Sequential(_Resize(small.img_size), small.model),
                  test_transform=None)
    net = dnn.model.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 32]).argmax(1) for i in range(0, len(x), 32)])
    grads = true_class_maps(dnn, x, pred.numpy() + 1, layer=dnn.layers[-1])
    mag = np.abs(grads).sum(1).reshape(len(x), -1)
    rank = np.empty_like(mag)
    np.put_along_axis(rank, np.argsort(mag, 1, kind="stable"),
                      np.arange(mag.shape[1], dtype=mag.dtype)[None], 1)
    maps = rank.reshape(len(x), 1, *x.shape[2:]) + 1
    pcts = [12.5 * k for k in range(1, 8)]
    n_cls = int(net(x[:1]).shape[1])

    def predicted_one_hot(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.one_hot(net(t).argmax(1), n_cls).float()

    def ours_road():
        return road(predicted_one_hot, x, maps[:, 0], [p / 100 for p in pcts], "morf",
                    units=(pred + 1).tolist(), noise=0.0, batch_size=args.batch)
    t_ours, ours = timed(ours_road)
    default_impute = faithfulness.noisy_linear_impute_batch
    faithfulness.noisy_linear_impute_batch = functools.partial(default_impute,
                                                               backend="torch")
    try:  # the same with the torch solver instead of the C one
        t_torch, ours_torch = timed(ours_road)
    finally:
        faithfulness.noisy_linear_impute_batch = default_impute
    metric = _QuantusPixelROAD.make(0.0, pcts)
    t_q, _ = timed(lambda: metric(model=net, x_batch=x.numpy(), y_batch=pred.numpy(),
                                  a_batch=maps.astype(np.float32), device="cpu",
                                  batch_size=args.batch, softmax=False))
    q_curve = np.array([metric.evaluation_scores[p] for p in pcts])
    k = min(2, args.n)  # imputations compared directly: Quantus's, noise off
    h, w = x.shape[2:]
    order = np.argsort(-maps[:k].reshape(k, -1), axis=1)
    diff = 0.0
    for p in pcts:
        cnt = int(h * w * p / 100)
        rem = np.zeros((k, h * w), bool)
        np.put_along_axis(rem, order[:, :cnt], True, 1)
        mine = linear_impute_batch(x[:k], torch.from_numpy(rem.reshape(k, h, w))).numpy()
        for i in range(k):
            q = qpf.noisy_linear_imputation(x[i].numpy().astype(np.float64),
                                            order[i, :cnt], noise=0.0)
            diff = max(diff, float(np.abs(mine[i] - q).max()))
    span = float(x.max() - x.min())
    n_diff = int((ours.scores != metric.per_image).sum())
    n_diff_torch = int((ours_torch.scores != metric.per_image).sum())
    print(f"ROAD MoRF, {args.n} maps, {args.net} {h}x{w}, {len(pcts)} "  # noqa: T201
          f"percentages, {torch.get_num_threads()} thread(s)\n"
          f"{'':10} {'total s':>8} {'ms/map':>8}  curve (share of predictions kept)\n"
          f"{'dnnbrain':10} {t_ours:8.2f} {1000 * t_ours / args.n:8.1f}  "
          f"{np.round(ours.mean_curve, 3).tolist()}  (solver: "
          f"{'C' if imputation_c.library() is not None else 'torch, no C compiler'})\n"
          f"{'  torch':10} {t_torch:8.2f} {1000 * t_torch / args.n:8.1f}  "
          f"{np.round(ours_torch.mean_curve, 3).tolist()}  (solver: torch)\n"
          f"{'quantus':10} {t_q:8.2f} {1000 * t_q / args.n:8.1f}  "
          f"{np.round(q_curve, 3).tolist()}\n"
          f"speed-up {t_q / t_ours:.1f}x (torch solver {t_q / t_torch:.1f}x); max |curve "
          f"difference| "
          f"{np.abs(ours.mean_curve - q_curve).max():.3g} ({n_diff} of {ours.scores.size} "
          f"image x percentage outcomes differ; torch solver {n_diff_torch}); max "
          f"|imputation difference| "
          f"over {k} images x {len(pcts)} percentages {diff:.3g} ({diff / span:.2g} of "
          f"the input range {span:.2f})")
    return 0


def main(argv=None) -> int:
    """Time the metrics and print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="number of maps (default 100)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine two threads "
                        "are several times slower for this small net)")
    p.add_argument("--n-steps", type=int, default=16, help="deletion/insertion steps")
    p.add_argument("--batch", type=int, default=128, help="perturbed images per pass")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated images")
    p.add_argument("--quantus", action="store_true",
                   help="compare ROAD with Quantus's at 224 px instead")
    p.add_argument("--net", choices=("shapenet224", "alexnet"), default="shapenet224",
                   help="network of --quantus (default shapenet224)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.quantus:
        return road_vs_quantus(args)
    try:
        dnn = ShapeNet()
        weights = "trained"
    except FileNotFoundError:
        log.warning("no shipped ShapeNet weights: timing with random weights")
        dnn, weights = ShapeNet(pretrained=False), "random"
    images, labels, boxes, _ = make_dataset(args.n, args.seed)
    x = dnn.test_transform.batch(list(images))
    units = labels + 1
    rows: List[Tuple[str, float, str]] = []

    t, maps = timed(lambda: true_class_maps(dnn, x, units))
    rows.append(("vanilla maps (reference)", t, ""))
    shape = tuple(x.shape[2:])
    t, masks = timed(lambda: [boxes_to_mask([b], shape, scale=images.shape[1:3])
                              for b in boxes])
    rows.append(("boxes_to_mask", t, f"area {np.mean([m.mean() for m in masks]):.3f}"))
    for name, fn in (("proportional_energy", proportional_energy),
                     ("average_saliency_focus", average_saliency_focus),
                     ("pointing_game", pointing_game),
                     ("relevance_rank_accuracy", relevance_rank_accuracy)):
        t, vals = timed(lambda fn=fn: [fn(m, g) for m, g in zip(maps, masks)])
        rows.append((name, t, f"mean {np.mean(vals):.3f}"))

    method = VanillaSaliencyImage(dnn).set_layer("fc2", 1)
    for order in ("morf", "lerf"):
        t, res = timed(lambda order=order: road(method, x, maps, order=order,
                                                units=units.tolist(),
                                                batch_size=args.batch))
        rows.append((f"road {order} (9 percentages)", t, f"AUC {res.mean_auc:.3f}"))
    t, res = timed(lambda: deletion_insertion(method, x, maps, n_steps=args.n_steps,
                                              units=units.tolist(), softmax=True,
                                              batch_size=args.batch))
    rows.append((f"deletion_insertion ({args.n_steps} steps)", t,
                 f"del {res.deletion.mean_auc:.3f} ins {res.insertion.mean_auc:.3f}"))
    t, steps = timed(lambda: model_randomisation(dnn, "vanilla", x, "fc2", units.tolist(),
                                                 preprocessed=True))
    rows.append((f"model_randomisation ({len(steps) - 1} layers)", t,
                 f"rho last {steps[-1].spearman_abs:.3f}"))
    t, edges = timed(lambda: [edge_detector_map(im) for im in images])
    rows.append(("edge_detector_map", t, f"mean {np.mean(edges):.3f}"))

    head = f"{'metric (' + str(args.n) + ' maps, ' + weights + ' weights)':42} " \
           f"{'total s':>8} {'ms/map':>8}  value"
    lines = [head, "-" * len(head)]
    for name, sec, val in rows:
        lines.append(f"{name:42} {sec:8.3f} {1000 * sec / args.n:8.2f}  {val}")
    lines.append(f"{'total':42} {sum(r[1] for r in rows):8.3f}")
    print("\n".join(lines))  # noqa: T201  (a benchmark's table is its output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
