"""Image files: the one reader for stimuli and their masks.

Every image file dnnbrain reads goes through :func:`read_image`, which

* turns the picture upright by its EXIF orientation tag (a phone photo stored sideways
  with "rotate 90" in its EXIF is fed to the network as it is displayed);
* refuses files with more than :func:`pixel_limit` pixels (width x height) before
  decoding them, in place of PIL's own decompression-bomb warning and error: the limit
  is the ``max_pixels`` parameter, else the ``DNNBRAIN_MAX_PIXELS`` environment variable,
  else :data:`DEFAULT_MAX_PIXELS` (PIL's own threshold, about 89.5 million pixels);
* decodes the whole file at once, so a truncated or damaged file fails here, with an
  error that names it, rather than later inside PIL.

PIL's global ``Image.MAX_IMAGE_PIXELS`` is switched off only while a file is opened and
decoded by this module (under a lock) and restored right after.
"""
from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV", "pixel_limit", "read_image",
           "image_size", "upright", "decode"]

PathLike = Union[str, "os.PathLike[str]"]
#: Most pixels (width x height) an image file may have by default: PIL's own threshold.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
#: Environment variable that sets the pixel limit (a positive integer).
MAX_PIXELS_ENV = "DNNBRAIN_MAX_PIXELS"
#: EXIF orientations (tag 274) that swap width and height.
_TRANSPOSED = (5, 6, 7, 8)
#: What PIL's decoders raise on damaged data, besides OSError without an errno.
_DECODE_ERRORS = (SyntaxError, EOFError, struct.error, zlib.error, IndexError, ValueError)
_PIL_LOCK = threading.Lock()


def pixel_limit(value: Optional[int] = None) -> int:
    """The pixel limit: ``value``, else ``$DNNBRAIN_MAX_PIXELS``, else the default.

    Parameters
    ----------
    value : int or None
        Most pixels (width x height) an image file may have.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If the value (or the environment variable) is not a positive integer.
    """
    name, raw = "`max_pixels`", value
    if value is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        name = f"${MAX_PIXELS_ENV}"
        try:
            raw = int(raw.replace("_", ""))
        except ValueError:
            pass
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ValueError(f"{name} must be a positive integer (pixels), got {raw!r}")
    return raw


@contextlib.contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    """PIL's own pixel check off (ours replaces it), restored on exit."""
    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_path(path: PathLike, what: str, kind: str = "an image file") -> Path:
    """``path`` as a Path; ValueError if it is a folder, FileNotFoundError if missing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} file '{path}' is a folder, not {kind} (a folder of "
                         "images is a Stimulus.from_folder)")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: '{path}'")
    return path


def _open(path: Path, what: str) -> ImageFile.ImageFile:
    try:
        with _named(path, what):
            return Image.open(path)
    except UnidentifiedImageError:
        raise ValueError(f"{what} file '{path}' is not an image PIL can read (unknown format "
                         "or damaged header)") from None


@contextlib.contextmanager
def _named(path: object, what: str) -> Iterator[None]:
    """PIL's errors on damaged or truncated data as a ValueError naming ``path``; an
    operating-system error (permission, I/O) keeps its type and gets the file name."""
    try:
        yield
    except UnidentifiedImageError:
        raise
    except OSError as err:
        if err.errno is not None:
            if err.filename is None:
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
        raise ValueError(f"{what} file '{path}' is truncated or damaged (PIL: {err}); "
                         "re-save or replace it") from err
    except _DECODE_ERRORS as err:
        raise ValueError(f"{what} file '{path}' is truncated or damaged (PIL: "
                         f"{type(err).__name__}: {err}); re-save or replace it") from err


def _orientation(img: Image.Image, what: str, path: object) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception as err:  # PIL raises many types on malformed EXIF blocks
        if "truncated" in str(err):  # the EXIF block is read from the file's end
            raise ValueError(f"{what} file '{path}' is truncated; re-create or remove "
                             "it") from err
        raise ValueError(f"{what} file '{path}' has unreadable EXIF data "
                         f"({type(err).__name__}: {err}); strip its EXIF") from err
    return value if isinstance(value, int) else 1


def upright(img: Image.Image, what: str = "image", path: object = None) -> Image.Image:
    """``img`` turned by its EXIF orientation tag (``PIL.ImageOps.exif_transpose``).

    Parameters
    ----------
    img : PIL.Image.Image
        A loaded image; without an orientation tag (or with tag 1) it is returned as is.
    what, path : str, object
        Name the parameter and the file in errors.

    Returns
    -------
    PIL.Image.Image
        The upright image (a new one when turned; its orientation tag is removed).
    """
    if _orientation(img, what, path) in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(img)
        except Exception as err:
            raise ValueError(f"{what} file '{path}': EXIF orientation cannot be applied "
                             f"({type(err).__name__}: {err})") from err
    return img


def _check_pixels(img: Image.Image, path: Path, what: str, limit: int) -> None:
    w, h = img.size
    if w * h > limit:
        raise ValueError(f"{what} file '{path}' has {w}x{h} = {w * h:,} pixels, more than "
                         f"the limit of {limit:,} (a guard against decompression bombs); "
                         f"raise it with the `max_pixels` parameter or ${MAX_PIXELS_ENV}")
    if w < 1 or h < 1:
        raise ValueError(f"{what} file '{path}' is empty ({w}x{h} pixels)")


def decode(img: Image.Image, what: str = "image", path: object = None) -> None:
    """``img.load()``, with errors of damaged or truncated data naming ``path``."""
    with _named(path, what):
        img.load()


def read_image(path: PathLike, max_pixels: Optional[int] = None, exif: bool = True,
               what: str = "image") -> Image.Image:
    """Read and decode an image file, upright, within the pixel limit.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    max_pixels : int or None
        Most pixels (width x height) allowed; None: see :func:`pixel_limit`.
    exif : bool
        Apply the EXIF orientation tag (see :func:`upright`).
    what : str
        How errors name the file (``"image"``, ``"mask image"`` ...).

    Returns
    -------
    PIL.Image.Image
        The decoded image in the file's own mode, independent of the (closed) file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is a folder, not an image, too large, truncated or damaged; the
        message names the file (and for the limit, the pixel count and how to raise it).
    OSError
        For operating-system errors (permission, I/O), with the file name.
    """
    limit = pixel_limit(max_pixels)
    path = _check_path(path, what)
    with _pil_bomb_check_off(), _open(path, what) as img:
        _check_pixels(img, path, what, limit)
        decode(img, what, path)
        out = img.copy() if not exif else upright(img, what, path)
        return img.copy() if out is img else out


def image_size(path: PathLike, max_pixels: Optional[int] = None, exif: bool = True,
               what: str = "image") -> Tuple[int, int]:
    """``(height, width)`` of an image file as :func:`read_image` returns it (upright),
    from its header only; the same checks except for damaged pixel data."""
    limit = pixel_limit(max_pixels)
    path = _check_path(path, what)
    with _pil_bomb_check_off(), _open(path, what) as img:
        _check_pixels(img, path, what, limit)
        w, h = img.size
        turned = exif and _orientation(img, what, path) in _TRANSPOSED
    return (w, h) if turned else (h, w)
