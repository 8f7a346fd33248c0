"""Saliency map files: ``.npy`` (raw), ``.png`` (8-bit picture) and ``.nii.gz`` (NIfTI-1).

Every write is atomic (:mod:`dnnbrain.io.atomic`, whose functions this module re-exports):
the data go to a hidden temporary file in the destination folder, which then replaces the
destination with :func:`os.replace`. A reader (or a resumed batch run) therefore sees
either the old file or the complete new one, never a partial file, and a failed write
leaves neither a temporary file nor a damaged destination behind.

NIfTI layout convention
-----------------------
A map is indexed ``[row, col]`` with row 0 at the top of the image. NIfTI voxel axes
``(i, j, k)`` map through an identity affine to ``(x, y, z)`` in RAS+ space, and viewers
draw an axial slice with ``x`` to the right and ``y`` upwards. :func:`save_nifti` therefore
stores ``volume[i, j, 0] = map[H - 1 - j, i]``: ``i`` is the column (left to right) and ``j``
the row counted from the bottom, so a viewer in neurological convention shows the map
upright, as in the image (a radiological display mirrors it left-right):

- a 2-D map ``(H, W)`` becomes a 3-D volume ``(W, H, 1)``;
- a 3-D map ``(C, H, W)`` (channels first, as the saliency engine returns) becomes a 4-D
  volume ``(W, H, 1, C)``, one volume per channel.

:func:`load_nifti` inverts this exactly and returns the ``(H, W)`` / ``(C, H, W)`` array.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .atomic import PathLike, atomic_path, atomic_write, existing_part, save_bytes
from .encode import npy_bytes, png_bytes
from .images import read_image

__all__ = ["atomic_path", "atomic_write", "save_bytes", "existing_part", "save_npy", "save_png",
           "save_nifti", "load_nifti", "load_map", "save_map", "MAP_SUFFIXES"]

#: File endings :func:`load_map` and :func:`save_map` understand.
MAP_SUFFIXES = (".npy", ".png", ".nii", ".nii.gz")
#: Size of the NIfTI-1 header's ``descrip`` field, in bytes.
DESCRIP_BYTES = 80


def _suffix(path: Path) -> str:
    """The map ending of ``path`` (``.nii.gz`` counts as one), lower case."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_suffix(param: str, path: Path, allowed: tuple[str, ...]) -> None:
    if _suffix(path) not in allowed:
        raise ValueError(f"`{param}` must end with one of {list(allowed)}, got '{path}'")


def _as_numpy(arr: Any) -> np.ndarray:
    """``arr`` as a numpy array; torch tensors are detached and moved to the CPU."""
    if hasattr(arr, "detach") and hasattr(arr, "cpu"):
        arr = arr.detach().cpu().numpy()
    return np.asarray(arr)


def _checked(path: PathLike, allowed: tuple[str, ...], arr: Any) -> tuple[Path, np.ndarray]:
    """``path`` as a Path, checked to end in one of ``allowed``, and ``arr`` as numpy."""
    path = Path(path)
    _check_suffix("path", path, allowed)
    return path, _as_numpy(arr)



def save_npy(path: PathLike, arr: Any) -> Path:
    """Save an array atomically as ``.npy`` (no pickling, dtype and shape kept exactly).

    Parameters
    ----------
    path : str or os.PathLike
        Destination ending in ``.npy``.
    arr : array-like or torch.Tensor
        Any numeric array, e.g. a ``(3, H, W)`` float32 saliency map.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.npy`` or ``arr`` holds Python objects.
    """
    path, arr = _checked(path, (".npy",), arr)
    if arr.dtype == object:
        raise ValueError(f"`arr` must be a numeric array, got dtype object for '{path}'")

    return save_bytes(path, npy_bytes(arr))  # the bytes numpy.save writes


