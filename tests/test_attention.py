"""Attention rollout and Chefer relevance: known answers on hand-built transformers, an
independent autograd implementation, torchvision and timm ViTs, and no trace on the model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnbrain.dnn.algo import saliency
from dnnbrain.dnn.algo.attention import AttentionRelevance, AttentionRollout
from dnnbrain.dnn.algo.attention_capture import attention_modules, capture_attention
from dnnbrain.dnn.models import DNN
from tests.conftest import hook_dicts_empty


class FixedAttention(nn.Module):
    """Attention whose probabilities are softmax(logits), the same for every input."""

    def __init__(self, logits: torch.Tensor) -> None:  # (heads, T, T)
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.v = nn.Linear(4, 4)

    def forward(self, x):
        b, t, d = x.shape
        h = self.logits.shape[0]
        a = self.logits.expand(b, -1, -1, -1).softmax(dim=-1)
        v = self.v(x).reshape(b, t, h, d // h).transpose(1, 2)
        return (a @ v).transpose(1, 2).reshape(b, t, d)


class Block(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn, self.mlp = attn, nn.Linear(4, 4)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class TinyViT(nn.Module):
    """16 x 16 input, 8-px patches: a class token and a 2 x 2 grid (T = 5), dim 4."""

    def __init__(self, attns) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 4))
        self.blocks = nn.Sequential(*[Block(a) for a in attns])
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.head(self.blocks(t)[:, 0])


class QKVAttention(nn.Module):
    """Input-dependent attention, explicit (softmax, probabilities kept) or fused (SDPA)."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.qkv, self.heads, self.fused, self.kept = nn.Linear(4, 12), 2, fused, None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            a = (q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5).softmax(dim=-1)
            if a.requires_grad:
                a.retain_grad()
            self.kept = a
            out = a @ v
        return out.transpose(1, 2).reshape(b, t, d)


def tiny(logits_per_block):
    torch.manual_seed(0)
    return DNN(TinyViT([FixedAttention(lg) for lg in logits_per_block])).eval()


ATTN = ["blocks.0.attn", "blocks.1.attn"]
X16 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def rollout(dnn, layer="head", n=2, **kw):
    kw.setdefault("attention_layers", ATTN[:n])
    return saliency(dnn, X16, "rollout", layer, 1, preprocessed=True, upsample=False, **kw)


def test_identity_attention_gives_a_zero_class_row_and_uniform_a_uniform_map():
    eye = torch.full((1, 5, 5), float("-inf")).diagonal_scatter(torch.zeros(1, 5), 0, 1, 2)
    assert rollout(tiny([eye]), n=1).max() == 0  # (I + I) / 2 = I: cls row is 0 on patches
    m = rollout(tiny([torch.zeros(1, 5, 5)]), n=1)
    assert m.shape == (2, 2, 2)
    np.testing.assert_allclose(m, 1 / 10, rtol=1e-6)  # ((1/5) + 0) / 2 off the diagonal


def test_one_block_rollout_is_normalised_a_plus_i_and_two_blocks_multiply():
    lg = [torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    dnn = tiny(lg)
    hat = [(torch.softmax(g, -1).mean(0) + torch.eye(5)) / 2 for g in lg]
    np.testing.assert_allclose(rollout(dnn, n=1)[0], hat[0][0, 1:].reshape(2, 2), rtol=1e-5)
    np.testing.assert_allclose(rollout(dnn)[1], (hat[1] @ hat[0])[0, 1:].reshape(2, 2),
                               rtol=1e-5)
    mx = (torch.softmax(lg[0], -1).amax(0) + torch.eye(5))
    np.testing.assert_allclose(rollout(dnn, n=1, head_fusion="max")[0],
                               (mx / mx.sum(-1, keepdim=True))[0, 1:].reshape(2, 2), rtol=1e-5)
    # the target layer chooses the blocks: blocks.0 as target uses one block only
    np.testing.assert_allclose(rollout(dnn, "blocks.0"), rollout(dnn, n=1), rtol=1e-6)
    # token rows and rows summing to 1
    np.testing.assert_allclose(rollout(dnn, token=3)[0], (hat[1] @ hat[0])[2, 1:].reshape(
        2, 2), rtol=1e-5)
    r = AttentionRollout(dnn).rollout([torch.softmax(g, -1)[None] for g in lg])
    np.testing.assert_allclose(r.sum(-1).numpy(), 1, rtol=1e-6)


def test_chefer_equals_an_independent_autograd_implementation_both_capture_routes():
    torch.manual_seed(4)
    explicit = TinyViT([QKVAttention(False), QKVAttention(False)]).eval()
    fused = TinyViT([QKVAttention(True), QKVAttention(True)]).eval()
    fused.load_state_dict(explicit.state_dict())
    x = X16.clone().requires_grad_(True)
    score = explicit(x)[:, 2].sum()  # unit 3
    score.backward()
    r = torch.eye(5).expand(2, 5, 5)
    for blk in explicit.blocks:
        a = blk.attn.kept
        r = r + (a.grad * a).clamp(min=0).mean(1) @ r
    want = r[:, 0, 1:].reshape(2, 2, 2).detach().numpy()
    for model in (explicit, fused):
        got = saliency(DNN(model), X16, "chefer", "head", 3, preprocessed=True,
                       upsample=False, attention_layers=ATTN, prefix_tokens=1, grid=(2, 2))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
        assert hook_dicts_empty(model)


@pytest.fixture(scope="module")
def tv_vit():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                        num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return DNN(model).eval()


@pytest.fixture(scope="module")
def timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2,
        num_classes=4).eval()
    assert all(b.attn.fused_attn for b in model.blocks)
    return DNN(model)


