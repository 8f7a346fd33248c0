"""timm models as named networks (issue 12): derived layer tables, seeded random weights,
offline weights files, and the three ways in (Python, dnn_saliency, a YAML run)."""
import numpy as np
import pytest
import torch
import yaml

timm = pytest.importorskip("timm")

from dnnbrain.dnn.algo import saliency  # noqa: E402
from dnnbrain.dnn.fingerprint import fingerprint, seeded  # noqa: E402
from dnnbrain.dnn.models import build_network  # noqa: E402
from dnnbrain.dnn.timmnets import timm_layers  # noqa: E402
from dnnbrain.io.stim import demo_stimulus_file  # noqa: E402

from .conftest import hook_dicts_empty  # noqa: E402

TABLES = {  # (timm name, some layers the table must have, their module paths)
    "resnet18": {"conv1": "conv1", "stage1": "layer1", "stage4_block2": "layer4.1",
                 "fc": "fc"},
    "vit_tiny_patch16_224": {"patch_embed": "patch_embed", "block1": "blocks.0",
                             "block12_attn": "blocks.11.attn", "block3_mlp": "blocks.2.mlp",
                             "norm": "norm", "head": "head"},
    "convnext_atto": {"stem": "stem", "stage1": "stages.0",
                      "stage4_block2": "stages.3.blocks.1", "head_fc": "head.fc"},
    "efficientnet_b0": {"conv_stem": "conv_stem", "stage1": "blocks.0",
                        "stage7_block1": "blocks.6.0", "classifier": "classifier"},
}


@pytest.fixture(scope="module")
def nets():
    with seeded(0):
        return {n: build_network(f"timm:{n}", pretrained=False) for n in ("resnet18",
                                                                           "vit_tiny_patch16_224")}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_layer_tables_follow_the_model_structure(name):
    model = timm.create_model(name, pretrained=False)
    table = timm_layers(model)
    for layer, path in TABLES[name].items():
        assert table.get(layer) == path, (layer, table.get(layer))
    for path in table.values():
        model.get_submodule(path)  # every name resolves
    assert list(table.values())[-1] == next(k for k, v in model.named_modules()
                                            if v is model.get_classifier())
    assert not any(isinstance(model.get_submodule(p), torch.nn.Identity)
                   for p in table.values())


def test_random_weights_seeded_preprocessing_and_logits(nets):
    with seeded(0):
        again = build_network("timm:resnet18", pretrained=False)
    assert fingerprint(again.model) == fingerprint(nets["resnet18"].model)
    vit = nets["vit_tiny_patch16_224"]
    assert vit.name == "timm:vit_tiny_patch16_224"
    assert vit.test_transform.size == (224, 224)
    cfg = timm.data.resolve_data_config({}, model=vit.model)
    assert torch.allclose(vit.test_transform.mean, torch.tensor(cfg["mean"]))
    x = vit.test_transform.batch([demo_stimulus_file().parent / "shape_00.png"])
    with torch.no_grad():
        assert vit.model(x).shape == (1, 1000)


def test_saliency_at_a_block_and_at_the_class_output(nets):
    img = [str(demo_stimulus_file().parent / f"shape_0{i}.png") for i in range(2)]
    for name, layer, unit in (("resnet18", "stage3", 5), ("resnet18", "fc", 7),
                              ("vit_tiny_patch16_224", "head", 3)):
        dnn = nets[name]
        maps = saliency(dnn, img, "vanilla", layer=layer, unit=unit)
        one = saliency(dnn, img[1], "vanilla", layer=layer, unit=unit)
        assert maps.shape == (2, 3, 224, 224) and np.abs(maps).sum() > 0
        assert np.allclose(maps[1], one, atol=1e-5, rtol=1e-4)  # batch == one by one
        assert hook_dicts_empty(dnn.model)


def test_weights_offline_first_and_clear_errors(nets, tmp_path, monkeypatch):
    path = tmp_path / "r18.pth"
    torch.save(nets["resnet18"].model.state_dict(), path)
    state = torch.get_rng_state()
    loaded = build_network("timm:resnet18", weights=path)
    assert torch.equal(torch.get_rng_state(), state)  # the random init is thrown away
    assert fingerprint(loaded.model) == fingerprint(nets["resnet18"].model)
    monkeypatch.setenv("DNNBRAIN_DATA", str(tmp_path))
    (tmp_path / "models" / "timm").mkdir(parents=True)
    torch.save(nets["resnet18"].model.state_dict(), tmp_path / "models" / "timm" /
               "resnet18.pth")
    assert fingerprint(build_network("timm:resnet18").model) == \
        fingerprint(nets["resnet18"].model)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f: None)
    with pytest.raises(FileNotFoundError) as err:
        build_network("timm:resnet34")  # nowhere offline: never downloaded
    msg = str(err.value)
    assert "\n" not in msg and "timm:resnet34" in msg and "pretrained=False" in msg
    hub = tmp_path / "model.safetensors"  # a file in the hub cache, as timm would name it
    from safetensors.torch import save_file
    save_file(nets["resnet18"].model.state_dict(), str(hub))
    seen = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, f: seen.append(repo) or (str(hub) if f == hub.name
                                                              else None))
    monkeypatch.delenv("DNNBRAIN_DATA")
    assert fingerprint(build_network("timm:resnet18").model) == \
        fingerprint(nets["resnet18"].model)
    assert seen[0] == timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    with pytest.raises(ValueError, match=r"'timm:resnet1' is not a timm model; close: "):
        build_network("timm:resnet1", pretrained=False)
    torch.save(nets["vit_tiny_patch16_224"].model.state_dict(), path)
    with pytest.raises(ValueError, match="do not match timm:resnet18"):
        build_network("timm:resnet18", weights=path)


@pytest.mark.parametrize("name,head,block", [("resnet18", "fc", "stage4"),
                                              ("vit_tiny_patch16_224", "head", "block6")])
def test_cli_and_yaml_run(tmp_path, capsys, name, head, block):
    from dnnbrain.batch import load_config, run
    from dnnbrain.cli.saliency import main
    stim = demo_stimulus_file().parent
    out = tmp_path / "cli"
    assert main(["-net", f"timm:{name}", "-random-weights", "-layer", head, "-chn", "3",
                 "-meth", "vanilla", "-stim", str(stim / "shape_00.png"), "-out",
                 str(out)]) == 0
    assert np.abs(np.load(out / "npy" / f"shape_00_{head}_chn3.npy")).sum() > 0
    cfg = {"model": {"name": f"timm:{name}", "pretrained": False},
           "stimuli": [str(stim / "shape_00.png"), str(stim / "shape_01.png")],
           "targets": [{"layer": block, "units": [1]}], "methods": ["vanilla", "gradcam"],
           "outputs": {"dir": str(tmp_path / "run"), "save": ["npy"]}, "seed": 2}
    res = run(cfg, progress=False)
    assert res.maps == 4 and (res.out_dir / "network.pth").is_file()
    saved = yaml.safe_load((res.out_dir / "config.resolved.yaml").read_text())
    assert saved["model"]["name"] == f"timm:{name}"
    with pytest.raises(ValueError, match=r"model\.name: 'timm:nonet' is not a timm model"):
        load_config(dict(cfg, model={"name": "timm:nonet"}))
