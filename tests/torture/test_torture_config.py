"""Torture: bad run configs (dicts and YAML files) fed to :func:`dnnbrain.batch.run`:
unknown keys, wrong types, bad layers / units / methods / method parameters, factories
that name code, YAML bombs and tags, bad outputs folders, seeds and stimuli.

Every case is refused during validation, with a config report of exactly one problem
(or one line naming the YAML file), nothing written, no factory called (a marker file a
command would create stays absent) and no global state changed."""
from __future__ import annotations

import copy

import pytest
import yaml

from dnnbrain.batch import run
from dnnbrain.batch import safeyaml

from .helpers import Case, alias_bomb, check_refused, guarded, marker, params

NAN, INF = float("nan"), float("inf")


def _prepare(c, cfg):
    """Make the config's paths absolute and aim its outputs at the case's folder."""
    cfg = copy.deepcopy(cfg)
    if isinstance(cfg.get("outputs"), dict) and cfg["outputs"].get("dir") == "out":
        cfg["outputs"]["dir"] = str(c.tmp / "out")
    return cfg


def conf(mutate, allow_code=False):
    """A call: ``run`` a copy of the case's small config after ``mutate(cfg, ctx)``."""
    def call(c):
        cfg = _prepare(c, c.config)
        mutate(cfg, c)
        return run(cfg, progress=False, workers=0, allow_code=allow_code)
    return call


def setk(**kw):
    """A mutation setting top-level keys."""
    return lambda cfg, c: cfg.update(copy.deepcopy(kw))


def method(entry, target=None):
    """A mutation: one method entry (and optionally one target ``(layer, unit)``)."""
    def mutate(cfg, c):
        cfg["methods"] = [copy.deepcopy(entry)]
        if target is not None:
            cfg["targets"] = [{"layer": target[0], "units": [target[1]]}]
    return mutate


def factory(spec, kwargs=None, allow_code=False):
    """A call: a factory model whose kwargs would create the marker file if called."""
    def mutate(cfg, c):
        cmd = f"touch '{marker(c)}'"
        cfg["model"] = {"factory": spec, "kwargs": kwargs(c) if callable(kwargs) else
                        (kwargs if kwargs is not None else {"command": cmd})}
    return conf(mutate, allow_code)


def yaml_file(text, name="run.yaml"):
    """(setup, call): write the small config as YAML plus ``text(ctx)`` appended (later
    keys win), then ``run`` the file."""
    def setup(c):
        cfg = _prepare(c, c.config)
        body = yaml.safe_dump(cfg, sort_keys=False)
        (c.tmp / name).write_text(body + text(c), encoding="utf-8")

    def call(c):
        return run(c.tmp / name, progress=False, workers=0)
    return setup, call


def ycase(id, text, names=("run.yaml",), **kw):
    setup, call = yaml_file(text)
    return Case(id, call, names, setup=setup, **kw)


def _big_yaml(c):
    return "# " + "x" * (safeyaml.MAX_YAML_BYTES + 10) + "\n"


def _user_file(c):
    """A user's builder file that creates the marker when imported."""
    (c.tmp / "mynet.py").write_text(f"open({str(marker(c))!r}, 'w').close()\n"
                                    "def build(**kw):\n    raise SystemExit(3)\n")


def _outfile(c):
    (c.tmp / "taken").write_text("a file, not a folder")


def _csv_missing(c):
    (c.tmp / "s.stim.csv").write_text("type=image\npath=.\ndata=stimID\nnope.png\n")


def _self_loop(cfg, c):
    loop = []
    loop.append(loop)
    cfg["title"] = loop


