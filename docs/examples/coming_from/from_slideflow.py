"""Coming from Slideflow: class_idx counts from 0, say so with unit_base=0."""
import torch
from PIL import Image
from torch import nn

from dnnbrain import viz
from dnnbrain.dnn.algo import saliency
from dnnbrain.dnn.models import DNN

# a model of your own (Slideflow's would come from sf.model.load)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 2))
dnn = DNN(model)                   # layers named as model.named_modules(): '0' ... '4'
tile = torch.rand(1, 3, 48, 48)    # a preprocessed tile, (N, 3, H, W)

# SaliencyMap(model, class_idx=0).integrated_gradients(preprocess(image))
ig_map = saliency(dnn, tile, method="ig", unit=0, unit_base=0, steps=25,
                  preprocessed=True)[0]            # (3, 48, 48)
vanilla = saliency(dnn, tile, method="vanilla", unit=0, unit_base=0,
                   preprocessed=True)[0]
xrai = saliency(dnn, tile, method="xrai", unit=0, unit_base=0, steps=10,
                preprocessed=True)[0]              # (48, 48)

# plot_utils.inferno(mask) and plot_utils.overlay(image, mask)
heat = viz.heatmap(viz.grayscale(ig_map), cmap="inferno")   # uint8 (48, 48, 3)
over = viz.overlay(tile[0].permute(1, 2, 0).numpy(), viz.grayscale(ig_map))
Image.fromarray(over).save("tile_ig_overlay.png")
