"""Regenerate ``img/featvis.png``: feature visualisations on the demo networks.

Rows: ShapeNet's four class units (``fc2`` units 1..4), the same with a diversity penalty
(second image of each pair), eight ``conv4`` channels, ShapeViT's four classes (no
transformations: its LayerNorm'd logits saturate). Each panel is titled with its unit's
activation and, for the classes, the best activation over 1,000 fresh shape stimuli.

Run: ``python img/make_featvis.py [OUT.png]`` (offline, under a minute on 2 CPU cores).
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dnnbrain.demo.shapes import make_dataset
from dnnbrain.dnn.models import build_network
from dnnbrain.dnn.zoo import SHAPENET_CLASSES
from dnnbrain.probe import visualise


def best_logits(dnn, images):
    with torch.no_grad():
        return dnn.model(dnn.test_transform.batch(list(images))).max(0).values.numpy()


def main(out: str = "img/featvis.png") -> None:
    stim = make_dataset(1000, seed=777)[0]
    net, vit = build_network("ShapeNet"), build_network("ShapeViT")
    rows = []
    cls = visualise(net, "fc2", [1, 2, 3, 4], steps=128, seed=0)
    best = best_logits(net, stim)
    rows.append([(cls.images[k, 0], f"{SHAPENET_CLASSES[k]} {cls.activation[k, 0]:.0f}"
                  f" (best stim {best[k]:.0f})") for k in range(4)])
    div = visualise(net, "fc2", [1, 2, 3, 4], n=2, steps=128, diversity=3.0,
                    diversity_layer="conv3_relu", seed=0)
    rows.append([(div.images[k, 1], f"{SHAPENET_CLASSES[k]}, diversity: "
                  f"{div.activation[k, 1]:.0f}") for k in range(4)])
    ch = visualise(net, "conv4", [1, 3, 4, 5], steps=128, seed=0)
    rows.append([(ch.images[k, 0], f"conv4 ch {c}: {ch.activation[k, 0]:.1f}")
                 for k, c in enumerate([1, 3, 4, 5])])
    v = visualise(vit, "head", [1, 2, 3, 4], steps=128, transforms="none", seed=0)
    vbest = best_logits(vit, stim)
    rows.append([(v.images[k, 0], f"ViT {SHAPENET_CLASSES[k]} {v.activation[k, 0]:.1f}"
                  f" ({vbest[k]:.1f})") for k in range(4)])
    fig = Figure(figsize=(10, 10.6))
    FigureCanvasAgg(fig)
    for r, row in enumerate(rows):
        for c, (img, title) in enumerate(row):
            ax = fig.add_subplot(len(rows), 4, r * 4 + c + 1)
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
