"""Regenerate ``img/gallery.png`` (the demo CNN ShapeNet) and ``img/gallery_vit.png``
(the demo transformer ShapeViT): every registered method that applies on four demo
stimuli.

Run: ``python img/make_gallery.py [ShapeNet|ShapeViT]`` (offline, about a minute each on 2
CPU cores; both without an argument). Each map explains the true class of its image (the
output layer's unit ``label + 1``); gradient maps are shown as PAIR grayscale (|.| summed
over channels, 99th percentile), map-valued methods (CAMs, occlusion, XRAI, rollout ...)
min-max scaled. On ShapeViT the ReLU-rule methods run with ``activations='all'`` (its
MLPs use GELU) and the CAMs use their default CAM layer (the last block's input); the
attention methods have no ShapeNet column.
"""
from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dnnbrain import viz
from dnnbrain.dnn.algo import method_names, saliency
from dnnbrain.dnn.models import build_network
from dnnbrain.io.stim import Stimulus, demo_stimulus_file

PARAMS = {"smoothgrad": {"n_samples": 16}, "ig": {"steps": 32}, "blur_ig": {"steps": 32},
          "guided_ig": {"steps": 32}, "xrai": {"steps": 16}, "gradcam": {"cam_layer": "conv4"},
          "gradcam++": {"cam_layer": "conv4"}, "scorecam": {"cam_layer": "conv4"},
          "occlusion": {"window": 8, "stride": 4}}
#: Per network: output layer, parameters replacing PARAMS', targets that differ, methods
#: left out.
NETS = {
    "ShapeNet": ("fc2", {}, {"upsampled_activation": ("conv4", 1)}, {"rollout", "chefer"}),
    "ShapeViT": ("head", {"gradcam": {}, "gradcam++": {}, "scorecam": {},
                          **{m: {"activations": "all"} for m in ("guided", "deconv")},
                          "grad_x_input": {}},
                 {"upsampled_activation": ("block4", 1)}, set()),
}


def main(net: str = "ShapeNet", out: Path = None) -> Path:
    """Compute the maps of ``net`` and write the figure; returns its path."""
    head, params, layers, skip = NETS[net]
    out = out or Path(__file__).with_name("gallery.png" if net == "ShapeNet"
                                          else "gallery_vit.png")
    dnn = build_network(net)
    stim = Stimulus.read(demo_stimulus_file())[[0, 1, 2, 5]]
    units = [int(u) + 1 for u in stim.labels]
    names = [n for n in method_names() if n not in skip]
    fig = Figure(figsize=(1.6 * (len(names) + 1), 1.7 * len(stim)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(stim), len(names) + 1, squeeze=False)
    for i, path in enumerate(stim.paths):
        axes[i, 0].imshow(viz.to_uint8_image(path))
    axes[0, 0].set_title(f"{net}", fontsize=8)
    for j, name in enumerate(names, 1):
        layer, unit = layers.get(name, (head, None))
        kw = params[name] if name in params else PARAMS.get(name, {})
        for i, path in enumerate(stim.paths):
            m = saliency(dnn, path, method=name, layer=layer, unit=unit or units[i], **kw)
            shown = viz.grayscale(m) if m.ndim == 3 else viz.grayscale(m[None], 100)
            axes[i, j].imshow(shown, cmap="inferno", vmin=0, vmax=1)
        axes[0, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or list(NETS):
        print(main(name))