X32 = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(sorted(m.__dict__), getattr(m, "fused_attn", None), m.training)
             for m in model.modules()])


def _same(model, before):
    sd, attrs = _state(model)
    assert all(torch.equal(sd[k], before[0][k]) for k in sd) and attrs == before[1]
    assert hook_dicts_empty(model)


@pytest.mark.parametrize("net", ["tv_vit", "timm_vit"])
def test_capture_keeps_logits_and_leaves_no_trace(net, request):
    dnn = request.getfixturevalue(net)
    model, before = dnn.model, _state(dnn.model)
    mods = attention_modules(model)
    assert len(mods) == 2
    with torch.no_grad():
        ref = model(X32)
        with capture_attention(mods) as probs:
            out = model(X32)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-6)
    assert [tuple(p.shape) for p in probs] == [(3, 2, 17, 17)] * 2
    np.testing.assert_allclose(probs[0].sum(-1).numpy(), 1, rtol=1e-5)
    _same(model, before)
    with pytest.raises(RuntimeError, match="boom"), capture_attention(mods):
        model(X32)
        raise RuntimeError("boom")
    _same(model, before)
    with pytest.raises(Exception):  # a wrong-size input fails inside the captured pass
        saliency(dnn, torch.zeros(1, 3, 24, 24), "chefer", preprocessed=True)
    _same(model, before)


def test_torchvision_weights_are_what_multiheadattention_returns(tv_vit):
    blk = tv_vit.model.encoder.layers[0]
    seen = []
    h = blk.ln_1.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad(), capture_attention(attention_modules(tv_vit.model)) as probs:
            tv_vit.model(X32)
        with torch.no_grad():
            _, w = blk.self_attention(seen[0], seen[0], seen[0], need_weights=True,
                                      average_attn_weights=False)
    finally:
        h.remove()
    np.testing.assert_allclose(probs[0].numpy(), w.numpy(), atol=1e-6)


