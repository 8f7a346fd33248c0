"""Receptive fields: hand-derived geometry, branches and functional calls, empirical support."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnbrain.dnn.models import DNN, build_network
from dnnbrain.probe.receptive import empirical_rf, receptive_fields, theoretical_rf

from .conftest import hook_dicts_empty

# (size, jump, start of unit (0, 0)'s centre, grid at 224) by hand: for a layer with
# kernel k, stride s, padding p: size += (k-1)*jump, start += ((k-1)/2 - p)*jump, jump *= s
ALEXNET = {
    "conv1": (11, 4, 3.0, 55), "conv1_maxpool": (19, 8, 7.0, 27),
    "conv2": (51, 8, 7.0, 27), "conv2_maxpool": (67, 16, 15.0, 13),
    "conv3": (99, 16, 15.0, 13), "conv4": (131, 16, 15.0, 13),
    "conv5": (163, 16, 15.0, 13), "conv5_maxpool": (195, 32, 31.0, 6),
}
VGG16 = {
    "conv1_1": (3, 1, 0.0, 224), "conv1_2": (5, 1, 0.0, 224),
    "conv1_maxpool": (6, 2, 0.5, 112), "conv2_1": (10, 2, 0.5, 112),
    "conv2_2": (14, 2, 0.5, 112), "conv2_maxpool": (16, 4, 1.5, 56),
    "conv3_1": (24, 4, 1.5, 56), "conv3_2": (32, 4, 1.5, 56), "conv3_3": (40, 4, 1.5, 56),
    "conv3_maxpool": (44, 8, 3.5, 28), "conv4_1": (60, 8, 3.5, 28),
    "conv4_2": (76, 8, 3.5, 28), "conv4_3": (92, 8, 3.5, 28),
    "conv4_maxpool": (100, 16, 7.5, 14), "conv5_1": (132, 16, 7.5, 14),
    "conv5_2": (164, 16, 7.5, 14), "conv5_3": (196, 16, 7.5, 14),
    "conv5_maxpool": (212, 32, 15.5, 7),
}


def meta_net(name):
    """A zoo network's exact architecture with no weights (the geometry needs none)."""
    with torch.device("meta"):
        return build_network(name, pretrained=False)


@pytest.mark.parametrize("name,table", [("AlexNet", ALEXNET), ("Vgg16", VGG16)])
def test_hand_derived_plain_chains(name, table):
    rfs = receptive_fields(meta_net(name))
    for layer, (size, jump, start, grid) in table.items():
        rf = rfs[layer]
        assert (rf.size, rf.jump, rf.start, rf.grid) == (
            (size, size), (jump, jump), (start, start), (grid, grid)), layer
        relu = layer + "_relu"
        if relu in rfs:  # an elementwise layer keeps the field
            assert rfs[relu].size == rf.size and rfs[relu].start == rf.start
    assert not {"fc1", "fc2", "fc3"} & set(rfs)  # flattened: no spatial field


def test_branches_resnet_googlenet():
    res = receptive_fields(meta_net("Resnet18"))
    # stem 7/2 p3 then maxpool 3/2 p1; each basic block adds two 3x3 convs; shortcuts
    # (1x1, stride 2) lie inside the main path's field
    assert res["conv1_maxpool"].size == (11, 11) and res["conv1_maxpool"].jump == (4, 4)
    assert res["res1_1"].size == (27, 27) and res["res1"].size == (43, 43)
    assert res["res2_1"].size == (67, 67) and res["res2_1"].jump == (8, 8)
    assert res["res4"].size == (435, 435) and res["res4"].start == (0.0, 0.0)
    goo = receptive_fields(meta_net("Googlenet"))
    # functional max pools (ceil mode) between modules; inception3a's widest branch is a
    # 3x3 conv (torchvision's "5x5" branch is 3x3 too) on conv3_maxpool (27, jump 8)
    assert goo["conv3_maxpool"].size == (27, 27) and goo["conv3_maxpool"].jump == (8, 8)
    assert goo["inception3a"].size == (43, 43) and goo["inception3a"].start == (6.0, 6.0)
    assert goo["inception3_maxpool"].jump == (16, 16)


class Branchy(nn.Module):
    """Functional pools, dilation, asymmetric kernels, padding, concat and a residual."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)                       # 3, j1, start 0
        self.b1 = nn.Conv2d(4, 2, (1, 5), padding=(0, 2))
        self.b2 = nn.Conv2d(4, 2, 3, padding=2, dilation=2)          # 5x5 effective
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.a(x)
        x = F.max_pool2d(x, 2)                                       # 4, j2, start 0.5
        cat = torch.cat([self.b1(x), self.b2(x)], 1)                 # rows 4+8, cols 4+8
        y = self.c(cat) + x                                          # union with x
        return F.pad(y, (1, 0, 0, 0)).relu()                         # one column left


def test_user_model_functional_and_branches():
    dnn = DNN(Branchy(), layers=["a", "b1", "b2", "c"], img_size=16)
    assert theoretical_rf(dnn, "b1").size == (4, 12)
    assert theoretical_rf(dnn, "b2").size == (12, 12)
    c = theoretical_rf(dnn, "c")
    assert (c.size, c.jump, c.start, c.grid) == ((12, 12), (2, 2), (0.5, 0.5), (8, 8))

    class Whole(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.out = Branchy(), nn.Identity()

        def forward(self, x):
            return self.out(self.net(x))

    out = theoretical_rf(DNN(Whole(), img_size=16), "out")
    assert out.start == (0.5, -1.5) and out.grid == (8, 9)
    assert out.box(0, 0) == (0, 0, 7, 5) and out.box(7, 8) == (9, 9, 16, 16)


class ChannelsLast(nn.Module):
    """A conv, then a LayerNorm over channels in (N, W, H, C) layout, then back."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, (3, 5), padding=(1, 2)), nn.LayerNorm(4)
        self.out = nn.Identity()

    def forward(self, x):
        return self.out(self.norm(self.conv(x).transpose(1, 3)).transpose(1, 3))


