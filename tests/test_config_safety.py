"""Configs are data: a run config cannot run code, blow up, or fail after work started.

* ``model.factory`` names torchvision / timm models or registered builders; anything else
  is refused at validation without being imported or called (checked by side effects);
* YAML expansion is bounded (alias bombs, recursive aliases, size);
* every method parameter is checked before any work, by the method's own code, with the
  key path, and the method raises the same error at run time.
"""
import math
import sys
import textwrap
import time

import pytest
import torch
import yaml

from dnnbrain.batch import load_config, register_factory, run, unregister_factory
from dnnbrain.batch import factories, safeyaml


@pytest.fixture(scope="module")
def stim2(tmp_path_factory):
    from dnnbrain.demo.shapes import write_stimuli
    return write_stimuli(tmp_path_factory.mktemp("stim"), n=2)


@pytest.fixture
def base(stim2, tmp_path):
    return {"model": {"name": "ShapeNet"}, "stimuli": str(stim2),
            "targets": [{"layer": "fc2", "units": [1]}], "methods": ["vanilla"],
            "outputs": {"dir": str(tmp_path / "out")}}


def problems(cfg, **kw):
    with pytest.raises(ValueError) as err:
        load_config(cfg, **kw)
    return str(err.value)


def line_of(msg, path):
    """The problem line of ``path`` in a validation message (None if absent)."""
    return next((ln.strip() for ln in msg.splitlines() if ln.strip().startswith(path + ":")),
                None)


# ------------------------------------------------------------------------- factories

def _tiny(width=4, classes=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(width, classes))


def _factory_cfg(base, factory, kwargs=None, **extra):
    model = {"factory": factory, "kwargs": kwargs or {}, "img_size": 16,
             "layers": {"conv": "0", "fc": "4"}, **extra}
    return dict(base, model=model, targets=[{"layer": "fc", "units": [1]}])


def _refused(tmp_path):
    marker = tmp_path / "MARKER"
    victim = tmp_path / "victim"
    victim.mkdir()
    return marker, victim, [
        ("os:system", {"command": f"touch {marker}"}),
        ("subprocess:run", {"args": ["touch", str(marker)]}),
        ("builtins:exec", {"source": f"open({str(marker)!r}, 'w')"}),
        ("shutil:rmtree", {"path": str(victim)}),
        ("posix:system", {"command": f"touch {marker}"}),
        ("pathlib:Path.touch", {"self": str(marker)}),
    ]