CASES = [
    # unknown keys and wrong types
    Case("unknown-top-key", conf(setk(titel="x")), ("titel",)),
    Case("unknown-target-key", conf(lambda cfg, c: cfg["targets"][0].update(unit=[1])),
         ("targets[0].unit",)),
    Case("unknown-outputs-key", conf(lambda cfg, c: cfg["outputs"].update(colour="red")),
         ("outputs.colour",)),
    Case("unknown-model-key", conf(lambda cfg, c: cfg["model"].update(weight="x.pth")),
         ("model.weight",)),
    Case("batch_size=str", conf(setk(batch_size="8")), ("batch_size",)),
    Case("batch_size=0", conf(setk(batch_size=0)), ("batch_size",)),
    Case("targets=dict", conf(setk(targets={"layer": "fc2", "units": [1]})), ("targets",)),
    Case("methods=str", conf(setk(methods="vanilla")), ("methods",)),
    Case("pretrained=yes-string", conf(lambda cfg, c: cfg["model"].update(pretrained="yes")),
         ("model.pretrained",)),
    Case("model.name=NoNet", conf(lambda cfg, c: cfg["model"].update(name="NoNet")),
         ("model.name",)),
    Case("outputs.save=jpeg", conf(lambda cfg, c: cfg["outputs"].update(save=["jpeg"])),
         ("outputs.save",)),
    # layers, units, methods
    Case("layer=conv9", conf(setk(targets=[{"layer": "conv9", "units": [1]}])),
         ("targets[0].layer",)),
    Case("unit=0", conf(setk(targets=[{"layer": "fc2", "units": [0]}])),
         ("targets[0].units[0]",)),
    Case("unit-past-size", conf(setk(targets=[{"layer": "fc2", "units": [1, 5]}])),
         ("targets[0].units[1]",)),
    Case("reduce=median", conf(setk(targets=[{"layer": "conv4", "units": [1],
                                              "reduce": "median"}])),
         ("targets[0].reduce",)),
    Case("call-index-missing", conf(setk(targets=[{"layer": "fc2", "units": [1],
                                                   "call": 5}])),
         ("targets[0].call",)),
    Case("method=nope", conf(setk(methods=["nope"])), ("methods[0]",)),
    Case("method-unknown-param", conf(method({"name": "ig", "stpes": 4})),
         ("methods[0].stpes",)),
    # method parameters
    *[Case(f"smoothgrad-n_samples={v!r}", conf(method({"name": "smoothgrad", "n_samples": v})),
           ("methods[0].n_samples",)) for v in (0, -1, 2.5, True)],
    *[Case(f"smoothgrad-sigma_multiplier={v!r}",
           conf(method({"name": "smoothgrad", "n_samples": 2, "sigma_multiplier": v})),
           ("methods[0].sigma_multiplier",)) for v in (-0.1, NAN, INF)],
    *[Case(f"memory_budget={v!r}", conf(method({"name": "ig", "steps": 4,
                                                "memory_budget": v})),
           ("methods[0].memory_budget",)) for v in ("100kB", INF, NAN, 0, "lots")],
    Case("cam_layer-after-target", conf(method({"name": "gradcam", "cam_layer": "conv4"},
                                               ("conv3", 1))),
         ("methods[0].cam_layer",)),
    Case("occlusion-window>image", conf(method({"name": "occlusion", "window": 100,
                                                "stride": 100})),
         ("methods[0].window",)),
    Case("upsampled_activation-on-fc", conf(method({"name": "upsampled_activation"},
                                                   ("fc2", 1))),
         ("methods[0]",)),
    # factories naming code: refused without being imported or called
    *[Case(f"factory={spec}", factory(spec), ("model.factory",))
      for spec in ("os:system", "subprocess:run", "builtins:exec", "shutil:rmtree",
                   "builtins:eval", "posix:system")],
    *[Case(f"factory={spec}-allow_code", factory(spec, allow_code=True),
           ("model.factory",)) for spec in ("os:system", "builtins:exec")],
    Case("factory=user-file-no-opt-in", factory("mynet.py:build"), ("model.factory",),
         setup=_user_file),
    Case("factory=not-callable", factory("dnnbrain.dnn.zoo:SHAPENET_CLASSES", {},
                                         allow_code=True), ("model.factory",)),
    Case("factory=unregistered-name", factory("no_such_builder", {}), ("model.factory",)),
    Case("factory-weights-kwarg", factory("torchvision:resnet18",
                                          {"weights": "IMAGENET1K_V1"}),
         ("model.kwargs.weights",)),
    Case("factory-pretrained-kwarg", factory("torchvision:resnet18", {"pretrained": True}),
         ("model.kwargs.pretrained",)),
    # YAML files
    ycase("yaml-alias-bomb-title", lambda c: f"title: {alias_bomb(levels=7)}\n", max_s=1.0),
    ycase("yaml-alias-bomb-method-param",
          lambda c: f"methods: [{{name: ig, steps: {alias_bomb(levels=7)}}}]\n", max_s=1.0),
    ycase("yaml-recursive-alias", lambda c: "title: &a [*a]\n"),
    ycase("yaml-python-object-tag",
          lambda c: f"title: !!python/object/apply:os.system [\"touch '{marker(c)}'\"]\n"),
    ycase("yaml-python-name-tag", lambda c: "title: !!python/name:os.system\n"),
    ycase("yaml-over-size-cap", _big_yaml),
    ycase("yaml-syntax-error", lambda c: "methods: [vanilla\n"),
    Case("yaml-not-a-mapping", lambda c: run(c.tmp / "run.yaml", progress=False, workers=0),
         ("<config>",), setup=lambda c: (c.tmp / "run.yaml").write_text("[1, 2]\n")),
    Case("yaml-not-utf8", lambda c: run(c.tmp / "run.yaml", progress=False, workers=0),
         ("run.yaml",), setup=lambda c: (c.tmp / "run.yaml").write_bytes(b"title: \xff\xfe\n")),
    Case("yaml-missing", lambda c: run(c.tmp / "absent.yaml", progress=False, workers=0),
         ("absent.yaml",), exc=(FileNotFoundError,)),
    Case("dict-contains-itself", conf(_self_loop), ("<dict>",)),
    # outputs, seed, stimuli
    Case("outputs.dir=existing-file",
         conf(lambda cfg, c: cfg["outputs"].update(dir=str(c.tmp / "taken"))),
         ("outputs.dir",), setup=_outfile),
    *[Case(f"seed={v!r}", conf(setk(seed=v)), ("seed",)) for v in (-1, 1.5, "zero", True)],
    Case("stimuli-missing-file", conf(lambda cfg, c: cfg.update(
        stimuli=cfg["stimuli"] + [str(c.tmp / "absent.png")])), ("stimuli[2]",)),
    Case("stimuli-missing-folder", conf(lambda cfg, c: cfg.update(
        stimuli=str(c.tmp / "nowhere"))), ("stimuli",)),
    Case("stimuli-csv-lists-missing", conf(lambda cfg, c: cfg.update(
        stimuli=str(c.tmp / "s.stim.csv"))), ("stimuli",), setup=_csv_missing),
    Case("stimuli-empty-list", conf(setk(stimuli=[])), ("stimuli",)),
]


@pytest.mark.parametrize("case", params(CASES))
def test_config_refused(case, ctx):
    """``run`` refuses the config at validation: a user error whose report names the key
    (or the file), nothing written, no factory called, nothing global changed."""
    check_refused(case, ctx, ctx.dnn.model)


def test_valid_config_passes(ctx):
    """The control: the small config runs, writes its maps and leaves the rest alone."""
    with guarded([], ctx.dnn.model) as guard:
        result = conf(lambda cfg, c: None)(ctx)
    guard.check()
    assert result is not None
    assert sorted(p.name for p in (ctx.tmp / "out").rglob("*.npy"))
    assert not marker(ctx).exists()
