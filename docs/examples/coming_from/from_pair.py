"""Coming from PAIR saliency: no call_model_function, the unit is named instead."""
from dnnbrain import viz
from dnnbrain.dnn.algo import saliency
from dnnbrain.dnn.models import ShapeNet
from dnnbrain.io.stim import demo_stimulus_file

dnn = ShapeNet()
image = demo_stimulus_file().parent / "shape_01.png"  # a star: class 4 of fc2

# GradientSaliency().GetMask(x, call_model_function)
grad = saliency(dnn, image, method="vanilla", layer="fc2", unit=4)  # (3, 64, 64)

# IntegratedGradients().GetMask(x, f, x_steps=25, x_baseline=black)
ig = saliency(dnn, image, method="ig", layer="fc2", unit=4, steps=25,
              baseline="black")

# ...GetSmoothedMask(x, f, stdev_spread=.15, nsamples=10, magnitude=True)
smooth = saliency(dnn, image, method="smoothgrad", layer="fc2", unit=4,
                  base="vanilla", sigma_multiplier=0.15, n_samples=10,
                  mode="squared", seed=0)

# VisualizeImageGrayscale / VisualizeImageDiverging
gray = viz.grayscale(smooth, percentile=99)           # (64, 64), 0..1
signed = viz.diverging(ig, percentile=99)             # (64, 64), -1..1
viz.save_image("shape_01_smooth.png", viz.heatmap(gray, cmap="gray"))
