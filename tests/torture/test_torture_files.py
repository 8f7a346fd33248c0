"""Torture: bad files fed to the Python API: stimulus files and folders
(:class:`dnnbrain.io.stim.Stimulus`), image files (:func:`dnnbrain.io.images.read_image`,
a saliency method's ``backprop`` on a path) and weights files
(:func:`dnnbrain.dnn.models.build_network`, a run config's ``model.weights``).

Every case raises a user error whose one-line message names the file (or the key), writes
nothing, executes nothing a file holds (a marker file a pickled command would create stays
absent) and changes no hook, mode or global state. 16-bit and CMYK images are supported
(``docs``: any PIL mode), so they are in the control test, not among the cases."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnnbrain.dnn.algo.registry import make_method
from dnnbrain.dnn.models import ShapeNet, build_network
from dnnbrain.io.images import image_size, read_image
from dnnbrain.io.stim import Stimulus

from .helpers import (Case, Payload, bomb_png, check_refused, guarded, jpeg_bytes,
                      marker, params, png_bytes)

WEIGHTS = Path(__file__).resolve().parents[2] / "dnnbrain" / "data" / "shapenet.pth"
NOT_FOUND = (FileNotFoundError,)


def write(name, data):
    """A setup writing ``data`` (bytes, str, or a function of ctx giving either) to
    ``ctx.tmp / name`` (a name ending in '/' makes a folder)."""
    def setup(c):
        p = c.tmp / name
        if name.endswith("/"):
            p.mkdir(parents=True)
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        d = data(c) if callable(data) else data
        (p.write_bytes if isinstance(d, bytes) else p.write_text)(d)
    return setup


def both(*setups):
    def setup(c):
        for s in setups:
            s(c)
    return setup


# ------------------------------------------------------------------- stimulus files

HEAD = "type=image\npath=.\ndata=stimID,label\n"


def stim(name="s.stim.csv", text=None, check=False):
    """(setup, call): write a stimulus file, then ``Stimulus.read`` it (and
    ``check_files``)."""
    def call(c):
        s = Stimulus.read(c.tmp / name)
        if check:
            s.check_files()
        return s
    return (None if text is None else write(name, text)), call


def scase(id, text, names=("s.stim.csv",), exc=(ValueError,), check=False, name="s.stim.csv"):
    setup, call = stim(name, text, check)
    return Case(id, call, names, exc=exc, setup=setup)


def folder_case(id, setup, names, exc=(ValueError,), sub="imgs"):
    return Case(id, lambda c: Stimulus.from_folder(c.tmp / sub), names, exc=exc, setup=setup)


# ------------------------------------------------------------------- images


def png_truncated(c):
    return png_bytes((64, 64))[:300]


def jpeg_truncated(c):
    return jpeg_bytes((64, 64))[:400]


def read(name):
    return lambda c: read_image(c.tmp / name)


def backprop(name):
    return lambda c: make_method(c.dnn, "vanilla", "fc2", 1).backprop(str(c.tmp / name))


# ------------------------------------------------------------------- weights files


def saved(obj):
    """Bytes of ``torch.save(obj(ctx))``."""
    def data(c):
        buf = io.BytesIO()
        torch.save(obj(c), buf)
        return buf.getvalue()
    return data


def _state():
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)


def _wrong_shape(c):
    s = _state()
    s["fc2.weight"] = torch.zeros(7, s["fc2.weight"].shape[1])
    return s


def _wrong_keys(c):
    return {f"renamed.{k}": v for k, v in _state().items()}


def _no_tensors(c):
    return {k: "not a tensor" for k in _state()}


def weights(name, how="build"):
    def call(c):
        if how == "ShapeNet":
            return ShapeNet(weights=c.tmp / name)
        return build_network("ShapeNet", weights=str(c.tmp / name))
    return call


def wcase(id, data, names=("w.pth",), exc=(ValueError,), name="w.pth"):
    return Case(id, weights(name), names, exc=exc, setup=None if data is None else
                write(name, data))


def mention(*names):
    """``Case.extra`` of a config case: file names the report line must also contain."""
    return {"mentions": names}


def _run_with_stimuli(stimuli):
    def call(c):
        from dnnbrain.batch import run

        from .conftest import small_config
        cfg = small_config()
        cfg["outputs"]["dir"] = str(c.tmp / "out")
        cfg["stimuli"] = stimuli(c)
        return run(cfg, progress=False, workers=0)
    return call


def _run_with_weights(c):
    from dnnbrain.batch import run

    from .conftest import small_config
    cfg = small_config()
    cfg["outputs"]["dir"] = str(c.tmp / "out")
    cfg["model"] = {"name": "ShapeNet", "weights": str(c.tmp / "w.pth")}
    return run(cfg, progress=False, workers=0)


CASES = [
    # stimulus files
    scase("stim-missing", None, exc=NOT_FOUND),
    scase("stim-empty", ""),
    scase("stim-not-utf8", b"type=image\npath=.\ndata=stimID\nb\xe9\xff.png\n"),
    scase("stim-png-bytes", png_bytes((8, 8))),
    scase("stim-unknown-header-key", "type=image\ncolour=red\npath=.\ndata=stimID\na.png\n"),
    scase("stim-no-data-line", "type=image\npath=.\n"),
    scase("stim-no-stimID-column", "type=image\npath=.\ndata=label,class\n1,a\n",
          names=("s.stim.csv|stimID",)),
    scase("stim-duplicate-columns", "type=image\npath=.\ndata=stimID,stimID\na,b\n"),
    scase("stim-row-too-short", HEAD + "a.png,1\nb.png\n"),
    scase("stim-type=audio", "type=audio\npath=.\ndata=stimID\na.png\n"),
    scase("stim-bad-boxes", "type=image\npath=.\ndata=stimID,boxes\na.png,1 2 x 4\n"),
    scase("stim-lists-missing-images", HEAD + "absent.png,1\n", names=("absent.png",),
          exc=NOT_FOUND, check=True),
    Case("stim-is-a-folder", lambda c: Stimulus.read(c.tmp / "d.stim.csv"),
         ("d.stim.csv", "folder"), setup=write("d.stim.csv/", None)),
    Case("stim-mask-damaged", lambda c: Stimulus.read(c.tmp / "m.stim.csv").mask(0),
         ("bad_mask.png",),
         setup=both(write("a.png", png_bytes((16, 16))), write("bad_mask.png", b"GIF89a"),
                    write("m.stim.csv", "type=image\npath=.\ndata=stimID,mask\n"
                                        "a.png,bad_mask.png\n"))),
    folder_case("folder-without-images", write("imgs/notes.txt", "no images here"),
                ("imgs",)),
    folder_case("folder-missing", None, ("imgs",), exc=NOT_FOUND),
    folder_case("folder-is-a-file", write("imgs", "a file"), ("imgs",)),
    Case("from_files-empty", lambda c: Stimulus.from_files([]), ("files",)),
    # images
    Case("image-missing", read("absent.png"), ("absent.png",), exc=NOT_FOUND),
    Case("image-0-bytes", read("zero.png"), ("zero.png",), setup=write("zero.png", b"")),
    Case("image-truncated-png", read("t.png"), ("t.png",), setup=write("t.png", png_truncated)),
    Case("image-truncated-jpeg", read("t.jpg"), ("t.jpg",),
         setup=write("t.jpg", jpeg_truncated)),
    Case("image-text-as-png", read("text.png"), ("text.png",),
         setup=write("text.png", "this is not a picture\n")),
    Case("image-bomb", read("bomb.png"), ("bomb.png",), setup=write("bomb.png", bomb_png()),
         max_s=1.0),
    Case("image-folder-named-png", read("x.png"), ("x.png",), setup=write("x.png/", None)),
    Case("image-max_pixels=0", lambda c: read_image(c.images[0], max_pixels=0),
         ("max_pixels",)),
    Case("image_size-truncated-header", lambda c: image_size(c.tmp / "h.png"), ("h.png",),
         setup=write("h.png", lambda c: png_bytes()[:20])),
    # backprop on image paths
    Case("backprop-missing", backprop("absent.png"), ("absent.png",), exc=NOT_FOUND),
    Case("backprop-0-bytes", backprop("zero.png"), ("zero.png",),
         setup=write("zero.png", b"")),
    Case("backprop-truncated-png", backprop("t.png"), ("t.png",),
         setup=write("t.png", png_truncated)),
    Case("backprop-truncated-jpeg", backprop("t.jpg"), ("t.jpg",),
         setup=write("t.jpg", jpeg_truncated)),
    Case("backprop-text-as-png", backprop("text.png"), ("text.png",),
         setup=write("text.png", "not a picture")),
    Case("backprop-bomb", backprop("bomb.png"), ("bomb.png",),
         setup=write("bomb.png", bomb_png()), max_s=1.0),
    Case("backprop-folder-named-png", backprop("x.png"), ("x.png",),
         setup=write("x.png/", None)),
    Case("backprop-list-one-bad", lambda c: make_method(c.dnn, "vanilla", "fc2", 1).backprop(
        [c.images[0], str(c.tmp / "t.png")]), ("t.png",), setup=write("t.png", png_truncated)),
    Case("backprop-float-tiff>1", backprop("f.tif"), ("f.tif",),
         setup=lambda c: Image.fromarray(np.full((64, 64), 5.0, np.float32)).save(
             c.tmp / "f.tif")),
    Case("backprop-float-tiff-nan", backprop("f.tif"), ("f.tif",),
         setup=lambda c: Image.fromarray(np.full((64, 64), np.nan, np.float32)).save(
             c.tmp / "f.tif")),
    Case("stim-mask-missing", lambda c: Stimulus.read(c.tmp / "m.stim.csv").mask(0),
         ("absent_mask.png",), exc=NOT_FOUND,
         setup=both(write("a.png", png_bytes((16, 16))),
                    write("m.stim.csv", "type=image\npath=.\ndata=stimID,mask\n"
                                        "a.png,absent_mask.png\n"))),
    Case("config-stimuli-folder-without-images",
         _run_with_stimuli(lambda c: str(c.tmp / "imgs")), ("stimuli",),
         setup=write("imgs/notes.txt", "no images")),
    Case("config-stimuli-header-truncated", _run_with_stimuli(
        lambda c: [c.images[0], str(c.tmp / "h.png")]), ("stimuli[1]",),
        extra=mention("h.png"), setup=write("h.png", lambda c: png_bytes()[:20])),
    Case("config-stimuli-csv-lists-0-byte-png", _run_with_stimuli(
        lambda c: str(c.tmp / "s.stim.csv")), ("stimuli",), extra=mention("zero.png"),
        setup=both(write("zero.png", b""), write("s.stim.csv", HEAD + "zero.png,1\n"))),
    Case("config-stimuli-text-as-png", _run_with_stimuli(
        lambda c: [c.images[0], str(c.tmp / "text.png")]), ("stimuli[1]",),
        extra=mention("text.png"), setup=write("text.png", "not a picture")),
    Case("config-stimuli-bomb", _run_with_stimuli(
        lambda c: [c.images[0], str(c.tmp / "bomb.png")]), ("stimuli[1]",),
        extra=mention("bomb.png"), setup=write("bomb.png", bomb_png()), max_s=2.0),
    # weights files
    wcase("weights-missing", None, exc=NOT_FOUND),
    wcase("weights-empty", b"", names=("w.pth", "empty")),
    wcase("weights-truncated", lambda c: WEIGHTS.read_bytes()[:WEIGHTS.stat().st_size // 2]),
    wcase("weights-text", "conv1.weight: 1 2 3\n"),
    wcase("weights-png", png_bytes((8, 8))),
    wcase("weights-pickle-payload", saved(lambda c: Payload(marker(c))),
          names=("w.pth", "system")),
    wcase("weights-raw-pickle-payload", lambda c: pickle.dumps(Payload(marker(c)))),
    wcase("weights-payload-in-dict", saved(lambda c: {"conv1.weight": Payload(marker(c))})),
    wcase("weights-wrong-shape", saved(_wrong_shape), names=("w.pth", "fc2.weight")),
    wcase("weights-wrong-keys", saved(_wrong_keys), names=("w.pth", "renamed.")),
    wcase("weights-not-tensors", saved(_no_tensors), names=("w.pth",)),
    wcase("weights-a-list", saved(lambda c: list(_state().values()))),
    wcase("weights-a-tensor", saved(lambda c: torch.zeros(3))),
    wcase("weights-numpy-array", saved(lambda c: np.zeros(3))),
    Case("weights-folder", weights("wdir"), ("wdir", "folder"), setup=write("wdir/", None)),
    Case("config-model.weights-folder", _run_with_weights, ("model.weights",),
         setup=write("w.pth/", None)),
    Case("config-model.weights-missing", _run_with_weights, ("model.weights",)),
    Case("ShapeNet(weights=truncated)", weights("w.pth", "ShapeNet"), ("w.pth",),
         setup=write("w.pth", lambda c: WEIGHTS.read_bytes()[:1000])),
    Case("config-model.weights-payload", _run_with_weights, ("model.weights",),
         setup=write("w.pth", saved(lambda c: Payload(marker(c))))),
    Case("config-model.weights-wrong-shape", _run_with_weights, ("model.weights",),
         setup=write("w.pth", saved(_wrong_shape))),
]


@pytest.mark.parametrize("case", params(CASES))
def test_file_refused(case, ctx):
    """The call raises a user error naming the file (or key), and leaves the files, the
    model and the global state as they were; no code in a file runs."""
    check_refused(case, ctx, ctx.dnn.model, [ctx.x])


def test_valid_files_pass(ctx):
    """The control: a stimulus file, PNG / JPEG / 16-bit / CMYK images and the shipped
    weights are read, and reading them leaves everything alone."""
    (ctx.tmp / "a.png").write_bytes(png_bytes((64, 64)))
    (ctx.tmp / "b.jpg").write_bytes(jpeg_bytes((64, 64)))
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(ctx.tmp / "c16.png")
    Image.open(io.BytesIO(png_bytes((64, 64)))).convert("CMYK").save(ctx.tmp / "d.jpg")
    (ctx.tmp / "s.stim.csv").write_text(HEAD + "a.png,1\nb.jpg,2\nc16.png,3\nd.jpg,4\n")
    with guarded([ctx.tmp], ctx.dnn.model, [ctx.x]) as guard:
        s = Stimulus.read(ctx.tmp / "s.stim.csv")
        s.check_files()
        maps = make_method(ctx.dnn, "vanilla", "fc2", 1).backprop([str(p) for p in s.paths])
        dnn = build_network("ShapeNet", weights=str(WEIGHTS))
    guard.check()
    assert len(s) == 4 and maps.shape == (4, 3, 64, 64) and np.isfinite(maps).all()
    assert [t.shape for t in dnn.model.state_dict().values()] == [
        t.shape for t in ctx.dnn.model.state_dict().values()]