def _to_uint8_image(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` uint8 from the inputs :func:`save_png` accepts."""
    if img.ndim == 3 and img.shape[-1] not in (1, 3, 4) and img.shape[0] in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)  # channels first -> last
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (1, 3, 4)):
        raise ValueError("`img` must have shape (H, W), (H, W, C) or (C, H, W) with C in "
                         f"(1, 3, 4), got {img.shape}")
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype == np.uint8:
        return img
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if img.dtype.kind != "f":
        raise TypeError(f"`img` must be uint8, bool or float in 0..1, got dtype {img.dtype}")
    if img.size and not np.isfinite(img).all():
        raise ValueError("`img` must be finite, got NaN or inf values")
    if img.size and (img.min() < -1e-6 or img.max() > 1 + 1e-6):
        raise ValueError("float `img` must lie in 0..1 (rescale it first, e.g. with "
                         f"dnnbrain.viz), got range [{img.min():g}, {img.max():g}]")
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(path: PathLike, img: Any) -> Path:
    """Save a picture atomically as an 8-bit PNG.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ending in ``.png``.
    img : array-like or torch.Tensor
        ``(H, W)`` (grayscale), ``(H, W, C)`` or ``(C, H, W)`` with ``C`` in 1, 3, 4
        (channels-last wins when both fit). dtype uint8 (stored as is), bool (0/255) or
        float in 0..1 (scaled by 255 and rounded). Rescale raw saliency first, e.g. with
        :mod:`dnnbrain.viz`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        On a wrong ending or shape, non-finite values or floats outside 0..1.
    TypeError
        On any other dtype.
    """
    path, arr = _checked(path, (".png",), img)
    pixels = _to_uint8_image(arr)
    # zlib level 1, no row filters (dnnbrain.io.encode): maps are re-rendered at will,
    # encoding time matters more than size
    return save_bytes(path, png_bytes(pixels))


def _descrip_bytes(description: str) -> bytes:
    """UTF-8 ``description`` cut to 80 bytes without splitting a character; no NULs."""
    if not isinstance(description, str):
        raise TypeError(f"`description` must be a str, got {type(description).__name__}")
    raw = description.replace("\x00", "").encode("utf-8")[:DESCRIP_BYTES]
    return raw.decode("utf-8", errors="ignore").encode("utf-8")


def save_nifti(path: PathLike, map: Any, description: str = "") -> Path:  # noqa: A002
    """Save a map atomically as a NIfTI-1 volume for neuroimaging viewers.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ending in ``.nii.gz`` (compressed) or ``.nii``.
    map : array-like or torch.Tensor
        ``(H, W)`` or ``(C, H, W)`` real-valued map. Stored as float32 in the layout of the
        module docstring: ``(W, H, 1)`` or ``(W, H, 1, C)``, upright in a viewer.
    description : str
        Free text stored in the header's ``descrip`` field, e.g. ``"guided fc3 540"``. It
        is UTF-8 encoded and cut to 80 bytes (never inside a character); NULs are dropped.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        On a wrong ending, a map that is not 2-D or 3-D, or a non-real dtype.
    TypeError
        If ``description`` is not a str.
    """
    import nibabel as nib

    path, arr = _checked(path, (".nii", ".nii.gz"), map)
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "biuf":
        raise ValueError("`map` must be a real (H, W) or (C, H, W) array, got shape "
                         f"{arr.shape} and dtype {arr.dtype}")
    descrip = _descrip_bytes(description)
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        vol = arr[::-1, :].T[:, :, None]
    else:
        vol = np.transpose(arr[:, ::-1, :], (2, 1, 0))[:, :, None, :]
    img = nib.Nifti1Image(np.ascontiguousarray(vol), np.eye(4))
    img.header.set_data_dtype(np.float32)
    img.header["descrip"] = descrip
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def load_nifti(path: PathLike) -> tuple[np.ndarray, str]:
    """Load a map written by :func:`save_nifti`, in the layout it was given.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.nii.gz`` or ``.nii`` file.

    Returns
    -------
    map : numpy.ndarray
        float32 ``(H, W)`` for a ``(W, H, 1)`` volume, ``(C, H, W)`` for ``(W, H, 1, C)``.
    description : str
        The header's ``descrip`` field.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the volume is not ``(W, H, 1)`` or ``(W, H, 1, C)``.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI map not found: '{path}'")
    img = nib.load(str(path))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    if vol.ndim == 3 and vol.shape[2] == 1:
        out = vol[:, :, 0].T[::-1, :]
    elif vol.ndim == 4 and vol.shape[2] == 1:
        out = np.transpose(vol[:, :, 0, :], (2, 1, 0))[:, ::-1, :]
    else:
        raise ValueError(f"'{path}' must hold a (W, H, 1) or (W, H, 1, C) volume as "
                         f"save_nifti writes, got shape {vol.shape}")
    descrip = bytes(img.header["descrip"].item()).rstrip(b"\x00")
    return np.ascontiguousarray(out), descrip.decode("utf-8", errors="replace")


def load_map(path: PathLike) -> np.ndarray:
    """Load a saved map from ``.npy``, ``.nii``/``.nii.gz`` or ``.png``.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its ending picks the reader.

    Returns
    -------
    numpy.ndarray
        ``.npy``: the saved array, dtype and shape unchanged. NIfTI: float32 ``(H, W)`` or
        ``(C, H, W)`` as given to :func:`save_nifti`. PNG: float32 in 0..1 (pixel / 255),
        ``(H, W)`` for grayscale or ``(H, W, C)`` (channels last) for colour, so a float
        map saved by :func:`save_png` comes back within 1/510 of its values.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the ending is not one of :data:`MAP_SUFFIXES`.
    """
    path = Path(path)
    _check_suffix("path", path, MAP_SUFFIXES)
    if not path.is_file():
        raise FileNotFoundError(f"map file not found: '{path}'")
    kind = _suffix(path)
    if kind == ".npy":
        return np.load(path, allow_pickle=False)
    if kind in (".nii", ".nii.gz"):
        return load_nifti(path)[0]
    pil = read_image(path, exif=False, what="map")
    if pil.mode not in ("L", "RGB", "RGBA"):
        gray = len(pil.getbands()) == 1 and pil.mode != "P"
        pil = pil.convert("L" if gray else "RGBA" if "A" in pil.getbands() else "RGB")
    return np.asarray(pil, dtype=np.float32) / np.float32(255.0)


def save_map(path: PathLike, map: Any, description: str = "") -> Path:  # noqa: A002
    """Save ``map`` in the format its ending names (see :data:`MAP_SUFFIXES`).

    Parameters
    ----------
    path : str or os.PathLike
        Destination ending in ``.npy``, ``.png``, ``.nii`` or ``.nii.gz``.
    map : array-like or torch.Tensor
        ``.npy``: any numeric array. ``.png``: as :func:`save_png` (uint8/bool/float 0..1).
        NIfTI: ``(H, W)`` or ``(C, H, W)`` as :func:`save_nifti`.
    description : str
        NIfTI ``descrip`` text; ignored by the other formats.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If the ending is not one of :data:`MAP_SUFFIXES`, or as the chosen writer.
    """
    path = Path(path)
    _check_suffix("path", path, MAP_SUFFIXES)
    kind = _suffix(path)
    if kind == ".npy":
        return save_npy(path, map)
    if kind == ".png":
        return save_png(path, map)
    return save_nifti(path, map, description)
