"""ReLU rules (guided, deconv) on networks with other activations: refused by default,
generalised with activations='all' (see dnnbrain.dnn.algo.relu)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnbrain.batch.checks import method_param_names
from dnnbrain.dnn.algo import GuidedSaliencyImage
from dnnbrain.dnn.algo.registry import make_method, saliency
from dnnbrain.dnn.algo.relu import relu_override
from dnnbrain.dnn.models import DNN


def _mlp(act: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), act, nn.Linear(5, 3))


class _Gate(nn.Module):
    """Functional activations inside a module's forward (no activation module)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.fc(x)) * torch.sigmoid(x)


def _conv(act: nn.Module) -> DNN:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act, nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    return DNN(net, img_size=8)


def _clean(model: nn.Module) -> bool:
    """No hook left on any module, no torch-function mode left active."""
    hooks = any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                for m in model.modules())
    return not hooks and torch._C._len_torch_function_stack() == 0


def _reference(net: nn.Sequential, x: torch.Tensor, deconv: bool) -> torch.Tensor:
    """d out[0] / dx with the rule at the middle activation, by hand."""
    w1, b1, w2 = net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach()
    g = w2[0].clamp(min=0)                      # rectified incoming gradient
    if not deconv:
        h = (x @ w1.T + b1).requires_grad_(True)
        (local,) = torch.autograd.grad(net[1](h).sum(), h)  # f'(h), elementwise
        g = local * g
    return g @ w1


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU(inplace=True)])
def test_relu_net_unchanged_by_the_opt_in(act):
    dnn = _conv(act)
    x = torch.randn(2, 3, 8, 8)
    for method in ("guided", "deconv"):
        a = saliency(dnn, x, method, layer="4", unit=2, preprocessed=True)
        b = saliency(dnn, x, method, layer="4", unit=2, preprocessed=True,
                     activations="all")
        assert (a == b).all()


@pytest.mark.parametrize("method", ["guided", "deconv"])
def test_gelu_net_is_refused_naming_gelu_and_left_clean(method):
    dnn = _conv(nn.GELU())
    before = {k: v.clone() for k, v in dnn.model.state_dict().items()}
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"ReLU network: the forward pass runs GELU x 1 in "
                                         r"'1'.*activations='all'") as err:
        saliency(dnn, x, method, layer="4", unit=1, preprocessed=True)
    assert "\n" not in str(err.value)
    assert _clean(dnn.model)
    assert all(torch.equal(v, before[k]) for k, v in dnn.model.state_dict().items())
    # and the same method object works on afterwards (nothing half-set)
    assert saliency(dnn, x, "vanilla", layer="4", unit=1, preprocessed=True).shape == \
        (1, 3, 8, 8)


def test_functional_activations_are_seen_with_their_module():
    dnn = DNN(nn.Sequential(_Gate(), nn.Linear(4, 2)), img_size=None)
    g = GuidedSaliencyImage(dnn).set_layer("1", 1)
    with pytest.raises(ValueError, match=r"SiLU x 1 in '0'.*Sigmoid x 1 in '0'|"
                                         r"Sigmoid x 1 in '0'.*SiLU x 1 in '0'"):
        g.gradient(torch.randn(1, 4), [1], relu_mode="guided")
    assert _clean(dnn.model)


def test_repeated_blocks_are_counted_under_one_pattern():
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.GELU()) for _ in range(3)])
    dnn = DNN(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), blocks, nn.Linear(4, 2)))
    g = GuidedSaliencyImage(dnn).set_layer("3", 1)
    with pytest.raises(ValueError, match=r"Tanh x 1 in '1', GELU x 3 in '2\.\*\.1'"):
        g.gradient(torch.randn(1, 4), [1], relu_mode="guided")


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Tanh(),
                                 nn.ELU(), nn.Softplus(), nn.Mish()])
@pytest.mark.parametrize("mode", ["guided", "deconv"])
def test_opt_in_matches_a_hand_reference_and_keeps_the_forward(act, mode):
    net = _mlp(act)
    x = torch.randn(1, 4)
    dnn = DNN(net, img_size=None)
    method = make_method(dnn, mode, "2", 1, activations="all")
    grad, _ = method.gradient(x, [1], relu_mode=mode)
    assert torch.allclose(grad[0], _reference(net, x[0], mode == "deconv"), atol=1e-6)
    with relu_override(mode, "all"):
        y = net(x.clone().requires_grad_(True))
    assert torch.equal(y.detach(), net(x).detach())   # exactly the same forward
    assert _clean(net)


@pytest.mark.parametrize("mode", ["guided", "deconv"])
def test_opt_in_with_an_inplace_activation(mode):
    net = _mlp(nn.SiLU(inplace=True))
    x = torch.randn(1, 4)
    method = make_method(DNN(net), mode, "2", 1, activations="all")
    grad, _ = method.gradient(x, [1], relu_mode=mode)
    assert torch.allclose(grad[0], _reference(_mlp(nn.SiLU()), x[0], mode == "deconv"),
                          atol=1e-6)


@pytest.mark.parametrize("method,params", [
    ("grad_x_input", {"base": "guided"}), ("ig", {"base": "guided", "steps": 4}),
    ("smoothgrad", {"base": "guided", "n_samples": 2, "seed": 0})])
def test_methods_built_on_the_rule_refuse_and_opt_in(method, params):
    dnn = _conv(nn.GELU())
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="GELU"):
        saliency(dnn, x, method, layer="4", unit=1, preprocessed=True, **params)
    assert _clean(dnn.model)
    out = saliency(dnn, x, method, layer="4", unit=1, preprocessed=True,
                   activations="all", **params)
    assert out.shape == (1, 3, 8, 8) and (out != 0).any()


def test_the_opt_in_is_a_checked_param_of_cli_and_yaml():
    for name, params in (("guided", {}), ("deconv", {}), ("grad_x_input", {}), ("ig", {}),
                         ("smoothgrad", {"base": "guided"})):
        assert "activations" in method_param_names(name, params)
    with pytest.raises(ValueError, match=r"`activations` must be one of \['relu', 'all'\], "
                                         r"got 'gelu'"):
        make_method(_conv(nn.GELU()), "guided", activations="gelu")


def test_vanilla_is_not_affected():
    dnn = _conv(nn.GELU())
    assert saliency(dnn, torch.randn(1, 3, 8, 8), "vanilla", layer="4", unit=1,
                    preprocessed=True).shape == (1, 3, 8, 8)


def test_check_input_refuses_before_any_work():
    """The batch runs' up-front check sees the activations too (one probe forward)."""
    dnn = _conv(nn.SiLU())
    g = make_method(dnn, "guided", "4", 1)
    with pytest.raises(ValueError, match=r"SiLU x 1 in '1'"):
        g.check_input((3, 8, 8))
    assert _clean(dnn.model)
    make_method(dnn, "guided", "4", 1, activations="all").check_input((3, 8, 8))
    make_method(_conv(nn.ReLU()), "guided", "4", 1).check_input((3, 8, 8))
