"""Coming from PyHealth: a dict batch, 0-based labels, a max-|gradient| map."""
import torch
from torch import nn

from dnnbrain import viz
from dnnbrain.dnn.algo import saliency

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2))
batch = {"image": torch.rand(2, 1, 32, 32), "disease": torch.tensor([0, 1])}

# BasicGradientSaliencyMaps(model, input_batch=batch): the predicted class
maps = saliency(model, batch, method="vanilla", image_key="image",
                label_key="disease", preprocessed=True)      # (2, 1, 32, 32)
sal = viz.reduce_channels(maps, "maxabs")                    # max_c |grad|: (2, 32, 32)

# ... or each image's own (true) class, counted from 0 as PyHealth counts
own = saliency(model, batch, method="vanilla", unit="label", unit_base=0,
               image_key="image", label_key="disease", preprocessed=True)

# visualize_saliency_map(plt, image_index=0, id2label=..., alpha=0.3)
fig = viz.labelled_panel(batch["image"][0, 0].numpy(), sal[0], true_label=0,
                         id2label={0: "Normal", 1: "COVID"}, alpha=0.3,
                         fname="saliency_0.png")
