"""Draw ``img/gallery.png`` (the demo CNN ShapeNet) and ``img/gallery_vit.png`` (the demo
transformer ShapeViT): every registered method that applies on four demo stimuli.

Run through ``python img/make_all.py`` (which also records what was drawn in
``img/pictures.json``); ``python img/make_gallery.py [ShapeNet|ShapeViT]`` draws one
(offline, about a minute each on 2 CPU cores).

Every map panel is titled with its method, layer, unit and class. The columns explain
the true class of each image (the output layer's unit ``label + 1``) except
``upsampled_activation``, which shows a conv unit (ShapeNet ``conv4`` unit 1, ShapeViT
``block4`` unit 1): the activation map of one channel, not a class. Gradient maps are shown
as PAIR grayscale (|.| summed over channels, each scaled to its own 99th percentile),
map-valued methods (CAMs, occlusion, XRAI, rollout ...) min-max scaled to their own range;
the colorbar says so. On ShapeViT the ReLU-rule methods run with ``activations='all'``
(its MLPs use GELU) and the CAMs use their default CAM layer (the last block's input); the
attention methods have no ShapeNet column.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from dnnbrain import viz
from dnnbrain.dnn.algo import method_names, saliency
from dnnbrain.dnn.classes import unit_label
from dnnbrain.dnn.models import build_network
from dnnbrain.io.stim import Stimulus, demo_stimulus_file

PARAMS = {"smoothgrad": {"n_samples": 16}, "ig": {"steps": 32}, "blur_ig": {"steps": 32},
          "guided_ig": {"steps": 32}, "xrai": {"steps": 16}, "gradcam": {"cam_layer": "conv4"},
          "gradcam++": {"cam_layer": "conv4"}, "scorecam": {"cam_layer": "conv4"},
          "occlusion": {"window": 8, "stride": 4}}
#: Per network: output layer, parameters replacing PARAMS', targets that differ, methods
#: left out, figure file.
NETS = {
    "ShapeNet": ("fc2", {}, {"upsampled_activation": ("conv4", 1)}, {"rollout", "chefer"},
                 "gallery.png"),
    "ShapeViT": ("head", {"gradcam": {}, "gradcam++": {}, "scorecam": {},
                          **{m: {"activations": "all"} for m in ("guided", "deconv")},
                          "grad_x_input": {}},
                 {"upsampled_activation": ("block4", 1)}, set(), "gallery_vit.png"),
}
SCALING = ("gradient maps: |map| summed over channels, each scaled to its own 99th "
           "percentile; map-valued methods: each min-max scaled to its own range")


def draw(net: str = "ShapeNet") -> Tuple[Figure, Dict[str, Any]]:
    """Compute the maps of ``net`` and draw the figure; returns it and what was drawn
    (``maps``: each panel's array, ``titles``: each panel's title)."""
    head, params, layers, skip, _ = NETS[net]
    dnn = build_network(net)
    stim = Stimulus.read(demo_stimulus_file())[[0, 1, 2, 5]]
    units = [int(u) + 1 for u in stim.labels]
    names = [n for n in method_names() if n not in skip]
    fig = Figure(figsize=(1.45 * (len(names) + 1) + 0.8, 1.75 * len(stim)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(stim), len(names) + 1, squeeze=False)
    for i, path in enumerate(stim.paths):
        axes[i, 0].imshow(viz.network_view(path, dnn.test_transform))
        axes[i, 0].set_ylabel(f"{path.stem}: {stim.data['class'][i]}", fontsize=7)
    axes[0, 0].set_title(f"{net} input\n(as the network saw it)", fontsize=6)
    drawn: List[np.ndarray] = []
    titles: List[str] = []
    for j, name in enumerate(names, 1):
        layer, unit = layers.get(name, (head, None))
        kw = params[name] if name in params else PARAMS.get(name, {})
        for i, path in enumerate(stim.paths):
            u = unit or units[i]
            m = saliency(dnn, path, method=name, layer=layer, unit=u, **kw)
            shown = viz.grayscale(m) if m.ndim == 3 else viz.grayscale(m[None], 100)
            axes[i, j].imshow(shown, cmap="inferno", vmin=0, vmax=1)
            title = f"{name}\n{unit_label(dnn, layer, u)}"
            axes[i, j].set_title(title, fontsize=5.5)
            drawn.append(shown)
            titles.append(title)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), "inferno"), ax=axes, shrink=0.8,
                       aspect=40, pad=0.01)
    bar.set_label(SCALING, fontsize=6)
    bar.ax.tick_params(labelsize=6)
    return fig, {"maps": drawn, "titles": titles}


def main(net: str = "ShapeNet", out: Path = None) -> Path:
    """Draw ``net``'s gallery into ``out`` (default ``img/<file>``); returns its path."""
    out = out or Path(__file__).with_name(NETS[net][-1])
    fig, _ = draw(net)
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or list(NETS):
        print(main(name))
