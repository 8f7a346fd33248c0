"""The modern named networks (ViT, Swin, ConvNeXt, EfficientNet, MobileNetV3): tables,
preprocessing, builds, and the ReLU rules' refusal on them."""
import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torchvision.models.vision_transformer import VisionTransformer

from dnnbrain.dnn import zoo
from dnnbrain.dnn.algo.registry import saliency
from dnnbrain.dnn.models import DNN, build_network, network_names

from .conftest import hook_dicts_empty

MODERN = ["ViT_B_16", "Swin_T", "ConvNeXt_Tiny", "EfficientNet_B0", "MobileNet_V3_Large"]


@pytest.mark.parametrize("name", MODERN)
def test_table_resolves_on_the_real_architecture(name):
    """Every layer name is a submodule (built on the meta device: no weights, instant)."""
    spec = zoo.get_spec(name)
    with torch.device("meta"):
        model = getattr(tvm, spec.builder)(weights=None, **spec.builder_kwargs)
    dnn = DNN(model, spec.layers, stem=spec.stem)   # raises on any bad entry
    assert dnn.layers[-1] == "head" and len(set(dnn.layers)) == len(dnn.layers)
    assert name in network_names() and zoo.get_spec(spec.builder) is spec  # tv's name too


@pytest.mark.parametrize("name", MODERN)
def test_preprocessing_is_torchvisions(name):
    spec = zoo.get_spec(name)
    t = tvm.get_weight(spec.tv_weights).transforms()
    assert [spec.img_size] == list(t.crop_size) and [spec.resize] == list(t.resize_size)
    assert spec.interpolation == t.interpolation.value
    assert list(spec.mean) == list(t.mean) and list(spec.std) == list(t.std)


def test_resize_then_centre_crop():
    """A 300 x 600 image: shorter side to 256, centre 224 x 224 (the middle columns)."""
    from dnnbrain.dnn.base import ImageTransform
    img = torch.zeros(3, 300, 600)
    img[:, :, 290:310] = 1.0                      # a bright band in the middle
    x = ImageTransform(224, resize=256)(img)
    assert x.shape == (3, 224, 224)
    assert x[:, :, 112].min() > 0.9 and x[:, :, 0].max() < 0.1


def test_small_torchvision_vit_guided_refuses_gelu_and_opts_in():
    """torchvision's own ViT class (1 block, 32 px): GELU named where it runs."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                            hidden_dim=8, mlp_dim=16, num_classes=5).eval()
    torch.nn.init.normal_(vit.heads.head.weight)   # torchvision starts it at zero
    dnn = DNN(vit, {"patch_embed": "conv_proj", "head": "heads.head"}, img_size=32)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"GELU x 2 in "
                                         r"'encoder\.layers\.encoder_layer_\*\.mlp\.1'"):
        saliency(dnn, x, "guided", layer="head", unit=1, preprocessed=True)
    assert torch._C._len_torch_function_stack() == 0
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())
    out = saliency(dnn, x, "guided", layer="head", unit=1, preprocessed=True,
                   activations="all")
    assert out.shape == (1, 3, 32, 32) and (out != 0).any()


@pytest.fixture(scope="module")
def built():
    nets = {}

    def get(name):
        if name not in nets:
            torch.manual_seed(0)
            nets[name] = build_network(name, pretrained=False)
            if name == "ViT_B_16":  # torchvision starts the head at zero: no gradient
                torch.nn.init.normal_(nets[name].model.heads.head.weight, std=0.02)
        return nets[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", MODERN)
def test_builds_forwards_and_vanilla_saliency(name, built):
    dnn = built(name)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert dnn(dnn.test_transform.normalize(x)).shape == (1, 1000)
    for layer in dnn.layers:
        dnn.layer2module(layer)
    out = saliency(dnn, x, "vanilla", layer="head", unit=1)
    assert out.shape == (1, 3, 224, 224) and (out != 0).any()


#: A hidden unit per network: a token-layer feature for the transformers, a conv channel
#: (mean over space) for the CNNs.
HIDDEN = {"ViT_B_16": ("block6", 5), "Swin_T": ("stage3", 5),
          "ConvNeXt_Tiny": ("stage3", 5), "EfficientNet_B0": ("stage5", 5),
          "MobileNet_V3_Large": ("block10", 5)}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODERN)
def test_methods_at_a_hidden_unit_and_the_class_output(name, built):
    """vanilla, IG and Grad-CAM (default CAM layer) at a token/conv unit and at the class
    output; rollout too where the network has nn.MultiheadAttention (ViT)."""
    dnn = built(name)
    x = dnn.test_transform.normalize(torch.rand(1, 3, 224, 224))
    methods = {"vanilla": {}, "ig": {"steps": 2}, "gradcam": {}}
    if name == "ViT_B_16":
        methods["rollout"] = {}
    for layer, unit in (HIDDEN[name], ("head", 7)):
        for method, kw in methods.items():
            out = saliency(dnn, x, method, layer=layer, unit=unit, preprocessed=True, **kw)
            assert out.shape[-2:] == (224, 224) and np.isfinite(out).all(), (method, layer)
            assert (out != 0).any(), (name, method, layer)
    assert hook_dicts_empty(dnn.model)


@pytest.mark.slow
def test_vit_b_16_guided_refuses_then_runs_with_the_opt_in(built):
    dnn = built("ViT_B_16")
    x = torch.rand(1, 3, 224, 224)
    with pytest.raises(ValueError, match=r"GELU x 12 in "
                                         r"'encoder\.layers\.encoder_layer_\*\.mlp\.1'"):
        saliency(dnn, x, "guided", layer="head", unit=1)
    out = saliency(dnn, x, "guided", layer="head", unit=1, activations="all")
    assert out.shape == (1, 3, 224, 224) and (out != 0).any()


@pytest.mark.slow
def test_cli_takes_a_modern_net_and_the_opt_in(tmp_path, capsys):
    """dnn_saliency -net mobilenet_v3_large (torchvision's name): guided refuses its
    Hardswish in one line; -param activations=all runs it."""
    from PIL import Image
    from dnnbrain.cli.saliency import main
    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "a.png")
    stim = tmp_path / "s.stim.csv"
    stim.write_text(f"type=image\npath={tmp_path}\ndata=stimID\na.png\n")
    argv = ["-net", "mobilenet_v3_large", "-random-weights", "-layer", "head", "-chn", "1",
            "-stim", str(stim), "-meth", "guided", "-out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a ReLU network" in err and "Hardswish" in err and "\n" not in err
    assert main(argv + ["-param", "activations=all", "-force"]) == 0
    assert (tmp_path / "o" / "npy" / "a_head_chn1.npy").is_file()
