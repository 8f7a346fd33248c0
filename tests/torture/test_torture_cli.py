"""Torture: bad input to the three command-line programs (``dnn_saliency``,
``dnn_saliency_batch``, ``dnn_saliency_eval``), called in-process as ``main([...])`` on the
demo network and two demo images. Each refusal exits 2 with one ``prog: error:`` line
naming the option or file, writes nothing and changes no global state."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml

from dnnbrain.cli import saliency, saliency_batch, saliency_eval

from .conftest import IMAGES
from .helpers import (MARKER, Case, Payload, alias_bomb, bomb_png, call_cli, cli_problems,
                      enospc, guarded, jpeg_bytes, marker, params, png_bytes, refuse_writes)

MAINS = {saliency.PROG: saliency.main, saliency_batch.PROG: saliency_batch.main,
         saliency_eval.PROG: saliency_eval.main}
CUDA = "CUDA is available" if torch.cuda.is_available() else None


def erofs(path=None) -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


# ------------------------------------------------------------------------ dnn_saliency

def sal_argv(c, drop=(), **over):
    """The valid base call on ``c``, with options replaced (``over``: option name without
    the dash, underscores for dashes; a list for several values, None to leave out)."""
    opts = {"net": "ShapeNet", "layer": "fc2", "chn": ["1"], "stim": list(c.images),
            "meth": "vanilla", "out": str(c.tmp / "out")}
    opts.update(over)
    argv = []
    for key, val in opts.items():
        if key in drop or val is None:
            continue
        flag = "-" + key.replace("_", "-")
        if val is True:
            argv.append(flag)
        else:
            argv += [flag, *([val] if isinstance(val, (str, int, float)) else val)]
    return argv


def S(id, names, drop=(), setup=None, writes_ok=False, skip=None, **over):
    """A ``dnn_saliency`` case: the base call with ``over`` (values may be functions of
    ctx)."""
    def run(c):
        return sal_argv(c, drop, **{k: (v(c) if callable(v) else v) for k, v in over.items()})
    return Case(f"saliency-{id}", run, names, setup=setup, writes_ok=writes_ok, skip=skip,
                extra={"prog": saliency.PROG})


def write(name, data):
    """A setup writing ``data`` (bytes or text) to ``ctx.tmp/name``."""
    def setup(c):
        p = c.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
    return setup


def at(name):
    return lambda c: str(c.tmp / name)


def _payload(name):
    """A setup saving a pickle whose loading would run ``touch MARKER``."""
    def setup(c):
        torch.save({"w": Payload(c.tmp / MARKER)}, c.tmp / name)
    return setup


def _other_weights(name):
    """A setup saving the state dict of another architecture."""
    def setup(c):
        torch.save(torch.nn.Linear(3, 2).state_dict(), c.tmp / name)
    return setup


def _ro_disk(c):
    (c.tmp / "ro").mkdir()
    refuse_writes(c.monkeypatch, c.tmp / "ro", erofs, mkdir=True)


def _full_disk(c):
    (c.tmp / "full").mkdir()
    refuse_writes(c.monkeypatch, c.tmp / "full", enospc, mkdir=False)


SALIENCY = [
    # network and weights
    S("net=NoNet", ("NoNet",), net="NoNet"),
    S("net-missing", ("-net",), drop=("net",)),
    S("net=empty", ("net",), net=""),
    S("weights-missing-file", ("absent.pth",), weights=at("absent.pth")),
    S("weights-garbage", ("junk.pth",), setup=write("junk.pth", b"not a pickle at all"),
      weights=at("junk.pth")),
    S("random-weights+weights", ("-random-weights",), setup=write("w.pth", b"x"),
      random_weights=True, weights=at("w.pth")),
    S("seed=-1", ("-seed",), random_weights=True, seed="-1"),
    S("seed-without-random-weights", ("-seed", "-random-weights"), seed="3"),
    S("weights-pickle-payload", ("payload.pth",), setup=_payload("payload.pth"),
      weights=at("payload.pth")),
    S("weights-a-folder", ("weights|wdir",), setup=lambda c: (c.tmp / "wdir").mkdir(),
      weights=at("wdir")),
    S("random-weights-wrong-arch-weights", ("w.pth",), setup=_other_weights("w.pth"),
      weights=at("w.pth")),
    S("seed=x", ("-seed",), seed="x"),
    S("device=cuda-without-cuda", ("device|cuda",), device="cuda", skip=CUDA),
    S("device=tpu", ("device", "tpu"), device="tpu"),
    S("device=cuda:7", ("device|cuda",), device="cuda:7", skip=CUDA),
    # layer and units
    S("layer=conv9", ("layer", "conv9"), layer="conv9"),
    S("layer-missing", ("-layer",), drop=("layer",)),
    S("layer=empty", ("layer",), layer=""),
    S("layer=dotted-missing", ("layer",), layer="conv1.weight.x"),
    S("layer-gradcam-on-fc-cam_layer", ("cam_layer",), meth="gradcam", layer="fc2",
      param="cam_layer=fc1"),
    S("chn=0", ("unit",), chn=["0"]),
    S("chn=5", ("unit",), chn=["1", "5"]),
    S("chn=x", ("-chn",), chn=["x"]),
    S("chn=1.5", ("-chn",), chn=["1.5"]),
    S("chn-missing", ("-chn",), drop=("chn",)),
    S("chn=spatial-on-fc-missing", ("-chn",), chn=["1,2,3"]),
    # method and its parameters
    S("meth=nope", ("-meth",), meth="nope"),
    S("param=no-equals", ("-param",), param="steps"),
    S("param=empty-key", ("-param",), param="=3"),
    S("param-yaml-syntax", ("-param", "steps"), meth="ig", param="steps=[1,"),
    S("param-python-tag", ("-param", "baseline"), meth="ig",
      param=lambda c: f"baseline=!!python/object/apply:os.system ['touch {c.tmp / MARKER}']"),
    S("param-alias-bomb", ("-param", "baseline"), meth="ig",
      param="baseline=" + alias_bomb()),
    S("param-recursive-alias", ("-param", "baseline"), meth="ig", param="baseline=&a [*a]"),
    S("param-unknown", ("-param", "bogus", "memory_budget"), param="bogus=1"),
    S("param-unknown-smoothgrad", ("-param", "stepz", "n_samples"), meth="smoothgrad",
      param="stepz=1"),
    S("param-smoothgrad-base=nope", ("base",), meth="smoothgrad", param="base=nope"),
    S("param-ig-steps=0", ("steps",), meth="ig", param="steps=0"),
    S("param-ig-baseline=purple", ("baseline",), meth="ig", param="baseline=purple"),
    S("param-smoothgrad-n_samples=x", ("n_samples",), meth="smoothgrad",
      param="n_samples=x"),
    S("param-occlusion-window>image", ("window",), meth="occlusion", param="window=100"),
    S("param-gradcam-cam_layer=nope", ("cam_layer",), meth="gradcam", param="cam_layer=nope"),
    S("param-memory_budget=lots", ("memory_budget",), param="memory_budget=lots"),
    S("reduce=median", ("-reduce",), reduce="median"),
    # stimuli
    S("stim-missing-file", ("absent.png",), stim=lambda c: [str(c.tmp / "absent.png")]),
    S("stim-empty-file", ("empty.png",), setup=write("empty.png", b""), stim=at("empty.png")),
    S("stim-not-utf8-csv", ("bad.stim.csv",), setup=write("bad.stim.csv", b"\xff\xfe\x00bad"),
      stim=at("bad.stim.csv")),
    S("stim-empty-csv", ("empty.stim.csv|stim",), setup=write("empty.stim.csv", b""),
      stim=at("empty.stim.csv")),
    S("stim-csv-missing-image", ("nope.png",),
      setup=write("s.stim.csv", "type=image\npath=.\ndata=stimID\nnope.png\n"),
      stim=at("s.stim.csv")),
    S("stim-folder-without-images", ("stim",), setup=write("folder/notes.txt", "hello"),
      stim=at("folder")),
    S("stim-text-file", ("notes.txt|stim",), setup=write("notes.txt", "hello"),
      stim=at("notes.txt")),
    S("stim-not-an-image", ("fake.png",), setup=write("fake.png", b"GIF89a not really"),
      stim=at("fake.png")),
    S("stim-pixel-bomb", ("bomb.png",), setup=write("bomb.png", bomb_png()),
      stim=at("bomb.png")),
    S("stim-same-map-name", ("-stim|stim",), setup=write("a/x.png", Path(IMAGES[0]).read_bytes()),
      stim=lambda c: [IMAGES[0], IMAGES[0]]),
    S("stim-missing", ("-stim",), drop=("stim",)),
    S("stim-empty-folder", ("stim|empty",), setup=lambda c: (c.tmp / "empty").mkdir(),
      stim=at("empty")),
    S("stim-csv-and-image", ("stim",), setup=write("s.stim.csv", "type=image\n"),
      stim=lambda c: [str(c.tmp / "s.stim.csv"), IMAGES[0]]),
    S("stim-truncated-image", ("cut.png",),
      setup=write("cut.png", png_bytes((64, 64))[:400]), stim=lambda c: [IMAGES[0],
                                                                      str(c.tmp / "cut.png")]),
    S("stim-truncated-jpeg-pixels", ("cut.jpg",),
      setup=write("cut.jpg", jpeg_bytes((64, 64))[:1500]),
      stim=lambda c: [IMAGES[0], str(c.tmp / "cut.jpg")], writes_ok=True),
    # output
    S("out=existing-file", ("-out",), setup=write("outfile", "keep"), out=at("outfile")),
    S("out-below-a-file", ("-out",), setup=write("outfile", "keep"), out=at("outfile/sub")),
    S("out-not-empty", ("-out", "-force"), setup=write("out/old.txt", "keep")),
    S("out-missing", ("-out",), drop=("out",)),
    S("out-read-only-disk", ("ro",), setup=_ro_disk, out=at("ro/out")),
    S("out-full-disk", ("full",), setup=_full_disk, out=at("full/out"), writes_ok=True),
    # figure options
    S("cmap=nope", ("cmap", "nope"), cmap="nope"),
    S("vmin>vmax", ("vmin", "vmax"), vmin="2", vmax="1"),
    S("vmin=nan", ("vmin",), vmin="nan"),
    S("vmin=vmax", ("vmin", "vmax"), vmin="1", vmax="1"),
    S("vmax=inf", ("vmax",), vmax="inf"),
    S("cmap=empty", ("cmap",), cmap=""),
    S("ncol=x", ("-ncol",), ncol="x"),
    S("vmax=x", ("-vmax",), vmax="x"),
    S("mode=hsv", ("-mode",), mode="hsv"),
    S("ncol=0", ("-ncol",), ncol="0"),
    S("batch-size=0", ("-batch-size",), batch_size="0"),
    S("batch-size=-3", ("-batch-size",), batch_size="-3"),
    S("batch-size=x", ("-batch-size",), batch_size="x"),
]


# ------------------------------------------------------------------------ dnn_saliency_batch

def config_file(mutate=None, name="run.yaml", text=None):
    """A setup writing the small run config (after ``mutate(cfg, ctx)``) or ``text``."""
    def setup(c):
        p = c.tmp / name
        if text is not None:
            (p.write_bytes if isinstance(text, bytes) else p.write_text)(
                text(c) if callable(text) else text)
            return
        cfg = c.config
        if mutate is not None:
            mutate(cfg, c)
        out = cfg.get("outputs") if isinstance(cfg, dict) else None
        if isinstance(out, dict) and isinstance(out.get("dir"), str) and \
                not os.path.isabs(out["dir"]):  # outputs are relative to the current folder
            out["dir"] = str(c.tmp / out["dir"])
        p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return setup


def B(id, names, extra_args=(), setup=None, config="run.yaml", writes_ok=False, skip=None,
      mentions=()):
    """A ``dnn_saliency_batch`` case (``mentions``: more text its message must hold, as
    the file a config problem is about)."""
    def run(c):
        return [str(c.tmp / config) if config else None,
                *[a(c) if callable(a) else a for a in extra_args]]
    return Case(f"batch-{id}", lambda c: [a for a in run(c) if a is not None], names,
                setup=setup, writes_ok=writes_ok, skip=skip,
                extra={"prog": saliency_batch.PROG, "mentions": mentions})


def setkey(path, value):
    """A config mutation: ``a.b.c`` = value (value may be a function of ctx)."""
    def mutate(cfg, c):
        keys = path.split(".")
        d = cfg
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        last = keys[-1]
        v = value(c) if callable(value) else value
        if isinstance(d, list):
            d[int(last)] = v
        else:
            d[last] = v
    return mutate


def _factory_os_system(cfg, c):
    cfg["model"] = {"factory": "os:system", "kwargs": {"command": f"touch {c.tmp / MARKER}"}}


BATCH = [
    B("config-missing", ("absent.yaml",), config="absent.yaml"),
    B("config-is-folder", ("sub",), setup=lambda c: (c.tmp / "sub").mkdir(), config="sub"),
    B("config-unparseable", ("run.yaml",), setup=config_file(text="model: [unclosed\n  x: {")),
    B("config-not-utf8", ("run.yaml",), setup=config_file(text=b"title: \xff\xfe\n")),
    B("config-empty", ("<config>",), setup=config_file(text="")),
    B("config-a-list", ("<config>",), setup=config_file(text="- 1\n- 2\n")),
    B("config-alias-bomb", ("run.yaml|stimuli",),
      setup=config_file(text=lambda c: "stimuli: " + alias_bomb() + "\n")),
    B("model.name=NoNet", ("model.name",), setup=config_file(setkey("model.name", "NoNet"))),
    B("model.device=tpu", ("model.device",), setup=config_file(setkey("model.device", "tpu"))),
    B("model.device=cuda", ("model.device",), setup=config_file(setkey("model.device", "cuda")),
      skip=CUDA),
    B("targets.layer=conv9", ("targets",),
      setup=config_file(setkey("targets.0.layer", "conv9"))),
    B("targets.units=0", ("targets",), setup=config_file(setkey("targets.0.units", [0]))),
    B("methods=nope", ("methods",), setup=config_file(setkey("methods", ["nope"]))),
    B("methods.ig.steps=-1", ("methods",),
      setup=config_file(setkey("methods", [{"name": "ig", "steps": -1}]))),
    B("batch_size=0", ("batch_size",), setup=config_file(setkey("batch_size", 0))),
    B("seed=x", ("seed",), setup=config_file(setkey("seed", "x"))),
    B("stimuli-missing-file", ("stimuli",),
      setup=config_file(setkey("stimuli", lambda c: [str(c.tmp / "absent.png")]))),
    B("outputs.colormap=nope", ("outputs.colormap",),
      setup=config_file(setkey("outputs.colormap", "nope"))),
    B("outputs.save=gif", ("outputs.save",), setup=config_file(setkey("outputs.save", ["gif"]))),
    B("unknown-key", ("frobnicate",), setup=config_file(setkey("frobnicate", 1))),
    B("factory=os:system", ("model.factory|factory",), setup=config_file(_factory_os_system)),
    B("factory=os:system-dry-run", ("model.factory|factory",),
      setup=config_file(_factory_os_system), extra_args=["-dry-run"]),
    B("dry-run-bad-config", ("methods",), setup=config_file(setkey("methods", ["nope"])),
      extra_args=["-dry-run"]),
    *[B(f"shard={v}", ("shard",), setup=config_file(), extra_args=[f"-shard={v}"])
      for v in ("0/0", "3/2", "x", "-1/2", "1/", "1/2/3", "0.5/2", "")],
    B("workers=-1", ("-workers",), setup=config_file(), extra_args=["-workers", "-1"]),
    B("workers=x", ("-workers",), setup=config_file(), extra_args=["-workers", "x"]),
    B("out=existing-file", ("outputs.dir",), setup=lambda c: (config_file()(c),
                                                            write("outfile", "keep")(c)),
      extra_args=["-out", at("outfile")], mentions=("-out", "outfile")),
    B("out-below-a-file", ("outputs.dir",), setup=lambda c: (config_file()(c),
                                                             write("outfile", "keep")(c)),
      extra_args=["-out", at("outfile/run")], mentions=("-out", "outfile")),
    B("outputs.dir=existing-file", ("outputs.dir",), setup=lambda c: (
        config_file(setkey("outputs.dir", "outfile"))(c), write("outfile", "keep")(c)),
      mentions=("outfile",)),
    B("out-full-disk", ("full",), setup=lambda c: (config_file(
        setkey("outputs.dir", str(c.tmp / "full" / "out")))(c), _full_disk(c)), writes_ok=True),
    B("stimuli-empty-image", ("stimuli[1]",), setup=lambda c: (
        write("e.png", b"")(c), config_file(setkey("stimuli", [IMAGES[0], "e.png"]))(c))),
    B("stimuli-folder-with-bomb", ("stimuli",), setup=lambda c: (
        write("imgs/bomb.png", bomb_png())(c), config_file(setkey("stimuli", "imgs"))(c))),
    B("stimuli-empty-folder", ("stimuli",), setup=lambda c: (
        (c.tmp / "empty").mkdir(), config_file(setkey("stimuli", "empty"))(c))),
    B("stimuli-not-utf8-csv", ("stimuli",), setup=lambda c: (
        write("bad.stim.csv", b"\xff\xfe\x00")(c),
        config_file(setkey("stimuli", "bad.stim.csv"))(c))),
    B("stimuli-pixel-bomb", ("stimuli[0]",), setup=lambda c: (
        write("bomb.png", bomb_png())(c), config_file(setkey("stimuli", ["bomb.png"]))(c))),
    B("targets=[]", ("targets",), setup=config_file(setkey("targets", []))),
    B("methods=[]", ("methods",), setup=config_file(setkey("methods", []))),
    B("factory-file-missing-allow-code", ("model.factory",), extra_args=["-allow-code"],
      setup=config_file(setkey("model", {"factory": "nothere.py:build"}))),
    B("factory=os:system-merge", ("model.factory|factory",),
      setup=config_file(_factory_os_system), extra_args=["-merge"]),
    B("merge-bad-config", ("methods",), setup=config_file(setkey("methods", ["nope"])),
      extra_args=["-merge"]),
    B("out-foreign-folder", ("-force",), setup=lambda c: (config_file()(c),
                                                         write("foreign/a.txt", "x")(c)),
      extra_args=["-out", at("foreign")]),
    B("evaluate.metrics=nope", ("evaluate.metrics",),
      setup=config_file(setkey("evaluate", {"metrics": ["nope"]}))),
    B("evaluate.n_steps=0", ("evaluate.n_steps",),
      setup=config_file(setkey("evaluate", {"n_steps": 0}))),
    B("model.weights-missing", ("model.weights",),
      setup=config_file(setkey("model.weights", "absent.pth"))),
    B("outputs.percentile=200", ("outputs.percentile",),
      setup=config_file(setkey("outputs.percentile", 200))),
    B("merge-not-a-run", ("out",), setup=config_file(), extra_args=["-merge"]),
    B("config-arg-missing", ("RUN.yaml",), config=None),
    B("out-read-only-disk", ("ro",), setup=lambda c: (config_file(
        setkey("outputs.dir", str(c.tmp / "ro" / "out")))(c), _ro_disk(c))),
]


# ------------------------------------------------------------------------ dnn_saliency_eval

def E(id, names, args=(), spoil=None, setup=None, writes_ok=False, skip=None,
      fixture="run_copy"):
    """A ``dnn_saliency_eval`` case on a copy of the finished run (``ctx.run``), spoiled
    by ``spoil(run_dir)``."""
    def run(c):
        return [str(c.run), *[a(c) if callable(a) else a for a in args]]

    def prepare(c):
        if spoil is not None:
            spoil(c.run)
        if setup is not None:
            setup(c)
    return Case(f"eval-{id}", run, names, setup=prepare, writes_ok=writes_ok, skip=skip,
                extra={"prog": saliency_eval.PROG, "run": fixture})


def _rewrite(name, fn):
    def spoil(run):
        p = run / name
        p.write_bytes(fn(p.read_bytes()))
    return spoil


def _drop_column(data: bytes) -> bytes:
    rows = [line.split(",") for line in data.decode("utf-8").splitlines()]
    i = rows[0].index("layer")
    return "\n".join(",".join(r[:i] + r[i + 1:]) for r in rows).encode("utf-8") + b"\n"


def _factory_in_run(run):
    """The run's resolved config names ``os:system`` (touching MARKER) as its factory."""
    p = run / "config.resolved.yaml"
    cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    cfg["model"] = {"factory": "os:system",
                    "kwargs": {"command": f"touch {run.parent / MARKER}"}}
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")


