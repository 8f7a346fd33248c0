"""ReLU rules keep the forward pass exact for every way a ReLU can be written.

A tiny hand-weighted net ``logits = W2 relu(W1 x)`` is written once per ReLU form: in
place or not, result used or not (a statement). Under the guided and deconv rules its
logits must equal the model's exactly, and its maps must equal the rules computed by hand:
guided ``W1^T ((W1 x > 0) * max(W2[k], 0))``, deconv ``W1^T max(W2[k], 0)``.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnbrain.dnn.algo import DeconvSaliencyImage, GuidedSaliencyImage
from dnnbrain.dnn.algo.integrated import IntegratedGradients
from dnnbrain.dnn.algo.relu import GuidedReLU, relu_override
from dnnbrain.dnn.algo.smooth import SmoothGrad
from dnnbrain.dnn.base import ImageTransform
from dnnbrain.dnn.models import DNN

from .conftest import hook_dicts_empty

W1 = torch.tensor([[1., -2., 0., 1., 0., 1., -1., 0., 2., 0., 0., -1.],
                   [-1., 1., 1., 0., -2., 0., 1., 1., 0., -1., 1., 0.],
                   [0., 0., -1., 2., 1., -1., 0., 1., 0., 1., -2., 1.],
                   [2., 1., 0., -1., 0., 0., 1., -1., 1., 0., 1., 1.]])
W2 = torch.tensor([[1., -2., 3., -1.], [-2., 1., 1., 2.]])

FORMS = {
    # ordinary forms: the result is used
    "module": lambda m, h: m.relu(h),
    "module_inplace": lambda m, h: m.relu_inplace(h),
    "F.relu": lambda m, h: F.relu(h),
    "torch.relu": lambda m, h: torch.relu(h),
    "Tensor.relu": lambda m, h: h.relu(),
    # statements: the return value is ignored, only the in-place effect counts
    "stmt h.relu_()": lambda m, h: (h.relu_(), h)[1],
    "stmt torch.relu_(h)": lambda m, h: (torch.relu_(h), h)[1],
    "stmt F.relu(h, inplace=True)": lambda m, h: (F.relu(h, inplace=True), h)[1],
    "stmt F.relu_(h)": lambda m, h: (F.relu_(h), h)[1],
    "stmt nn.ReLU(inplace=True)": lambda m, h: (m.relu_inplace(h), h)[1],
}
STATEMENTS = [f for f in FORMS if f.startswith("stmt")]


class OneReLU(nn.Module):
    """``fc2(relu(fc1(x)))`` with the ReLU written as ``form``."""

    def __init__(self, form):
        super().__init__()
        self.form = FORMS[form]
        self.fc1 = nn.Linear(12, 4, bias=False)
        self.fc2 = nn.Linear(4, 2, bias=False)
        self.relu, self.relu_inplace = nn.ReLU(), nn.ReLU(inplace=True)
        with torch.no_grad():
            self.fc1.weight.copy_(W1)
            self.fc2.weight.copy_(W2)

    def forward(self, x):
        return self.fc2(self.form(self, self.fc1(x.flatten(1))))


def net(form):
    return DNN(OneReLU(form), layers={"fc1": "fc1", "fc2": "fc2"},
               test_transform=ImageTransform(None))


# x: pre-activations W1 x = [1, 0, -2, 3] and [-2, -2, 2, 1]: dead units, one at 0
X = torch.tensor([[1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 1., 0.],
                  [0., 1., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0.]]).view(2, 3, 2, 2)


def hand_map(x, unit, mode):
    """The rule by hand: gradient at the ReLU output is ``W2[unit]``."""
    g = W2[unit - 1].clamp(min=0).expand(len(x), 4)
    if mode == "guided":
        g = g * (x.flatten(1) @ W1.T > 0)
    return (g @ W1).view(-1, 3, 2, 2).numpy()


def test_hand_weights_have_dead_units():
    pre = X.flatten(1) @ W1.T
    assert torch.equal(pre, torch.tensor([[1., 0., -2., 3.], [-2., -2., 2., 1.]]))
    assert (pre < 0).any(1).all() and (pre > 0).any(1).all()


@pytest.mark.parametrize("mode", ["guided", "deconv"])
@pytest.mark.parametrize("form", list(FORMS))
def test_logits_under_the_rule_equal_the_models(form, mode):
    model = OneReLU(form)
    with torch.no_grad():
        expect = model(X.clone())
    assert not torch.equal(expect, X.flatten(1) @ W1.T @ W2.T)  # the ReLU matters here
    x = X.clone().requires_grad_(True)
    with relu_override(mode):
        got = model(x)
        with torch.no_grad():
            got_no_grad = model(X.clone())
    assert torch.equal(got, expect) and torch.equal(got_no_grad, expect)
    assert got.grad_fn is not None


@pytest.mark.parametrize("cls,mode", [(GuidedSaliencyImage, "guided"),
                                      (DeconvSaliencyImage, "deconv")])
@pytest.mark.parametrize("form", list(FORMS))
def test_maps_equal_the_hand_built_rule(form, cls, mode):
    dnn = net(form)
    for unit in (1, 2):
        got = cls(dnn, "fc2", unit).backprop(X, preprocessed=True)
        assert np.array_equal(got, hand_map(X, unit, mode)), (form, unit)
    # known numbers: guided, unit 1, first image: (1, 0, 0, 0) @ W1 = W1[0]
    if mode == "guided":
        expect = np.array([1., -2., 0., 1., 0., 1., -1., 0., 2., 0., 0., -1.])
        got = cls(dnn, "fc2", 1).backprop(X[0], preprocessed=True)
        assert np.array_equal(got.ravel(), expect)
    many = cls(dnn, "fc2", [1, 2]).backprop(X, preprocessed=True)
    assert np.array_equal(many, np.stack([hand_map(X, 1, mode), hand_map(X, 2, mode)], 1))
    assert hook_dicts_empty(dnn.model)


@pytest.mark.parametrize("form", STATEMENTS)
def test_methods_with_a_guided_base_see_the_same_network(form):
    stmt, used = net(form), net("module")
    x = torch.rand(3, 3, 2, 2) - 0.3
    for make in (lambda d: IntegratedGradients(d, "fc2", 2, steps=8, base="guided"),
                 lambda d: SmoothGrad(d, "fc2", 1, base="deconv", n_samples=4, seed=3)):
        a = make(stmt).backprop(x, preprocessed=True)
        b = make(used).backprop(x, preprocessed=True)
        assert np.abs(a).max() > 0 and np.array_equal(a, b), form


class ConvStatement(nn.Module):
    """Conv net with statement ReLUs on a channels-last path; ``rule``: the reference with
    an explicit ``GuidedReLU`` in each place."""

    def __init__(self, rule=None):
        super().__init__()
        torch.manual_seed(5)
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 16, 3)
        self.rule = rule

    def forward(self, x):
        h = self.c1(x)
        if self.rule:
            h = self.rule.apply(h)
            h = self.rule.apply(self.c2(h) - 0.1) + 0.05
            h[:, :2] = self.rule.apply(h[:, :2])
        else:
            h.relu_()
            h = self.c2(h) - 0.1
            self.act(h)
            h = h + 0.05
            F.relu(h[:, :2], inplace=True)  # in place on a view
        return self.fc(F.max_pool2d(h, 2).flatten(1))


def test_conv_statements_channels_last_equal_explicit_reference():
    layers = {"c1": "c1", "c2": "c2", "fc": "fc"}
    dnn = DNN(ConvStatement(), layers=layers, test_transform=ImageTransform(None),
              channels_last=True)
    ref = DNN(ConvStatement(GuidedReLU), layers=layers, test_transform=ImageTransform(None),
              channels_last=True)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(dnn.model(x), ref.model(x))
    for target in (("fc", 2), ("c2", 3)):
        sal = GuidedSaliencyImage(dnn, *target)
        sal.channels_last = True
        got = sal.backprop(x, preprocessed=True)
        expect = GuidedSaliencyImage(ref, *target).backprop(x, preprocessed=True)
        assert np.abs(expect).max() > 0
        assert np.allclose(got, expect, rtol=0, atol=1e-6 * np.abs(expect).max()), target
    assert hook_dicts_empty(dnn.model)


@pytest.mark.parametrize("mode", ["guided", "deconv"])
def test_inplace_rule_behaves_like_the_real_op(mode):
    leaf = torch.tensor([1., -2., 3.], requires_grad=True)
    with relu_override(mode):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            leaf.relu_()
        with pytest.raises(RuntimeError, match="view of a leaf Variable"):
            leaf[1:].relu_()
        assert torch.equal(leaf.detach(), torch.tensor([1., -2., 3.]))  # refused: untouched
        h = leaf * 1
        torch.relu_(h[1:])  # a view of a non-leaf: rectified in place, history rebased
        assert torch.equal(h.detach(), torch.tensor([1., 0., 3.]))
        (grad,) = torch.autograd.grad((h * torch.tensor([-1., 1., 1.])).sum(), leaf)
        # first entry: no ReLU; second: guided also zero where the input was negative
        expect = [-1., 0., 1.] if mode == "guided" else [-1., 1., 1.]
        assert torch.equal(grad, torch.tensor(expect))
        h = leaf * 1
        out = F.relu(h, inplace=False)
        assert out is not h and torch.equal(h.detach(), torch.tensor([1., -2., 3.]))
        h = leaf * 1
        assert F.relu(h, inplace=True) is h
        with torch.no_grad():
            t = torch.tensor([-1., 2.])
            t.relu_()
            assert torch.equal(t, torch.tensor([0., 2.]))
        cl = (torch.randn(2, 3, 4, 4) * 1).requires_grad_(True)
        cl = cl.contiguous(memory_format=torch.channels_last) * 1
        F.relu(cl, inplace=True)
        assert cl.is_contiguous(memory_format=torch.channels_last) and (cl >= 0).all()
        with pytest.raises(TypeError, match="out"):
            torch.relu(leaf * 1, out=torch.empty(3))
        if mode == "guided":  # its backward needs the output: a later change is caught
            h = leaf * 1
            h.relu_()
            h.mul_(2)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                h.sum().backward()


def test_other_nonlinearities_are_refused_under_a_rule():
    """relu6, hardtanh, leaky_relu, threshold are not ReLUs: a rule refuses them (by
    default) instead of silently giving their plain gradient; clamp is no activation."""
    x = torch.tensor([-1., 0.5, 7.])
    for fn, shown in ((F.relu6, "Hardtanh|ReLU6"), (F.hardtanh, "Hardtanh"),
                      (lambda t: F.leaky_relu(t, 0.1), "LeakyReLU"),
                      (lambda t: F.threshold(t, 0.0, 0.0), "Threshold")):
        for mode in ("guided", "deconv"):
            xg = x.clone().requires_grad_(True)
            with pytest.raises(ValueError, match=shown):
                with relu_override(mode):
                    fn(xg * 1)
    plain = []
    for mode in (None, "guided", "deconv"):
        xg = x.clone().requires_grad_(True)
        with relu_override(mode):
            y = torch.clamp(xg * 1, 0, 6)
            (g,) = torch.autograd.grad((y * torch.tensor([1., -1., 1.])).sum(), xg)
        plain.append(g)
    assert all(torch.equal(g, plain[0]) for g in plain)
