"""Coming from pytorch-grad-cam: target_layers -> cam_layer, targets -> unit."""
import numpy as np

from dnnbrain import viz
from dnnbrain.dnn.algo import GradCAM, saliency
from dnnbrain.dnn.base import to_input
from dnnbrain.dnn.models import ShapeNet
from dnnbrain.io.stim import Stimulus, demo_stimulus_file

dnn = ShapeNet()
stim = Stimulus.read(demo_stimulus_file())[:4]
x, _ = to_input(stim, dnn.test_transform)             # (4, 3, 64, 64)

# GradCAM(model, target_layers=[model.conv4_relu])(input_tensor=x,
#                                            targets=[ClassifierOutputTarget(1)] * 4)
cam = GradCAM(dnn, cam_layer="conv4_relu").set_layer("fc2", 1, unit_base=0)
maps = cam.backprop(x, preprocessed=True)             # (4, 64, 64), not rescaled
lo = maps.min(axis=(1, 2), keepdims=True)
hi = maps.max(axis=(1, 2), keepdims=True)
scaled = (maps - lo) / np.maximum(hi - lo, 1e-7)      # pytorch-grad-cam's 0..1

# targets=None: each image's predicted class; GradCAMPlusPlus, ScoreCAM by name
predicted = saliency(dnn, x, method="gradcam++", cam_layer="conv4_relu",
                     preprocessed=True)
score = saliency(dnn, x, method="scorecam", cam_layer="conv4_relu", unit="predicted",
                 preprocessed=True, batch_size=64)

# show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
picture = viz.overlay(x[0], scaled[0], alpha=0.5, cmap="jet",
                      transform=dnn.test_transform)    # uint8 (64, 64, 3)
