"""Coming from captum: name the layer and the unit; the rest is the same arithmetic."""
import torch

from dnnbrain.dnn.algo import saliency
from dnnbrain.dnn.base import to_input
from dnnbrain.dnn.models import ShapeNet
from dnnbrain.io.stim import Stimulus, demo_stimulus_file

dnn = ShapeNet()
stim = Stimulus.read(demo_stimulus_file())[:4]
x, _ = to_input(stim, dnn.test_transform)           # (4, 3, 64, 64), preprocessed

# Saliency(model).attribute(x, target=3, abs=False)
grad = saliency(dnn, x, method="vanilla", unit=3, unit_base=0, preprocessed=True)

# IntegratedGradients(model).attribute(x, baselines=0 * x, target=3, n_steps=32,
#                                      method='gausslegendre', internal_batch_size=64)
ig = saliency(dnn, x, method="ig", unit=3, unit_base=0, steps=32,
              rule="gausslegendre", baseline=torch.zeros_like(x),
              batch_size=64, preprocessed=True)

# NeuronGradient(model, model.conv3).attribute(x, neuron_selector=(5, 3, 4))
neuron = saliency(dnn, x, method="vanilla", layer="conv3", unit=(5, 3, 4),
                  unit_base=0, preprocessed=True)

# LayerGradCam(model, model.conv4).attribute(x, target=3, relu_attributions=True)
cam = saliency(dnn, x, method="gradcam", cam_layer="conv4", unit=3, unit_base=0,
               upsample=False, preprocessed=True)   # (4, 8, 8)
