"""Agreement with captum on torchvision networks, GoogLeNet's functional ReLUs, and the
DNNBrain seed examples run verbatim."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dnnbrain.dnn.algo import GuidedSaliencyImage, VanillaSaliencyImage
from dnnbrain.dnn.algo.relu import GuidedReLU
from dnnbrain.dnn.models import AlexNet, Googlenet, Resnet18

captum = pytest.importorskip("captum.attr")

CASES = {  # network -> [(layer, unit, captum module path, captum neuron selector)]
    "AlexNet": [("conv5", 7, "features.10", lambda o: o[:, 6].flatten(1).mean(1)),
                ("fc3", 540, "classifier.6", (539,))],
    "Resnet18": [("res3", 7, "layer3", lambda o: o[:, 6].flatten(1).mean(1)),
                 ("fc", 540, "fc", (539,))],
}
BUILD = {"AlexNet": AlexNet, "Resnet18": Resnet18}


@pytest.mark.parametrize("channels_last", [None, False])
@pytest.mark.parametrize("net", list(CASES))
def test_vanilla_and_guided_match_captum(net, channels_last):
    """Same definition, same float32 arithmetic: captum gets the input in the layout
    dnnbrain's passes use (channels-last on the CPU by default, or kept as given)."""
    torch.manual_seed(0)
    dnn = BUILD[net](pretrained=False)
    x = torch.randn(2, 3, 224, 224)
    x_ref = x if channels_last is False else x.contiguous(memory_format=torch.channels_last)
    for layer, unit, path, selector in CASES[net]:
        module = dnn.model.get_submodule(path)
        for ours, theirs in ((VanillaSaliencyImage, captum.NeuronGradient),
                             (GuidedSaliencyImage, captum.NeuronGuidedBackprop)):
            method = ours(dnn, layer, unit)
            method.channels_last = channels_last
            got = method.backprop(x, preprocessed=True)
            ref = theirs(dnn.model, module).attribute(x_ref, neuron_selector=selector)
            ref = ref.detach().numpy()
            assert got.flags.c_contiguous
            assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max(), (net, layer, ours)


def test_guided_googlenet_reaches_functional_relus(monkeypatch):
    torch.manual_seed(0)
    dnn = Googlenet(pretrained=False)
    x = torch.randn(1, 3, 224, 224)
    guided = GuidedSaliencyImage(dnn, "inception4a", 5).backprop(x, preprocessed=True)
    vanilla = VanillaSaliencyImage(dnn, "inception4a", 5).backprop(x, preprocessed=True)
    # hand-built reference: torchvision's BasicConv2d calls F.relu; replace it by hand
    monkeypatch.setattr(F, "relu", lambda t, inplace=False: GuidedReLU.apply(t))
    ref = VanillaSaliencyImage(dnn, "inception4a", 5).backprop(x, preprocessed=True)
    scale = np.abs(ref).max()
    assert scale > 0
    assert np.abs(guided - ref).max() <= 1e-6 * scale
    assert np.abs(guided - vanilla).max() > 0.05 * scale


SEED_EXAMPLE = """
import numpy as np

from PIL import Image
from dnnbrain.dnn.base import ip
from dnnbrain.dnn.models import AlexNet
from dnnbrain.dnn.algo import {cls}

# Prepare DNN and image
dnn = AlexNet()
image = Image.open('n03223299_27176.JPEG')

{var} = {cls}(dnn)
{var}.set_layer('fc3', 540)
img_out = np.abs({var}.backprop(image))

# transform to PIL image and save out
img_out = ip.to_pil(img_out, True)
img_out.save('n03223299_27176_{var}_saliency.JPEG')
"""


@pytest.mark.parametrize("cls,var", [("VanillaSaliencyImage", "vanilla"),
                                     ("GuidedSaliencyImage", "guided")])
def test_dnnbrain_seed_examples_run_verbatim(cls, var, tmp_path, monkeypatch):
    torch.manual_seed(0)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(AlexNet(pretrained=False).model.state_dict(), cache / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("DNNBRAIN_DATA", raising=False)
    rng = np.random.default_rng(0)
    from PIL import Image
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(
        tmp_path / "n03223299_27176.JPEG")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(SEED_EXAMPLE.format(cls=cls, var=var), namespace)
    out = Image.open(f"n03223299_27176_{var}_saliency.JPEG")
    assert out.size == (224, 224) and out.mode == "RGB"
    arr = np.asarray(namespace["img_out"])  # before JPEG compression
    assert arr.max() == 255 and arr.min() == 0  # min-max rescaled to 0..255
    assert os.path.exists(tmp_path / f"n03223299_27176_{var}_saliency.JPEG")


def test_a_module_called_twice_matches_captum_last_call():
    """torchvision's BasicBlock runs its ``relu`` twice: dnnbrain's default (the last call)
    and its CAM layer (the latest call before the target) agree with captum, which keeps
    the last call; ``call='first'`` explains the other one."""
    import warnings

    from dnnbrain.dnn.algo.cam import GradCAM
    torch.manual_seed(0)
    dnn = Resnet18(pretrained=False)
    model, x = dnn.model, torch.randn(2, 3, 64, 64)
    relu = model.layer1[0].relu
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ours = VanillaSaliencyImage(dnn, "layer1.0.relu", 3).backprop(x, preprocessed=True)
    model.eval()
    ref = captum.NeuronGradient(model, relu).attribute(
        x.contiguous(memory_format=torch.channels_last),
        neuron_selector=lambda o: o[:, 2].flatten(1).mean(1)).numpy()
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-5 * scale
    first = VanillaSaliencyImage(dnn).set_layer("layer1.0.relu", 3, call="first") \
        .backprop(x, preprocessed=True)
    assert np.abs(first - ref).max() > 1e-2 * scale
    cam = GradCAM(dnn, cam_layer="layer1.0.relu", upsample=False).set_layer("fc", 7)
    got = cam.backprop(x, preprocessed=True)
    ref = captum.LayerGradCam(model, relu).attribute(
        x.contiguous(memory_format=torch.channels_last), target=6,
        relu_attributions=True)[:, 0].detach().numpy()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
