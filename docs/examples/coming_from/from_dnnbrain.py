"""Coming from DNNBrain: the seed examples, on the shipped demo network."""
import numpy as np
from PIL import Image

from dnnbrain.dnn.algo import GuidedSaliencyImage, VanillaSaliencyImage
from dnnbrain.dnn.base import ip
from dnnbrain.dnn.models import ShapeNet  # AlexNet() works the same, with its weights
from dnnbrain.io.stim import demo_stimulus_file

dnn = ShapeNet()
image = Image.open(demo_stimulus_file().parent / "shape_01.png")  # a star

# the saliency of the 4th unit of fc2 (units count from 1: class 'star')
vanilla = VanillaSaliencyImage(dnn)
vanilla.set_layer("fc2", 4)
img_out = np.abs(vanilla.backprop(image))  # float32 (3, 64, 64)
ip.to_pil(img_out, True).save("shape_01_vanilla_saliency.png")

guided = GuidedSaliencyImage(dnn)
guided.set_layer("fc2", 4)
guided_out = np.abs(guided.backprop(image))
ip.to_pil(guided_out, True).save("shape_01_guided_saliency.png")

# SmoothGrad, as DNNBrain's backprop_smooth (the input is never overwritten)
smooth = vanilla.backprop_smooth(image, n_iter=8, sigma_multiplier=0.1, seed=0)
