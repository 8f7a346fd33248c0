"""Token layers (ViT ``(N, L, C)``, Swin ``(N, H, W, C)``) as units and CAM layers:
layout inference, unit forms, default CAM layers, pytorch-grad-cam agreement.

Small random-weight torchvision ViT / Swin run by default; ``vit_b_16`` / ``swin_t`` at
224 px are ``slow`` (one image each, each net built once per module)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from dnnbrain.dnn.algo import VanillaSaliencyImage
from dnnbrain.dnn.algo.cam import GradCAM, ScoreCAM
from dnnbrain.dnn.models import DNN
from dnnbrain.dnn.tokens import TokenLayout, layout_of

from .conftest import hook_dicts_empty

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

#: agreement after pytorch-grad-cam's per-image min-max normalisation, absolute on 0..1
#: (its cv2 resize of the normalised low-res map vs our torch resize, then min-max;
#: measured on the small nets: Grad-CAM <= 5e-7, Score-CAM <= 3e-5)
TOL = 1e-4
TOLS = {"GradCAM": 1e-5, "ScoreCAM": 1e-4}


def minmax(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - lo) / (maps.max(axis=(-2, -1), keepdims=True) - lo)


def _head(model: nn.Module, head: nn.Linear) -> nn.Module:
    """torchvision zero-initialises ViT heads: give the head seeded random weights."""
    with torch.no_grad():
        head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    return model.eval()


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                             num_heads=2, hidden_dim=32, mlp_dim=64,
                                             num_classes=10)
    return _head(m, m.heads.head)


def small_swin() -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1],
                                           num_heads=[1, 2], window_size=[2, 2],
                                           num_classes=10)
    return m.eval()


def vit_reshape(grid):
    def f(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's documented ViT transform
        r = t[:, 1:, :].reshape(t.size(0), grid[0], grid[1], t.size(2))
        return r.transpose(2, 3).transpose(1, 2)
    return f


def swin_reshape(t: torch.Tensor) -> torch.Tensor:  # torchvision Swin: already (N, H, W, C)
    return t.permute(0, 3, 1, 2)


def reference(cls, model, module, reshape, x, unit):
    name = {GradCAM: "GradCAM", ScoreCAM: "ScoreCAM"}
    with getattr(pgc, name[cls])(model, [module], reshape_transform=reshape) as cam:
        return cam(x, targets=[ClassifierOutputTarget(unit - 1)] * len(x))


@pytest.fixture(scope="module")
def vit():
    return DNN(small_vit())


@pytest.fixture(scope="module")
def swin():
    return DNN(small_swin())


@pytest.fixture(scope="module")
def x32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- layouts


def test_layouts_inferred(vit, swin, x32):
    tok = torch.zeros(2, 17, 32)
    assert layout_of(vit, "encoder.layers.encoder_layer_0", tok, (32, 32)) == \
        TokenLayout("tokens", 1, (4, 4))
    assert layout_of(vit, "conv_proj", torch.zeros(2, 32, 4, 4), (32, 32)) is None
    assert layout_of(vit, "heads", torch.zeros(2, 10), (32, 32)) is None
    assert layout_of(swin, "features.1", torch.zeros(2, 8, 8, 16), (32, 32)) == \
        TokenLayout("nhwc", 0, (8, 8))
    assert layout_of(swin, "features.0.0", torch.zeros(2, 16, 8, 8), (32, 32)) is None
    assert layout_of(swin, "permute", torch.zeros(2, 32, 4, 4), (32, 32)) is None


def test_unknown_grid_error_and_declared_layout():
    """No patch conv: the grid is unknown -> a spatial unit says what to declare; declared
    via token_layouts it works."""
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.embed = nn.Linear(12, 4)
            self.mix = nn.Linear(4, 4)

        def forward(self, x):  # (N, 3, 4, 4) -> 2x2 patches of 2x2x3 = 12
            p = x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).flatten(3)
            t = torch.cat([self.cls_token.expand(len(x), -1, -1),
                           self.embed(p.flatten(1, 2))], 1)
            return self.mix(t)

    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="token_layouts="):
        VanillaSaliencyImage(DNN(Tok()), "mix", (1, 1, 2)).backprop(x, preprocessed=True)
    dnn = DNN(Tok(), token_layouts={"mix": TokenLayout("tokens", 1, (2, 2))})
    g = VanillaSaliencyImage(dnn, "mix", (1, 1, 2)).backprop(x, preprocessed=True)
    assert np.abs(g).max() > 0
    wrong = DNN(Tok(), token_layouts={"mix": TokenLayout("tokens", 1, (3, 2))})
    with pytest.raises(ValueError, match="grid"):
        VanillaSaliencyImage(wrong, "mix", 1).backprop(x, preprocessed=True)
    with pytest.raises(TypeError, match="token_layouts"):
        DNN(Tok(), token_layouts={"mix": (1, (2, 2))})
    with pytest.raises(ValueError, match="`layout`"):
        TokenLayout("nchw")


# --------------------------------------------------------------------------- units


def scores(dnn, layer, unit, x):
    m = VanillaSaliencyImage(dnn, layer, unit)
    return m.activation(x, [m.units[0]])


def test_token_units(vit, x32):
    """Channel k: mean/max over the patch tokens only; (k, row, col): the patch at that
    grid position; ('cls', k): the class token; a callable gets the raw tokens."""
    layer = "encoder.layers.encoder_layer_0"
    out = VanillaSaliencyImage(vit, layer, 1).layer_output(x32, layer)  # (2, 17, 32)
    torch.testing.assert_close(scores(vit, layer, 5, x32), out[:, 1:, 4].mean(1))
    m = VanillaSaliencyImage(vit).set_layer(layer, 5, reduce="max")
    torch.testing.assert_close(m.activation(x32, [5]), out[:, 1:, 4].amax(1))
    torch.testing.assert_close(scores(vit, layer, (5, 2, 3), x32), out[:, 1 + 1 * 4 + 2, 4])
    torch.testing.assert_close(scores(vit, layer, ("cls", 5), x32), out[:, 0, 4])
    torch.testing.assert_close(scores(vit, layer, lambda o: o[:, 0, 0], x32), out[:, 0, 0])
    g = VanillaSaliencyImage(vit, layer, ("cls", 5)).backprop(x32, preprocessed=True)
    assert g.shape == (2, 3, 32, 32) and np.abs(g).max() > 0
    assert hook_dicts_empty(vit.model)


def test_token_unit_errors(vit, swin, x32):
    layer = "encoder.layers.encoder_layer_0"
    for unit, match in ((33, r"1\.\.32"), ((1, 5, 1), "row 1..4"), (("cls", 33), "cls"),
                        (("cls", 0), "from 1"), (("tok", 1), "'cls'")):
        with pytest.raises(ValueError, match=match):
            VanillaSaliencyImage(vit, layer, unit).backprop(x32[:1], preprocessed=True)
    with pytest.raises(ValueError, match="class token"):
        VanillaSaliencyImage(swin, "features.1", ("cls", 1)).backprop(x32[:1],
                                                                       preprocessed=True)


def test_swin_spatial_unit(swin, x32):
    out = VanillaSaliencyImage(swin, "features.1", 1).layer_output(x32, "features.1")
    assert out.shape == (2, 8, 8, 16)
    torch.testing.assert_close(scores(swin, "features.1", (3, 2, 7), x32), out[:, 1, 6, 2])
    torch.testing.assert_close(scores(swin, "features.1", 3, x32), out[..., 2].mean((1, 2)))


# --------------------------------------------------------------------------- CAMs


def test_default_cam_layers(vit, swin, x32):
    assert GradCAM(vit, "heads", 3).resolve_cam_layer(x32, preprocessed=True) == \
        "encoder.layers.encoder_layer_1.ln_1"
    assert GradCAM(vit, "encoder.layers.encoder_layer_1", 3).resolve_cam_layer(
        x32, preprocessed=True) == "encoder.layers.encoder_layer_0"
    assert GradCAM(swin, "head", 3).resolve_cam_layer(x32, preprocessed=True) == "norm"
    default = GradCAM(vit, "heads", 3).backprop(x32, preprocessed=True)
    dotted = GradCAM(vit, "heads", 3, cam_layer="encoder.layers.encoder_layer_1.ln_1")
    np.testing.assert_array_equal(dotted.backprop(x32, preprocessed=True), default)
    last = GradCAM(vit, "heads", 3, cam_layer="encoder.layers.encoder_layer_1")
    assert np.abs(last.backprop(x32, preprocessed=True)).max() == 0  # no patch gradient
    assert hook_dicts_empty(vit.model) and hook_dicts_empty(swin.model)


@pytest.mark.parametrize("cls", [GradCAM, ScoreCAM])
def test_small_vit_matches_pytorch_grad_cam(vit, x32, cls):
    ours = cls(vit, "heads", 4, batch_size=16).backprop(x32, preprocessed=True)
    block = vit.model.encoder.layers.encoder_layer_1
    ref = reference(cls, vit.model, block.ln_1, vit_reshape((4, 4)), x32, 4)
    assert ours.shape == (2, 32, 32) and ours.max() > 0
    np.testing.assert_allclose(minmax(ours), ref, atol=TOLS[cls.__name__])
    assert hook_dicts_empty(vit.model)


@pytest.mark.parametrize("cls", [GradCAM, ScoreCAM])
def test_small_swin_matches_pytorch_grad_cam(swin, x32, cls):
    ours = cls(swin, "head", 2, batch_size=16).backprop(x32, preprocessed=True)
    ref = reference(cls, swin.model, swin.model.norm, swin_reshape, x32, 2)
    np.testing.assert_allclose(minmax(ours), ref, atol=TOLS[cls.__name__])
    assert hook_dicts_empty(swin.model)


def test_hidden_unit_cam_on_tokens(vit, x32):
    """A block-1 patch feature explained at block 0, against a hand-made Grad-CAM."""
    layer, cam_layer = "encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_0"
    ours = GradCAM(vit, layer, 7, cam_layer=cam_layer, upsample=False).backprop(
        x32, preprocessed=True)
    acts = {}
    h = vit.model.get_submodule(cam_layer).register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o))
    h2 = vit.model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: acts.setdefault("o", o))
    try:
        vit.model(x32)
    finally:
        h.remove()
        h2.remove()
    score = acts["o"][:, 1:, 6].mean(1).sum()
    (g,) = torch.autograd.grad(score, acts["a"])
    a, g = (t[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2) for t in (acts["a"], g))
    ref = torch.einsum("bc,bchw->bhw", g.mean((2, 3)), a).clamp(min=0).detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert np.abs(ref).max() > 0


# --------------------------------------------------------------------------- 224 px


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    m = torchvision.models.vit_b_16(weights=None)
    return DNN(_head(m, m.heads.head))


@pytest.fixture(scope="module")
def x224():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))


@pytest.mark.slow
def test_vit_b16_default_cam_and_pytorch_grad_cam(vit_b16, x224):
    """Default CAM layer: the last block's ln_1 (not conv_proj); non-zero; agrees with
    pytorch-grad-cam at the dotted path."""
    path = "encoder.layers.encoder_layer_11.ln_1"
    cam = GradCAM(vit_b16, "heads", 7)
    assert cam.resolve_cam_layer(x224, preprocessed=True) == path
    ours = cam.backprop(x224, preprocessed=True)
    assert ours.max() > 0
    ref = reference(GradCAM, vit_b16.model, vit_b16.model.get_submodule(path),
                    vit_reshape((14, 14)), x224, 7)
    np.testing.assert_allclose(minmax(ours), ref, atol=TOL)
    assert hook_dicts_empty(vit_b16.model)


@pytest.mark.slow
def test_vit_b16_hidden_unit(vit_b16, x224):
    m = GradCAM(vit_b16, "encoder.layers.encoder_layer_8", 4,
                cam_layer="encoder.layers.encoder_layer_6").backprop(x224, preprocessed=True)
    assert m.shape == (1, 224, 224) and m.max() > 0


@pytest.mark.slow
def test_swin_t_gradcam_matches_pytorch_grad_cam(x224):
    torch.manual_seed(0)
    dnn = DNN(torchvision.models.swin_t(weights=None).eval())
    cam = GradCAM(dnn, "head", 5)
    assert cam.resolve_cam_layer(x224, preprocessed=True) == "norm"
    ours = cam.backprop(x224, preprocessed=True)
    ref = reference(GradCAM, dnn.model, dnn.model.norm, swin_reshape, x224, 5)
    np.testing.assert_allclose(minmax(ours), ref, atol=TOL)
    assert hook_dicts_empty(dnn.model)


@pytest.mark.slow
def test_scorecam_at_224_matches_pytorch_grad_cam(x224):
    """Score-CAM on 224-px transformers with vit_b_16's and swin_t's token grids (a ViT
    of 16-px patches: 14 x 14 tokens and the class token, at the last block's ln_1; a
    two-stage Swin: 28 x 28 at norm), narrow so each library's masked forwards (one per
    channel) stay cheap, class target, against pytorch-grad-cam with its reshape
    transforms (vit_b_16 itself: 768 masked forwards per library, 8 minutes here)."""
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=2,
                                             num_heads=2, hidden_dim=32, mlp_dim=64)
    vit = DNN(_head(m, m.heads.head))
    ours = ScoreCAM(vit, "heads", 7, batch_size=64).backprop(x224, preprocessed=True)
    ref = reference(ScoreCAM, vit.model, vit.model.encoder.layers[-1].ln_1,
                    vit_reshape((14, 14)), x224, 7)
    np.testing.assert_allclose(minmax(ours), ref, atol=TOL)
    torch.manual_seed(0)
    swin = DNN(torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
        window_size=[7, 7]).eval())
    cam = ScoreCAM(swin, "head", 5, batch_size=64)
    assert cam.resolve_cam_layer(x224, preprocessed=True) == "norm"
    ours = cam.backprop(x224, preprocessed=True)
    ref = reference(ScoreCAM, swin.model, swin.model.norm, swin_reshape, x224, 5)
    np.testing.assert_allclose(minmax(ours), ref, atol=TOL)
    assert hook_dicts_empty(vit.model) and hook_dicts_empty(swin.model)


def test_cls_unit_text():
    from dnnbrain.batch.plan import unit_text
    assert unit_text(("cls", 3)) == "cls_3" and unit_text((3, 1, 2)) == "3_1_2"


def test_timm_vit_register_tokens_and_swin(x32):
    """timm: num_prefix_tokens (class + 4 registers) and NHWC Swin; default CAM layers
    (the last block's norm1, not its fused qkv; the final norm) agree with
    pytorch-grad-cam there."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = DNN(timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                            num_heads=2, reg_tokens=4, num_classes=10).eval())
    cam = GradCAM(vit, "head", 3)
    assert cam.resolve_cam_layer(x32, preprocessed=True) == "blocks.1.norm1"

    def drop5(t):
        return t[:, 5:].reshape(t.size(0), 4, 4, t.size(2)).permute(0, 3, 1, 2)
    ref = reference(GradCAM, vit.model, vit.model.blocks[1].norm1, drop5, x32, 3)
    np.testing.assert_allclose(minmax(cam.backprop(x32, preprocessed=True)), ref,
                               atol=TOLS["GradCAM"])
    out = VanillaSaliencyImage(vit, "blocks.0", 1).layer_output(x32, "blocks.0")
    torch.testing.assert_close(scores(vit, "blocks.0", ("cls", 2), x32), out[:, 0, 1])
    torch.testing.assert_close(scores(vit, "blocks.0", 2, x32), out[:, 5:, 1].mean(1))
    swin = DNN(timm.models.SwinTransformer(img_size=32, patch_size=4, embed_dim=16,
                                           depths=(1, 1), num_heads=(1, 2), window_size=2,
                                           num_classes=10).eval())
    cam = GradCAM(swin, "head", 3)
    assert cam.resolve_cam_layer(x32, preprocessed=True) == "norm"
    ref = reference(GradCAM, swin.model, swin.model.norm, swin_reshape, x32, 3)
    np.testing.assert_allclose(minmax(cam.backprop(x32, preprocessed=True)), ref,
                               atol=TOLS["GradCAM"])
    assert hook_dicts_empty(vit.model) and hook_dicts_empty(swin.model)


def test_yaml_run_with_token_units_and_its_evaluation(tmp_path):
    """A run config takes [cls, k] and [k, row, col] units on a token layer; the manifest
    names them and ROAD's unperturbed score is the manifest's activation."""
    from dnnbrain.batch import load_config, run
    from dnnbrain.batch.store import read_manifest
    from dnnbrain.evaluate import evaluate_run
    from dnnbrain.io.stim import demo_stimulus_file
    stim = demo_stimulus_file().parent
    cfg = {"model": {"name": "ShapeViT", "pretrained": False},
           "stimuli": [str(stim / "shape_00.png"), str(stim / "shape_01.png")],
           "targets": [{"layer": "block2", "units": [["cls", 3], 5, [2, 3, 4]]}],
           "methods": ["vanilla"], "outputs": {"dir": str(tmp_path / "run"),
                                               "save": ["npy"]}, "seed": 1}
    res = run(cfg, progress=False)
    rows = read_manifest(res.manifest)
    assert sorted({r["unit"] for r in rows}) == ["2_3_4", "5", "cls_3"]
    assert {r["npy"].split("/")[2] for r in rows} == {"unitcls_3", "unit5", "unit2_3_4"}
    ev = evaluate_run(res.out_dir, metrics=["road"], out_dir=tmp_path / "ev",
                      road_percentages=[0.5], progress=False)
    act = {(r["stimulus"], r["unit"]): float(r["activation"]) for r in rows}
    for m in ev["maps"]:
        unit = "_".join(map(str, m["unit"])) if isinstance(m["unit"], list) else str(m["unit"])
        assert m["road"]["original"] == pytest.approx(act[m["stimulus"], unit], abs=1e-5)
    with pytest.raises(ValueError, match=r"targets\[0\]\.units\[0\]: class-token feature"):
        load_config(dict(cfg, targets=[{"layer": "block2", "units": [["cls", 0]]}]))


def test_upsampled_activation_on_a_token_layer():
    """Feature k of a ViT block's patch tokens on their grid, upsampled (class token out)."""
    from dnnbrain.dnn.models import build_network
    from dnnbrain.dnn.algo import saliency
    torch.manual_seed(0)
    dnn = build_network("ShapeViT", pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    got = saliency(dnn, x, "upsampled_activation", layer="block4", unit=5, preprocessed=True)
    seen = {}
    block = dnn.model.encoder.layers.encoder_layer_3
    handle = block.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    try:
        with torch.no_grad():
            dnn.model(x)
    finally:
        handle.remove()
    grid = seen["out"][:, 1:, 4].reshape(2, 1, 8, 8)
    want = torch.nn.functional.interpolate(grid, size=(64, 64), mode="bilinear",
                                           align_corners=False)[:, 0]
    assert np.allclose(got, want.numpy(), atol=1e-6)
