"""Bad inputs give one-line errors of the documented types, naming the parameter or file.

Images (truncated, damaged, too large, EXIF orientation), preprocessed tensors and
baselines, integer and budget parameters, and the network's own complaints about an input
it cannot take. Everything runs on the demo network or tiny modules, on images written
here with PIL.
"""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dnnbrain.dnn.algo import VanillaSaliencyImage
from dnnbrain.dnn.algo.integrated import IntegratedGradients
from dnnbrain.dnn.algo.smooth import SmoothGrad
from dnnbrain.dnn.base import ImageTransform, load_image, to_input
from dnnbrain.dnn.models import DNN
from dnnbrain.io.images import DEFAULT_MAX_PIXELS, image_size, pixel_limit, read_image

PIXELS = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)  # H=6, W=4


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "ok.png"
    Image.fromarray(PIXELS).save(path)
    return path


@pytest.fixture
def vanilla(shapenet):
    return VanillaSaliencyImage(shapenet, "fc2", 1)


# ------------------------------------------------------------------ image files
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_file_is_named(tmp_path, vanilla, fmt):
    full = tmp_path / f"full.{fmt}"
    Image.fromarray(np.repeat(np.repeat(PIXELS, 16, 0), 16, 1)).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    calls = [lambda: load_image(cut), lambda: vanilla.backprop(str(cut))]
    if fmt == "png":  # PIL opens it lazily; the pixels fail in dnnbrain
        calls.append(lambda: load_image(Image.open(cut)))
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        assert str(cut) in one_line(err) and "truncated" in str(err.value)


def test_unreadable_files_and_folders_are_named(tmp_path, vanilla):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a picture")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (junk, empty):
        with pytest.raises(ValueError) as err:
            vanilla.backprop(path)
        assert str(path) in one_line(err) and "not an image" in str(err.value)
    with pytest.raises(ValueError) as err:
        load_image(str(tmp_path))
    assert "is a folder" in one_line(err) and str(tmp_path) in str(err.value)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels (8-bit gray) and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limit_replaces_pils_bomb_error(tmp_path, png, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))  # 10^10 pixels in 45 bytes
    saved = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError) as err:
        load_image(bomb)
    msg = one_line(err)
    assert str(bomb) in msg and "10,000,000,000 pixels" in msg and "DNNBRAIN_MAX_PIXELS" in msg
    assert f"{DEFAULT_MAX_PIXELS:,}" in msg and Image.MAX_IMAGE_PIXELS == saved
    # the limit is ours, through the parameter or the environment variable
    with pytest.raises(ValueError, match="24 pixels, more than the limit of 10"):
        load_image(png, max_pixels=10)
    monkeypatch.setenv("DNNBRAIN_MAX_PIXELS", "23")
    with pytest.raises(ValueError, match="limit of 23"):
        image_size(png)
    monkeypatch.setenv("DNNBRAIN_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match=r"\$DNNBRAIN_MAX_PIXELS must be a positive integer"):
        pixel_limit()
    monkeypatch.delenv("DNNBRAIN_MAX_PIXELS")
    with pytest.raises(ValueError, match="`max_pixels` must be a positive integer"):
        read_image(png, max_pixels=True)
    # PIL's own limit neither fires nor is left changed: a 4x6 image loads under 10 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert torch.equal(load_image(png), torch.from_numpy(np.moveaxis(PIXELS, -1, 0) / 255.0)
                       .float())
    assert Image.MAX_IMAGE_PIXELS == 10


def _exif_png(path, pixels: np.ndarray, orientation: int) -> None:
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes())


