"""Named networks, layer tables, weights resolution, wrapping a user's module."""
import os

import pytest
import torch
from torch import nn

from dnnbrain.dnn import zoo
from dnnbrain.dnn.models import DNN, AlexNet, build_network, network_names

ALEXNET_NAMES = ["conv1", "conv1_relu", "conv1_maxpool", "conv2", "conv2_relu",
                 "conv2_maxpool", "conv3", "conv3_relu", "conv4", "conv4_relu", "conv5",
                 "conv5_relu", "conv5_maxpool", "fc1", "fc1_relu", "fc2", "fc2_relu", "fc3"]


def test_alexnet_has_dnnbrain_names():
    dnn = AlexNet(pretrained=False)
    assert dnn.layers == ALEXNET_NAMES
    assert dnn.layer2module("conv5") is dnn.model.features[10]
    assert dnn.layer2module("fc3") is dnn.model.classifier[6]
    assert dnn.layer2module("features.10") is dnn.model.features[10]  # dotted paths too
    assert not dnn.model.training


def test_unknown_layer_names_choices():
    dnn = AlexNet(pretrained=False)
    with pytest.raises(ValueError, match=r"`layer` must be one of \['conv1'.*got 'conv6'"):
        dnn.layer2module("conv6")


MODERN = ("ViT_B_16", "Swin_T", "ConvNeXt_Tiny", "EfficientNet_B0", "MobileNet_V3_Large")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in MODERN
                                  else n for n in network_names() if n != "ShapeNet"])
def test_every_network_builds_and_resolves(name):
    dnn = build_network(name, pretrained=False)
    spec = zoo.get_spec(name)
    for layer in dnn.layers:
        assert isinstance(dnn.layer2module(layer), nn.Module)
    assert dnn.layers == list(spec.layers)
    x = dnn.test_transform(torch.rand(3, 40, 50))
    assert tuple(x.shape) == (3, spec.img_size, spec.img_size)
    if name in ("Resnet152", "Vgg19_bn", "Vgg19"):
        return  # forward shape checked on the smaller members of the family
    with torch.no_grad():
        out = dnn(x[None])
    classes = len(getattr(dnn, "classes", None) or range(1000))  # the demo nets: 4 shapes
    assert tuple(out.shape) == (1, classes)


def test_vgg19_bn_order_is_conv_bn_relu():
    dnn = build_network("vgg19_bn", pretrained=False)
    assert isinstance(dnn.layer2module("conv1_1"), nn.Conv2d)
    assert isinstance(dnn.layer2module("conv1_1_bn"), nn.BatchNorm2d)
    assert isinstance(dnn.layer2module("conv1_1_relu"), nn.ReLU)
    assert isinstance(dnn.layer2module("conv5_maxpool"), nn.MaxPool2d)


def test_registry_is_case_insensitive_and_errors_list_names():
    assert build_network("alexnet", pretrained=False).name == "AlexNet"
    with pytest.raises(ValueError, match="`net` must be one of .*AlexNet.*got 'NoNet'"):
        build_network("NoNet", pretrained=False)


@pytest.fixture
def alexnet_state(tmp_path_factory):
    torch.manual_seed(1)
    state = AlexNet(pretrained=False).model.state_dict()
    return state


def test_weights_from_dnnbrain_data(tmp_path, monkeypatch, alexnet_state):
    (tmp_path / "models").mkdir()
    torch.save(alexnet_state, tmp_path / "models" / "alexnet.pth")
    monkeypatch.setenv("DNNBRAIN_DATA", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    dnn = AlexNet()
    assert torch.equal(dnn.model.features[0].weight, alexnet_state["features.0.weight"])


def test_weights_from_torch_cache(tmp_path, monkeypatch, alexnet_state):
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(alexnet_state, cache / "alexnet-owt-7be5be79.pth")
    monkeypatch.delenv("DNNBRAIN_DATA", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    dnn = AlexNet()
    assert torch.equal(dnn.model.classifier[6].bias, alexnet_state["classifier.6.bias"])


def test_explicit_weights_path(tmp_path, alexnet_state):
    path = tmp_path / "mine.pth"
    torch.save(alexnet_state, path)
    dnn = AlexNet(weights=path)
    assert torch.equal(dnn.model.features[3].weight, alexnet_state["features.3.weight"])
    with pytest.raises(FileNotFoundError, match="`weights` file not found"):
        AlexNet(weights=tmp_path / "missing.pth")


def test_missing_weights_error_names_three_places(tmp_path, monkeypatch):
    monkeypatch.setenv("DNNBRAIN_DATA", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("DNNBRAIN_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        AlexNet()
    msg = str(err.value)
    assert "`weights=`" in msg and "$DNNBRAIN_DATA/models/alexnet.pth" in msg
    assert os.path.join(str(tmp_path), "hub", "checkpoints", "alexnet-owt-7be5be79.pth") in msg


def test_corrupt_and_mismatched_weights(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        AlexNet(weights=bad)
    other = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="do not match AlexNet"):
        AlexNet(weights=other)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_wrap_user_module():
    model = Tiny()
    dnn = DNN(model)
    assert dnn.layers == ["body", "body.0", "body.1", "head"]
    assert dnn.layer2module("body.0") is model.body[0]
    named = DNN(model, layers={"conv": "body.0", "fc": "head"}, img_size=8)
    assert named.layers == ["conv", "fc"]
    assert tuple(named.test_transform(torch.rand(3, 20, 20)).shape) == (3, 8, 8)
    assert named.device == torch.device("cpu")
    with pytest.raises(ValueError, match="not a submodule"):
        DNN(model, layers={"x": "nope"})
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        DNN("not a model")


def test_shapenet_loads_offline(shapenet):
    assert shapenet.layers[:3] == ["conv1", "conv1_relu", "conv1_maxpool"]
    assert shapenet.classes == list(zoo.SHAPENET_CLASSES)
    assert shapenet.img_size == 64