def test_axes_follow_transposes_and_channel_norms():
    dnn = DNN(ChannelsLast(), img_size=12)
    rfs = receptive_fields(dnn)
    assert rfs["norm"].size == (3, 5) and rfs["norm"].grid == (12, 12)  # (N, W, H, C)
    assert rfs["out"].size == (3, 5) and rfs["out"].start == (0.0, 0.0)


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


def test_global_gate_spans_input_and_errors():
    dnn = DNN(SE(), layers=["conv", "fc"], img_size=12)
    rfs = receptive_fields(dnn)
    assert not rfs["conv"].spans_input and rfs["conv"].box(5, 5) == (4, 4, 7, 7)
    whole = DNN(nn.Sequential(SE(), nn.Identity()), img_size=12)
    rf = theoretical_rf(whole, "1")
    assert rf.spans_input and rf.box(0, 0) == (0, 0, 12, 12) and rf.size[0] >= 23
    with pytest.raises(ValueError, match="outside layer"):
        rf.box(12, 0)
    with pytest.raises(ValueError, match="count from 1"):
        rfs["conv"].unit_box((1, 0, 1))
    assert rfs["conv"].unit_box((1, 1, 1)) == (0, 0, 2, 2)
    flat = DNN(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(200, 3)),
               img_size=12)
    with pytest.raises(ValueError, match="no spatial receptive field"):
        theoretical_rf(flat, "2")
    with pytest.raises(ValueError, match="input_size"):
        theoretical_rf(DNN(SE()), "conv")


def test_trace_leaves_no_trace_on_error():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        receptive_fields(DNN(model, img_size=8))
    assert model.training and hook_dicts_empty(model)
    assert not torch.overrides._get_current_function_mode_stack()
    rf = theoretical_rf(DNN(model, img_size=8), "conv", call="first")  # stops before
    assert rf.size == (3, 3) and hook_dicts_empty(model) and model.training


def _check_empirical(dnn, layer, size, n=3, equal=False):
    model = dnn.model
    flags = [m.training for m in model.modules()]
    rf = theoretical_rf(dnn, layer, input_size=size)
    r, c = rf.grid[0] // 2, rf.grid[1] // 2
    for chn in range(1, 9):  # the first channel alive on random inputs
        try:
            emp = empirical_rf(dnn, layer, (chn, r + 1, c + 1), n=n, seed=0,
                               input_size=size)
            break
        except ValueError as err:
            assert "dead unit" in str(err)
    t, l, b, rr = rf.box(r, c)
    et, el, eb, er = emp.box
    assert t <= et and l <= el and eb <= b and er <= rr, (layer, rf.box(r, c), emp.box)
    assert emp.support[et:eb, el:er].any() and not emp.support[:t].any()
    if equal:  # a plain conv/pool chain: the gradient reaches the field's border
        assert emp.box == (t, l, b, rr)
        cy, cx = rf.centre(r, c)
        assert abs(emp.centre[0] - cy) < rf.jump[0] and abs(emp.centre[1] - cx) < rf.jump[1]
    assert hook_dicts_empty(model) and flags == [m.training for m in model.modules()]


def test_empirical_inside_theoretical_fast(shapenet):
    _check_empirical(shapenet, "conv4", 64, equal=True)
    _check_empirical(shapenet, "conv3", 32, n=4, equal=True)
    _check_empirical(build_network("Resnet18", pretrained=False), "res2", 64)
    with pytest.raises(ValueError, match="channel, row, col"):
        empirical_rf(shapenet, "conv4", 3)


@pytest.mark.slow
@pytest.mark.parametrize("name,layer,size,equal", [
    ("AlexNet", "conv3", 127, True), ("AlexNet", "conv5", 224, True),
    ("Vgg16", "conv3_3", 64, True), ("Vgg16", "conv4_3", 128, True),
    ("Resnet18", "res3", 224, False), ("Googlenet", "inception3a", 96, False),
    ("Googlenet", "inception4e", 224, False), ("InceptionV3", "mixed5b", 99, False),
])
def test_empirical_inside_theoretical_zoo(name, layer, size, equal):
    _check_empirical(build_network(name, pretrained=False), layer, size, equal=equal)


def _doc_table(name):
    """``layer -> (size, jump, offset, map)`` of the list-table ``name`` in probing.rst."""
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "probing.rst").read_text()
    block = text.split(f".. list-table:: {name} ")[1].split("\n\n")[1]
    rows = []
    for line in block.splitlines():
        if line.startswith("   * - "):
            rows.append([])
        rows[-1].append(line.split("- ", 1)[1].strip())
    assert rows[0] == ["layer", "size (px)", "jump / stride (px)", "offset (px)", "map"]
    return {r[0]: (int(r[1]), int(r[2]), float(r[3]), int(r[4])) for r in rows[1:]}


@pytest.mark.parametrize("name,doc,table", [("AlexNet", "AlexNet", ALEXNET),
                                            ("Vgg16", "VGG-16", VGG16)])
def test_docs_tables_are_theoretical_rf(name, doc, table):
    """docs/probing.rst's receptive-field tables: every layer of the hand-derived tables,
    with theoretical_rf's values."""
    rows = _doc_table(doc)
    assert rows == table
    net = meta_net(name)
    for layer, (size, jump, start, grid) in rows.items():
        rf = theoretical_rf(net, layer)
        assert (rf.size, rf.jump, rf.start, rf.grid) == (
            (size, size), (jump, jump), (start, start), (grid, grid)), layer