@pytest.mark.parametrize("orientation,turn", [(6, Image.Transpose.ROTATE_270),
                                              (3, Image.Transpose.ROTATE_180),
                                              (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    path = tmp_path / "phone.png"
    _exif_png(path, PIXELS, orientation)
    upright = np.asarray(Image.fromarray(PIXELS).transpose(turn))
    want = torch.from_numpy(np.moveaxis(upright, -1, 0) / 255.0).float()
    assert torch.equal(load_image(path), want)
    assert torch.equal(load_image(Image.open(path)), want)  # as from a path
    assert image_size(path) == upright.shape[:2]
    # a PIL image that is not straight from a file is used as it is
    assert torch.equal(load_image(Image.open(path).copy()),
                       torch.from_numpy(np.moveaxis(PIXELS, -1, 0) / 255.0).float())


def test_mask_follows_exif(tmp_path):
    from dnnbrain.io.stim import Stimulus
    mask = np.zeros((6, 4), np.uint8)
    mask[0, 0] = 255  # top left as stored
    _exif_png(tmp_path / "m.png", np.repeat(mask[..., None], 3, -1), 6)
    stim = Stimulus({"stimID": ["a.png"], "mask": ["m.png"]}, path=tmp_path)
    got = stim.mask(0)
    assert got.shape == (4, 6) and got[0, -1] and got.sum() == 1  # turned to top right


# ------------------------------------------------------------------ arrays and tensors
@pytest.mark.parametrize("image,kind,needle", [
    (np.zeros((0, 8, 3), np.uint8), ValueError, "at least one pixel"),
    (np.zeros((0, 0)), ValueError, "at least one pixel"),
    (Image.new("RGB", (0, 0)), ValueError, "at least one pixel"),
    (Image.fromarray(np.full((4, 4), np.nan, np.float32), "F"), ValueError, "finite"),
    (np.full((4, 4, 3), np.nan, np.float32), ValueError, "finite"),
    (np.zeros((1, 3, 4, 4), np.uint8), ValueError, "2 or 3 dimensions"),
    (np.zeros((4, 4, 3), object), TypeError, "dtype"),
])
def test_bad_pixels_refused(image, kind, needle):
    with pytest.raises(kind) as err:
        load_image(image)
    assert needle in one_line(err) and "`image`" in str(err.value)


def test_bfloat16_tensor_loads():
    x = torch.rand(3, 4, 4)
    assert torch.allclose(load_image(x.to(torch.bfloat16)), x, atol=1e-2)


@pytest.mark.parametrize("images,kind,needle", [
    (torch.zeros(0, 3, 64, 64), ValueError, "must not be empty"),
    (torch.full((1, 3, 64, 64), float("nan")), ValueError, "`image` must be finite"),
    (torch.full((3, 64, 64), float("inf")), ValueError, "`image` must be finite"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.complex64), TypeError, "real numbers"),
    (np.zeros((1, 3, 64, 64), object), TypeError, "real numbers"),
])
def test_bad_preprocessed_refused(vanilla, images, kind, needle):
    with pytest.raises(kind) as err:
        vanilla.backprop(images, preprocessed=True)
    assert needle in one_line(err)


def test_preprocessed_switch_and_size_checked():
    tf = ImageTransform(4)
    with pytest.raises(TypeError, match="`preprocessed` must be True or False"):
        to_input(torch.zeros(1, 3, 4, 4), tf, preprocessed="yes")
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        ImageTransform(True)


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 4, 64, 64), (1, 3, 4, 4)])
def test_input_the_network_cannot_take(vanilla, shape):
    with pytest.raises(ValueError) as err:
        vanilla.backprop(torch.zeros(shape), preprocessed=True)
    msg = one_line(err)
    assert f"`image` of shape {shape[1:]}" in msg and "(3, 64, 64)" in msg
    assert isinstance(err.value.__cause__, RuntimeError)


class _Gray(nn.Module):
    """A 1-channel network."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


class _Broken(nn.Module):
    """A network with a bug of its own."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        raise RuntimeError("internal failure")


def test_one_channel_model_clear_error_and_bugs_propagate():
    # DNN(model) gives a 1-channel model a grayscale transform: ordinary images work
    gray = VanillaSaliencyImage(DNN(_Gray(), img_size=8), "conv", 1)
    assert gray.backprop(np.zeros((8, 8, 3), np.uint8)).shape == (1, 8, 8)
    rgb = VanillaSaliencyImage(DNN(_Gray(), test_transform=ImageTransform(8)), "conv", 1)
    with pytest.raises(ValueError) as err:
        rgb.backprop(np.zeros((8, 8), np.uint8))
    msg = one_line(err)
    assert "first layer expects 1 channel (in_channels=1)" in msg and "channels=1" in msg
    # preprocessed 1-channel input is what it takes
    assert gray.backprop(torch.rand(1, 1, 8, 8), preprocessed=True).shape == (1, 1, 8, 8)
    broken = VanillaSaliencyImage(DNN(_Broken(), img_size=8), "conv", 1)
    with pytest.raises(RuntimeError, match="internal failure") as err:
        broken.backprop(np.zeros((8, 8, 3), np.uint8))
    assert not isinstance(err.value, ValueError)


@pytest.mark.parametrize("baseline", [np.full((3, 64, 64), np.nan, np.float32),
                                      torch.full((1, 3, 64, 64), float("inf"))])
def test_non_finite_baseline_refused(shapenet, baseline):
    with pytest.raises(ValueError) as err:
        IntegratedGradients(shapenet, "fc2", 1, steps=2, baseline=baseline)
    assert "`baseline` must be finite" in one_line(err)
    with pytest.raises(TypeError, match="`baseline` as an array must hold real numbers"):
        IntegratedGradients(shapenet, "fc2", 1, baseline=np.zeros((3, 64, 64), object))


# ------------------------------------------------------------------ parameters
def test_bool_is_not_an_int(shapenet):
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        VanillaSaliencyImage(shapenet, "fc2", 1, batch_size=True)
    with pytest.raises(ValueError, match="must be a positive int, got True"):
        SmoothGrad(shapenet, "fc2", 1, n_samples=True).backprop(torch.zeros(3, 64, 64),
                                                                preprocessed=True)


@pytest.mark.parametrize("budget", [float("inf"), float("nan"), "1e400", "1e300GB", -1.0])
def test_budget_must_be_finite(shapenet, budget):
    with pytest.raises(ValueError) as err:
        VanillaSaliencyImage(shapenet, "fc2", 1, memory_budget=budget)
    assert "`memory_budget` must be a finite positive number" in one_line(err)
