"""Coming from mednet: generate, view, interpretability, completeness, evaluate."""
import numpy as np

from dnnbrain.batch import run
from dnnbrain.evaluate import evaluate_run
from dnnbrain.io.maps import load_map
from dnnbrain.io.stim import Stimulus, demo_stimulus_file
from dnnbrain.metrics import average_saliency_focus, proportional_energy

# `mednet classify saliency generate -s gradcam` + `... view`: one run config
config = {
    "model": {"name": "ShapeNet"},
    "stimuli": str(demo_stimulus_file()),
    "targets": [{"layer": "fc2", "units": "predicted"}],
    "methods": [{"name": "gradcam", "cam_layer": "conv4"},
                {"name": "gradcam++", "cam_layer": "conv4"}],
    "outputs": {"dir": "out/run", "save": ["npy", "overlay"]},
}
result = run(config, progress=False)              # maps, overlays, manifest.csv

# `mednet saliency interpretability` (proportional energy, average saliency focus),
# `... completeness` (ROAD) and `... evaluate` (tables, plots): one call
scores = evaluate_run("out/run", metrics=["localisation", "road"],
                      road_percentages=[0.2, 0.4, 0.6, 0.8], progress=False)
print(scores["table"])                            # also out/run/eval/table.md

# the same measures on one map, as functions
stim = Stimulus.read(demo_stimulus_file())
first = sorted(result.out_dir.rglob("*.npy"))[0]
heat = load_map(first)                            # (64, 64)
pe = proportional_energy(heat, stim.boxes(0))     # share of the map inside the box
asf = average_saliency_focus(heat, stim.boxes(0))