def _flip_byte(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


EVAL = [
    Case("eval-not-a-run", lambda c: [str(c.tmp)], ("manifest|run",),
         extra={"prog": saliency_eval.PROG}),
    Case("eval-missing-folder", lambda c: [str(c.tmp / "absent")], ("absent",),
         extra={"prog": saliency_eval.PROG}),
    Case("eval-a-file", lambda c: [str(c.tmp / "f.txt")], ("f.txt", "run_dir"),
         setup=write("f.txt", "x"), extra={"prog": saliency_eval.PROG}),
    E("manifest-garbage", ("manifest.csv",),
      spoil=_rewrite("manifest.csv", lambda d: b"\xff\xfe garbage\n")),
    E("manifest-empty", ("manifest.csv",), spoil=_rewrite("manifest.csv", lambda d: b"")),
    E("manifest-column-missing", ("manifest.csv",),
      spoil=_rewrite("manifest.csv", _drop_column)),
    E("manifest-map-missing", ("manifest.csv",),
      spoil=lambda r: next(r.rglob("*.npy")).unlink()),
    E("manifest-unknown-stimulus", ("stim",),
      spoil=_rewrite("manifest.csv", lambda d: d.replace(b"shape_00.png", b"shape_99.png"))),
    E("manifest-deleted", ("manifest.csv",), spoil=lambda r: (r / "manifest.csv").unlink()),
    E("network.pth-tampered", ("network.pth",), spoil=_rewrite("network.pth", _flip_byte),
      fixture="random_run_copy"),
    E("network.pth-deleted", ("network.pth",), spoil=lambda r: (r / "network.pth").unlink(),
      fixture="random_run_copy"),
    E("network.pth-garbage", ("network.pth",),
      spoil=_rewrite("network.pth", lambda d: b"garbage"), fixture="random_run_copy"),
    E("fingerprint-tampered", ("network",), spoil=_rewrite(
        "config.resolved.yaml", lambda d: d.replace(b"fingerprint: ", b"fingerprint: 00"))),
    E("config-garbage", ("config.resolved.yaml",),
      spoil=_rewrite("config.resolved.yaml", lambda d: b"model: [unclosed\n  {")),
    E("config-not-utf8", ("config.resolved.yaml",),
      spoil=_rewrite("config.resolved.yaml", lambda d: b"\xff\xfe\x00")),
    E("config-a-list", ("config.resolved.yaml",),
      spoil=_rewrite("config.resolved.yaml", lambda d: b"- 1\n")),
    E("config-deleted", ("config.resolved.yaml",),
      spoil=lambda r: (r / "config.resolved.yaml").unlink()),
    E("config-factory=os:system", ("factory",), spoil=_factory_in_run),
    E("only-shard-parts", ("manifest", "-merge"), spoil=lambda r: (r / "manifest.csv").rename(
        r / "manifest.part0of2.csv")),
    E("results-exist-without-force", ("-force",),
      spoil=lambda r: ((r / "eval").mkdir(), (r / "eval" / "metrics.json").write_text("{}"))),
    E("stim-not-utf8-csv", ("bad.stim.csv",), setup=write("bad.stim.csv", b"\xff\xfe\x00"),
      args=["-stim", at("bad.stim.csv")]),
    E("stim-folder-without-images", ("folder",), setup=write("folder/notes.txt", "x"),
      args=["-stim", at("folder")]),
    E("metrics=nope", ("metric|nope",), args=["-metrics", "nope"]),
    E("metrics=empty", ("metrics",), args=["-metrics", ""]),
    E("road-percentages=x", ("-road-percentages",), args=["-road-percentages", "x"]),
    E("tolerance=nan", ("pointing_tolerance|tolerance",),
      args=["-metrics", "localisation", "-tolerance", "nan"]),
    E("metrics=mixed", ("nope",), args=["-metrics", "road", "nope"]),
    E("batch-size=0", ("batch_size|batch-size",), args=["-batch-size", "0"]),
    E("batch-size=x", ("-batch-size",), args=["-batch-size", "x"]),
    E("seed=-1", ("seed",), args=["-seed", "-1"]),
    E("steps=0", ("n_steps|steps",), args=["-metrics", "deletion_insertion", "-steps", "0"]),
    E("road-percentages=1.5", ("road_percentages|road-percentages",),
      args=["-metrics", "road", "-road-percentages", "0.5", "1.5"]),
    E("rand-images=0", ("randomisation_images|rand-images",),
      args=["-metrics", "randomisation", "-rand-images", "0"]),
    E("tolerance=-1", ("pointing_tolerance|tolerance",),
      args=["-metrics", "localisation", "-tolerance", "-1"]),
    E("device=tpu", ("device",), args=["-device", "tpu"]),
    E("device=cuda", ("device|cuda",), args=["-device", "cuda"], skip=CUDA),
    E("stim-missing", ("absent.stim.csv|stim",),
      args=["-stim", lambda c: str(c.tmp / "absent.stim.csv")]),
    E("out=existing-file", ("outfile", "-out"), setup=write("outfile", "keep"),
      args=["-out", at("outfile")]),
    E("out-below-a-file", ("outfile", "-out"), setup=write("outfile", "keep"),
      args=["-out", at("outfile/eval")]),
    E("out-full-disk", ("full",), setup=_full_disk, args=["-out", at("full/eval")],
      writes_ok=True),
    E("out-read-only-disk", ("ro",), setup=_ro_disk, args=["-out", at("ro/eval")],
      writes_ok=True),
]

CASES = SALIENCY + BATCH + EVAL


@pytest.mark.parametrize("case", params(CASES))
def test_cli_refuses(case, ctx, capsys, monkeypatch, request):
    """Exit 2, one ``prog: error:`` line naming the option or file, nothing written, no
    global state changed (and nothing executed)."""
    ctx.monkeypatch = monkeypatch
    if case.extra.get("run"):
        ctx.run = request.getfixturevalue(case.extra["run"])
    if case.setup is not None:
        case.setup(ctx)
    prog = case.extra["prog"]
    argv = case.run(ctx)
    with guarded([ctx.tmp], writes_ok=case.writes_ok) as guard:
        rc, err = call_cli(MAINS[prog], argv, capsys)
    guard.problems += cli_problems(prog, rc, err, case.names)
    guard.problems += [f"message does not mention {m!r}: {err[-400:]!r}"
                       for m in case.extra.get("mentions", ()) if m not in err]
    if marker(ctx).exists():
        guard.problems.append(f"{MARKER} was created: code named in the config ran")
    guard.check(case.max_s)


def test_valid_calls_pass(ctx, capsys, run_copy):
    """The control: the base calls the cases spoil work and change no global state."""
    with guarded([]) as guard:
        rc, err = call_cli(saliency.main, sal_argv(ctx), capsys)
    guard.check()
    assert rc == 0, err
    assert sorted(p.name for p in (ctx.tmp / "out" / "npy").iterdir()) == [
        "shape_00_fc2_chn1.npy", "shape_01_fc2_chn1.npy"]
    config_file(setkey("outputs.dir", str(ctx.tmp / "run")))(ctx)
    with guarded([ctx.tmp]) as guard:
        rc, err = call_cli(saliency_batch.main, [str(ctx.tmp / "run.yaml"), "-dry-run"],
                           capsys)
    guard.check()
    assert rc == 0, err
    with guarded([]) as guard:
        rc, err = call_cli(saliency_eval.main, [str(run_copy), "-metrics", "road",
                                                "-road-percentages", "0.5", "-no-plots"],
                           capsys)
    guard.check()
    assert rc == 0, err
    assert (run_copy / "eval" / "metrics.json").is_file()