@pytest.mark.parametrize("allow_code", [False, True])
def test_code_factories_refused_without_side_effect(base, tmp_path, allow_code):
    """os:system and its cousins: refused at validation, nothing executed; the standard
    library stays refused even when the person allows code."""
    marker, victim, specs = _refused(tmp_path)
    for spec, kwargs in specs:
        msg = problems(_factory_cfg(base, spec, kwargs), allow_code=allow_code)
        line = line_of(msg, "model.factory")
        assert line is not None and spec in line, msg
        assert ("standard library" if allow_code else "allow_code") in line, msg
        assert not marker.exists() and victim.is_dir(), spec
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_refuses_os_system(base, tmp_path, capsys):
    from dnnbrain.cli.saliency_batch import main
    marker = tmp_path / "MARKER"
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(_factory_cfg(base, "os:system",
                                             {"command": f"touch {marker}"})))
    assert main([str(f), "-dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.factory: 'os:system' names Python code" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_user_module_and_file_not_imported_without_opt_in(base, tmp_path, monkeypatch):
    """A module or file.py that writes a marker when imported: neither is imported (nor
    in sys.modules) unless the person passes allow_code."""
    code = textwrap.dedent(f"""\
        open({str(tmp_path / 'IMPORTED')!r}, 'a').write('x')
        import torch
        def build(width=4):
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(width, 3))
        """)
    (tmp_path / "evil_factory_mod.py").write_text(code)
    (tmp_path / "evil.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    f = tmp_path / "run.yaml"
    for spec in ("evil_factory_mod:build", "evil.py:build"):
        f.write_text(yaml.safe_dump(_factory_cfg(base, spec)))
        assert "allow_code" in line_of(problems(f), "model.factory")
        assert not (tmp_path / "IMPORTED").exists()
        assert "evil_factory_mod" not in sys.modules and "evil" not in sys.modules
    try:  # the person's opt-in
        cfg = load_config(f, allow_code=True)
        assert cfg["model"]["factory"] == f"{tmp_path / 'evil.py'}:build"
        assert (tmp_path / "IMPORTED").exists()
        from dnnbrain.batch.build import build_model
        with pytest.raises(ValueError, match="allow_code"):  # a resolved config: same rule
            build_model(cfg["model"])
        assert isinstance(build_model(cfg["model"], allow_code=True).model, torch.nn.Module)
    finally:
        sys.modules.pop("evil_factory_mod", None)


def test_registered_factory(base):
    calls = []

    @register_factory("tiny_test_net")
    def build(width=4):
        calls.append(width)
        return _tiny(width)

    try:
        cfg = load_config(_factory_cfg(base, "tiny_test_net", {"width": 6}))
        assert cfg["model"]["factory"] == "tiny_test_net" and calls == [6]
        with pytest.raises(ValueError, match="already a registered factory"):
            register_factory("tiny_test_net", _tiny)
        with pytest.raises(ValueError, match="without ':'"):
            register_factory("os:system", _tiny)
        assert "tiny_test_net" in factories.factory_names()
    finally:
        unregister_factory("tiny_test_net")
    assert "is not a registered factory" in line_of(
        problems(_factory_cfg(base, "tiny_test_net")), "model.factory")


def test_entry_point_factory(base, tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint
    (tmp_path / "ep_factory_mod.py").write_text(textwrap.dedent("""\
        import torch
        def build():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(2, 3))
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="ep_net", value="ep_factory_mod:build", group="dnnbrain.factories")
    monkeypatch.setattr(factories, "entry_points",
                        lambda group: [ep] if group == "dnnbrain.factories" else [])
    try:
        assert load_config(_factory_cfg(base, "ep_net"))["model"]["factory"] == "ep_net"
    finally:
        sys.modules.pop("ep_factory_mod", None)


def test_torchvision_factory_by_name_offline(base, monkeypatch):
    """torchvision builders by name (two spellings, one canonical); random weights only:
    `weights` refused with a hint, weights_backbone forced to None (no download)."""
    import torch.hub
    fetched = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: fetched.append(a) or {})
    for spec in ("torchvision:squeezenet1_1", "torchvision.models.squeezenet1_1"):
        cfg = load_config(dict(_factory_cfg(base, spec, {"num_classes": 3}),
                               model={"factory": spec, "kwargs": {"num_classes": 3},
                                      "img_size": 32, "layers": {"fc": "classifier.1"}}))
        assert cfg["model"]["factory"] == "torchvision:squeezenet1_1"
    msg = problems(_factory_cfg(base, "torchvision:squeezenet1_1", {"weights": "DEFAULT"}))
    assert "`weights` must be null" in line_of(msg, "model.kwargs.weights")
    assert "did you mean ['resnet18'" in line_of(
        problems(_factory_cfg(base, "torchvision:resnt18")), "model.factory")
    msg = problems(_factory_cfg(base, "torchvision:vit_b_16", {"image_size": 30}))
    assert "cannot build the network: AssertionError: Input shape indivisible" in line_of(
        msg, "model.factory")  # the builder's own error, as a problem of the config
    net = factories.load_factory("torchvision:lraspp_mobilenet_v3_large")(num_classes=2)
    assert isinstance(net, torch.nn.Module) and fetched == []
    with pytest.raises(ValueError, match="`weights_backbone` must be null"):
        factories.load_factory("torchvision:lraspp_mobilenet_v3_large")(
            weights_backbone="DEFAULT")


def test_timm_factory(base):
    if not factories.importlib.util.find_spec("timm"):
        assert "timm, which is not installed" in line_of(
            problems(_factory_cfg(base, "timm:resnet18")), "model.factory")
        pytest.skip("timm is not installed")
    cfg = load_config(dict(base, model={"factory": "timm:resnet18",
                                        "kwargs": {"num_classes": 3}, "img_size": 32,
                                        "layers": {"fc": "fc"}},
                           targets=[{"layer": "fc", "units": [1]}]))
    assert cfg["model"]["factory"] == "timm:resnet18"
    msg = problems(_factory_cfg(base, "timm:resnet18", {"pretrained": True}))
    assert "`pretrained` must be null" in line_of(msg, "model.kwargs.pretrained")
    assert "not a timm model" in line_of(problems(_factory_cfg(base, "timm:nosuchnet")),
                                         "model.factory")


def test_kwargs_must_be_plain_data(base):
    register_factory("tiny_test_net2", _tiny)
    try:
        msg = problems(_factory_cfg(base, "tiny_test_net2", {"width": print}))
        assert "plain YAML data" in line_of(msg, "model.kwargs.width")
    finally:
        unregister_factory("tiny_test_net2")


def test_eval_needs_the_same_opt_in(base, tmp_path):
    from dnnbrain.cli.saliency_eval import _parser
    from dnnbrain.evaluate.load import build_dnn
    (tmp_path / "net.py").write_text("import torch\ndef build():\n    return torch.nn."
                                     "Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten())\n")
    cfg = load_config(_factory_cfg(base, str(tmp_path / "net.py") + ":build",
                                   layers={"conv": "0", "fc": "1"}), allow_code=True)
    with pytest.raises(ValueError, match="allow_code"):
        build_dnn(cfg, "cpu")
    assert build_dnn(cfg, "cpu", allow_code=True).layers == ["conv", "fc"]
    assert _parser().parse_args(["run", "-allow-code"]).allow_code
    assert "evaluate.allow_code: unknown key" in problems(dict(base, evaluate={
        "allow_code": True}))


# ------------------------------------------------------------------------------ YAML

def _bomb(levels=9):
    rows = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "bomb:\n" + "\n".join("  " + r for r in rows) + "\n"


@pytest.mark.parametrize("where", ["title: *l8\n",
                                   "methods: [{name: ig, steps: *l8}]\n"])
def test_alias_bomb_refused_fast(base, tmp_path, where):
    cfg = {k: v for k, v in base.items() if not (k == "methods" and "methods" in where)}
    text = _bomb() + yaml.safe_dump(cfg) + where
    assert len(text) < 1500
    f = tmp_path / "bomb.yaml"
    f.write_text(text)
    tic = time.perf_counter()
    with pytest.raises(ValueError) as err:
        load_config(f)
    assert time.perf_counter() - tic < 1.0
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and "expands to more than" in msg


def test_recursive_yaml_and_dict_refused(base, tmp_path):
    f = tmp_path / "rec.yaml"
    f.write_text(yaml.safe_dump(base) + "title: &a [*a]\n")
    with pytest.raises(ValueError, match="contains it") as err:
        load_config(f)
    assert "\n" not in str(err.value)
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        load_config(dict(base, title=loop))
    shared = {"name": "ig", "steps": 2}  # shared, not recursive: fine
    assert len(load_config(dict(base, methods=[shared, dict(shared, label="b")]))["methods"]) == 2


def test_yaml_size_and_nesting_bounded(base, tmp_path, monkeypatch):
    f = tmp_path / "deep.yaml"
    f.write_text("title: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ValueError, match="nests too deeply"):
        load_config(f)
    monkeypatch.setattr(safeyaml, "MAX_YAML_BYTES", 100)
    f.write_text(yaml.safe_dump(base))
    with pytest.raises(ValueError, match="at most 100"):
        load_config(f)


# ------------------------------------------------------------ method parameters

NaN, INF = float("nan"), float("inf")
METHOD_BAD = [  # (method entry, target, key path, text of the error)
    ({"name": "smoothgrad", "n_samples": -1}, ("fc2", 1), "n_samples", "positive int"),
    ({"name": "smoothgrad", "n_samples": 0}, ("fc2", 1), "n_samples", "positive int"),
    ({"name": "smoothgrad", "n_samples": True}, ("fc2", 1), "n_samples", "positive int"),
    ({"name": "smoothgrad", "n_samples": 2.5}, ("fc2", 1), "n_samples", "positive int"),
    ({"name": "smoothgrad", "n_samples": "4"}, ("fc2", 1), "n_samples", "positive int"),
    ({"name": "smoothgrad", "sigma_multiplier": -0.1}, ("fc2", 1), "sigma_multiplier", "[0,"),
    ({"name": "smoothgrad", "sigma_multiplier": NaN}, ("fc2", 1), "sigma_multiplier", "[0,"),
    ({"name": "smoothgrad", "sigma_multiplier": INF}, ("fc2", 1), "sigma_multiplier", "[0,"),
    ({"name": "smoothgrad", "sigma_multiplier": True}, ("fc2", 1), "sigma_multiplier", "[0,"),
    ({"name": "smoothgrad", "sigma_multiplier": "a"}, ("fc2", 1), "sigma_multiplier", "[0,"),
    ({"name": "vanilla", "memory_budget": "100kB"}, ("fc2", 1), "memory_budget",
     "too small"),
    ({"name": "ig", "steps": 2, "memory_budget": "100kB"}, ("conv2", 1), "memory_budget",
     "too small"),
    ({"name": "smoothgrad", "base": "ig", "n_samples": 2, "memory_budget": "100kB"},
     ("fc2", 1), "memory_budget", "too small"),
    ({"name": "ig", "memory_budget": INF}, ("fc2", 1), "memory_budget", "finite"),
    ({"name": "ig", "memory_budget": NaN}, ("fc2", 1), "memory_budget", "finite"),
    ({"name": "ig", "memory_budget": "1e999"}, ("fc2", 1), "memory_budget", "finite"),
    ({"name": "gradcam", "cam_layer": "conv3"}, ("conv2", 1), "cam_layer",
     "must run before the target layer 'conv2'"),
    ({"name": "gradcam++", "cam_layer": "fc1"}, ("fc2", 1), "cam_layer", "(N, C, H, W)"),
    ({"name": "occlusion", "window": 80, "stride": 80}, ("fc2", 1), "window",
     "must fit in the input (64, 64)"),
    ({"name": "upsampled_activation"}, ("fc2", 1), None, "needs a target layer with spatial"),
]


@pytest.mark.parametrize("entry,target,param,text", METHOD_BAD,
                         ids=[f"{e['name']}-{p}-{e.get(p)!r}" for e, _, p, _ in METHOD_BAD])
def test_method_parameters_checked_before_any_work(base, shapenet, tmp_path, entry, target,
                                                   param, text):
    """Validation reports it at the key path; the method itself raises the same error at
    run time (Python API); a refused run writes nothing."""
    from dnnbrain.dnn.algo import make_method
    cfg = dict(base, methods=[entry], targets=[{"layer": target[0], "units": [target[1]]}])
    msg = problems(cfg)
    line = line_of(msg, "methods[0]" + (f".{param}" if param else ""))
    assert line is not None and text in line, msg
    with pytest.raises(ValueError) as err:
        run(cfg, progress=False)
    assert not (tmp_path / "out").exists()
    params = {k: v for k, v in entry.items() if k != "name"}
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError) as err:
        make_method(shapenet, entry["name"], target[0], target[1], **params).backprop(
            x, preprocessed=True)
    assert text in str(err.value) and str(err.value) in line


def test_check_input_is_public_and_cached(shapenet):
    from dnnbrain.dnn.algo import GradCAM, Occlusion
    cam = GradCAM(shapenet, "conv2", 1, cam_layer="conv3")
    with pytest.raises(ValueError, match="`cam_layer` must run before"):
        cam.check_input((3, 64, 64))
    occ = Occlusion(shapenet, "fc2", 1, window=16, stride=8)
    occ.check_input((3, 64, 64))
    with pytest.raises(ValueError, match="`window` \\(16, 16\\) must fit in the input"):
        occ.check_input((3, 8, 8))
    with pytest.raises(ValueError, match="`shape` must be a tuple"):
        occ.check_input([3, 64, 64])
    with pytest.raises(ValueError, match="no target"):
        Occlusion(shapenet).check_input((3, 64, 64))


def test_error_names_the_parameter_the_user_wrote(shapenet):
    """SmoothGrad(n_samples=...) names n_samples; backprop_smooth(n_iter=...) names n_iter;
    a bad base names `base`, not `method`."""
    from dnnbrain.dnn.algo import SmoothGrad, VanillaSaliencyImage
    with pytest.raises(ValueError, match=r"^`n_samples` must be a positive int, got 0$"):
        SmoothGrad(shapenet, "fc2", 1, n_samples=0)
    with pytest.raises(ValueError, match=r"^`n_iter` must be a positive int, got 0$"):
        VanillaSaliencyImage(shapenet, "fc2", 1).backprop_smooth(torch.rand(3, 64, 64), 0)
    with pytest.raises(ValueError, match=r"^`sigma_multiplier` must be a number in \[0, inf"):
        VanillaSaliencyImage(shapenet, "fc2", 1).backprop_smooth(
            torch.rand(3, 64, 64), 2, sigma_multiplier=math.nan)
    with pytest.raises(ValueError, match=r"^`base` must be one of \['vanilla', 'guided'"):
        SmoothGrad(shapenet, "fc2", 1, base="nope")