@pytest.mark.parametrize("net", ["tv_vit", "timm_vit"])
@pytest.mark.parametrize("method", ["rollout", "chefer"])
def test_vits_batch_equals_one_by_one(net, method, request):
    dnn = request.getfixturevalue(net)
    before = _state(dnn.model)
    maps = saliency(dnn, X32, method, dnn.layers[-1], [1, "predicted"], preprocessed=True)
    assert maps.shape == (3, 2, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.max() > 0
    one = saliency(dnn, X32[2:], method, dnn.layers[-1], [1, "predicted"],
                   preprocessed=True, batch_size=1)
    np.testing.assert_allclose(maps[2:], one, rtol=1e-5, atol=1e-7)
    _same(dnn.model, before)


def test_chefer_depends_on_the_unit_rollout_does_not(tv_vit):
    c = saliency(tv_vit, X32[:1], "chefer", "heads", [1, 2, 3, 4], preprocessed=True,
                 upsample=False)
    r = saliency(tv_vit, X32[:1], "rollout", "heads", [1, 2], preprocessed=True)
    assert not np.allclose(c[0, 0], c[0, 1]) and np.array_equal(r[0, 0], r[0, 1])
    # the target may be an attention module itself: its own attention is used
    at = saliency(tv_vit, X32[:1], "rollout", "encoder.layers.encoder_layer_1.self_attention",
                  1, preprocessed=True)
    np.testing.assert_allclose(at[0], r[0, 0], rtol=1e-6)
    inner = saliency(tv_vit, X32[:1], "chefer", "encoder.layers.encoder_layer_1", 3,
                     preprocessed=True, upsample=False)
    assert inner.shape == (1, 4, 4) and np.isfinite(inner).all()


def test_no_attention_before_the_target_is_one_clear_error(tv_vit, shapenet):
    for dnn, layer in ((tv_vit, "conv_proj"), (shapenet, "fc2")):
        for method in ("rollout", "chefer"):
            with pytest.raises(ValueError, match=r"^no attention module runs before the "
                               r"target layer .*searched: nn.MultiheadAttention and timm"):
                saliency(dnn, torch.zeros(1, 3, 32 if dnn is tv_vit else 64,
                                          32 if dnn is tv_vit else 64), method, layer, 1,
                         preprocessed=True)


@pytest.mark.parametrize("kw,match", [
    ({"head_fusion": "median"}, "`head_fusion` must be one of"),
    ({"token": 0}, "`token` must be 'auto', 'mean' or a token index"),
    ({"grid": (2,)}, "`grid` must be None or"),
    ({"prefix_tokens": -1}, "`prefix_tokens` must be None or an int"),
    ({"attention_layers": "blocks.0.attn"}, "`attention_layers` must be a non-empty list"),
    ({"attention_layers": ["nope"]}, "`attention_layers` must be one of"),
    ({"grid": (3, 3)}, "`grid` .* do not fit 5 tokens"),
    ({"attention_layers": ["blocks.0.mlp"]}, "^attention module 'blocks.0.mlp' computed 0 "
                                             "attention matrices in one call"),
])
def test_parameter_errors(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rollout(tiny([torch.zeros(1, 5, 5)]), n=1, **kw)


def test_chefer_on_torchvision_equals_an_explicit_forward(tv_vit):
    """The torchvision ViT written out with explicit attention (probabilities kept)."""
    m = tv_vit.model
    x = m._process_input(X32[:2])
    x = torch.cat([m.class_token.expand(len(x), -1, -1), x], 1) + m.encoder.pos_embedding
    kept = []
    for blk in m.encoder.layers:
        att, y = blk.self_attention, blk.ln_1(x)
        b, t, d = y.shape
        q, k, v = (z.reshape(b, t, 2, d // 2).transpose(1, 2)
                   for z in F.linear(y, att.in_proj_weight, att.in_proj_bias).chunk(3, -1))
        a = (q @ k.transpose(-2, -1) / (d // 2) ** 0.5).softmax(-1)
        a.retain_grad()
        kept.append(a)
        o = att.out_proj((a @ v).transpose(1, 2).reshape(b, t, d))
        x = x + o
        x = x + blk.mlp(blk.ln_2(x))
    logits = m.heads(m.encoder.ln(x)[:, 0])
    np.testing.assert_allclose(logits.detach().numpy(), m(X32[:2]).detach().numpy(),
                               atol=1e-5)
    logits[:, 1].sum().backward()
    r = torch.eye(17).expand(2, 17, 17)
    for a in kept:
        r = r + (a.grad * a).clamp(min=0).mean(1) @ r
    got = saliency(tv_vit, X32[:2], "chefer", "heads", 2, preprocessed=True, upsample=False)
    np.testing.assert_allclose(got, r[:, 0, 1:].reshape(2, 4, 4).detach().numpy(),
                               rtol=1e-4, atol=1e-7)
    assert np.abs(got).max() > 0


def test_a_config_may_name_every_parameter():
    from dnnbrain.batch.checks import method_param_names
    from dnnbrain.dnn.algo import get_method
    assert get_method("rollout") is AttentionRollout
    assert get_method("chefer") is AttentionRelevance
    for name in ("rollout", "chefer"):
        names = method_param_names(name, {})
        assert {"attention_layers", "token", "grid", "prefix_tokens", "upsample"} <= set(names)
    assert "head_fusion" in method_param_names("rollout", {})


@pytest.mark.parametrize("average", [True, False])
def test_a_caller_asking_for_weights_gets_the_same_weights(average):
    torch.manual_seed(6)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        ref = mha(x, x, x, need_weights=True, average_attn_weights=average)
        with capture_attention([mha]) as probs:
            got = mha(x, x, x, need_weights=True, average_attn_weights=average)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert probs[0].shape == (2, 2, 5, 5) and hook_dicts_empty(mha)
