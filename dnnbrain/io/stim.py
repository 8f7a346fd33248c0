"""DNNBrain stimulus files (``.stim.csv``) and the :class:`Stimulus` table.

DNNBrain's format: ``key=value`` header lines ``type=image`` (``video`` accepted), ``path=``
(stimulus folder, absolute or relative to the csv's folder), optional ``title=`` and, last,
``data=`` (column names, with ``stimID``); then rows such as
``shape_00.png,2,triangle,12 8 40 36,shape_00_mask.png``. Blank lines are skipped, cells
stripped. Column types: see :class:`Stimulus`; types of other columns come from the text, so
a str column whose cells all look like numbers reads back as numbers.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

from .images import _check_path, read_image
from .maps import atomic_write

__all__ = ["Stimulus", "demo_stimulus_file", "STIM_TYPES", "HEADER_KEYS", "IMAGE_EXTENSIONS"]

PathLike = Union[str, "os.PathLike[str]"]
Box = tuple[int, int, int, int]
#: Values the ``type=`` header accepts.
STIM_TYPES = ("image", "video")
#: Header keys, in the order they are written (``data`` last).
HEADER_KEYS = ("type", "path", "title", "data")
#: Default image endings for :meth:`Stimulus.from_folder` (matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".JPEG")
_STR_COLS = ("stimID", "boxes", "mask")
_FLOAT_COLS = ("onset", "duration", "response")
_TYPED_COLS = _STR_COLS + _FLOAT_COLS + ("label",)
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|nan|inf(inity)?)", re.I)


def demo_stimulus_file() -> Path:
    """Absolute path of the shipped demo set ``dnnbrain/data/stimuli/shapes.stim.csv``."""
    return Path(__file__).resolve().parent.parent / "data" / "stimuli" / "shapes.stim.csv"


def _is_number(cell: str) -> bool:
    """True for '' (NaN) and for a float literal."""
    return cell == "" or bool(_FLOAT_RE.fullmatch(cell))


def _parse_boxes(cell: str) -> list[Box]:
    """``"x0 y0 x1 y1; ..."`` -> list of int boxes; ValueError saying what is wrong."""
    boxes: list[Box] = []
    for part in cell.split(";") if cell.strip() else []:
        nums = part.split()
        if len(nums) != 4 or not all(_INT_RE.fullmatch(v) for v in nums):
            raise ValueError(f"each box must be 4 integers 'x0 y0 x1 y1' (boxes separated "
                             f"by ';'), got '{part.strip()}' in '{cell}'")
        x0, y0, x1, y1 = (int(v) for v in nums)
        if not 0 <= x0 < x1 or not 0 <= y0 < y1:
            raise ValueError(f"a box needs 0 <= x0 < x1 and 0 <= y0 < y1, got '{part.strip()}'")
        boxes.append((x0, y0, x1, y1))
    return boxes


def _cell_error(name: str, cell: str) -> str | None:
    """Why ``cell`` cannot be a value of column ``name``; None when it can."""
    if name == "stimID" and cell == "":
        return "column 'stimID' must not be empty"
    if name == "label" and not _INT_RE.fullmatch(cell):
        return f"column 'label' must be an integer, got '{cell}'"
    if name in _FLOAT_COLS and not _is_number(cell):
        return f"column '{name}' must be a number, got '{cell}'"
    if name == "boxes":
        try:
            _parse_boxes(cell)
        except ValueError as err:
            return f"column 'boxes': {err}"
    return None


def _type_cells(name: str, cells: Sequence[str], where: Sequence[str]) -> np.ndarray:
    """Typed 1-D column from stripped cells; ``where[i]`` prefixes errors for row ``i``."""
    for cell, loc in zip(cells, where):
        err = _cell_error(name, cell)
        if err:
            raise ValueError(f"{loc}: {err}")
    if name not in _STR_COLS and name not in _FLOAT_COLS and (
            name == "label" or (cells and all(_INT_RE.fullmatch(c) for c in cells))):
        return np.array([int(c) for c in cells], dtype=np.int64)
    if name in _FLOAT_COLS or (name not in _STR_COLS and any(cells)
                               and all(_is_number(c) for c in cells)):
        return np.array([float(c) if c else math.nan for c in cells], dtype=np.float64)
    return np.array(list(cells), dtype=object)


def _format_cell(value: Any, kind: str) -> str:
    """One cell as written: ints plainly, floats by repr ('nan' for NaN), else str."""
    return (str(int(value)) if kind in "iu" else repr(float(value)) if kind == "f"
            else str(value))


def _read_header(lines: Sequence[str], name: str) -> tuple[dict[str, str], list[str], int]:
    """Parse the header; return it, the column names and the (1-based) ``data=`` line."""
    header: dict[str, str] = {}
    at: dict[str, int] = {}
    for no, raw in enumerate(lines, start=1):
        if not (line := raw.strip()):
            continue
        key, sep, value = (s.strip() for s in line.partition("="))
        if not sep:
            raise ValueError(f"{name} line {no}: expected a 'key=value' header line "
                             f"(keys {list(HEADER_KEYS)}, 'data=' last), got '{line}'")
        if key not in HEADER_KEYS:
            raise ValueError(f"{name} line {no}: unknown header key '{key}', "
                             f"valid keys are {list(HEADER_KEYS)}")
        if key in header:
            raise ValueError(f"{name} line {no}: header key '{key}' given twice")
        header[key], at[key] = value, no
        if key == "data":
            break
    else:
        raise ValueError(f"{name} line {max(1, len(lines))}: missing 'data=' header line "
                         "(the column names, after 'type=' and 'path=')")
    for key in ("type", "path"):
        if key not in header:
            raise ValueError(f"{name} line {no}: header ends without '{key}=' "
                             "('type=', 'path=' and 'data=' are required)")
    if header["type"] not in STIM_TYPES:
        raise ValueError(f"{name} line {at['type']}: 'type' must be one of "
                         f"{list(STIM_TYPES)}, got '{header['type']}'")
    columns = [c.strip() for c in header["data"].split(",")]
    if "stimID" not in columns or "" in columns or len(set(columns)) < len(columns):
        raise ValueError(f"{name} line {no}: 'data=' must list distinct, non-empty column "
                         f"names including 'stimID', got '{header['data']}'")
    return header, columns, no


class Stimulus:
    """A table of stimuli: DNNBrain's ``.stim.csv`` in memory.

    Parameters
    ----------
    data : mapping of str to array-like
        Column name -> 1-D values of one length, with ``stimID``. ``stimID``, ``boxes``
        (``"x0 y0 x1 y1"`` in pixels of the original image, upright by its EXIF
        orientation as every image is read, right/bottom exclusive, several
        joined by ``;``) and ``mask`` (image file, relative to ``path``, nonzero = inside)
        become object (str), ``label`` int64, ``onset``/``duration``/``response`` float64
        (None/'' -> NaN); other columns keep their dtype (str arrays become object).
    path : str or os.PathLike
        Folder the stimIDs are relative to (a relative one is taken from the cwd, now).
    type : {'image', 'video'}
    title : str
        One line of free text.

    Attributes
    ----------
    header : dict
        ``{"type": str, "path": str (absolute folder), "title": str}``.
    data : dict of str to numpy.ndarray
        Column name -> ``(n_stim,)`` array, in file order.

    Raises
    ------
    ValueError
        On no ``stimID``, ragged columns, bad ``type``, empty stimIDs, bad labels or boxes.
    """

    def __init__(self, data: Mapping[str, Any], path: PathLike = ".",
                 type: str = "image", title: str = "") -> None:  # noqa: A002
        if type not in STIM_TYPES:
            raise ValueError(f"`type` must be one of {list(STIM_TYPES)}, got {type!r}")
        if not isinstance(title, str) or "\n" in title or "\r" in title:
            raise ValueError(f"`title` must be a one-line str, got {title!r}")
        if "stimID" not in data:
            raise ValueError(f"`data` must contain a 'stimID' column, got {list(data)}")
        cols: dict[str, np.ndarray] = {}
        for name, values in data.items():
            arr = np.asarray(values)
            if arr.ndim != 1:
                raise ValueError(f"column '{name}' of `data` must be 1-D, got shape {arr.shape}")
            if name in _TYPED_COLS:
                cells = ["" if v is None or v != v else str(v).strip() for v in arr.tolist()]
                arr = _type_cells(name, cells, [f"`data` row {i}" for i in range(len(cells))])
            elif arr.dtype.kind in "US":
                arr = arr.astype(str).astype(object)
            cols[str(name)] = arr
        lengths = {name: len(a) for name, a in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all columns of `data` must have one length, got {lengths}")
        self.header: dict[str, str] = {"type": type, "path": os.path.abspath(path),
                                       "title": title}
        self.data: dict[str, np.ndarray] = cols

    @classmethod
    def _from_parts(cls, header: Mapping[str, str], data: Mapping[str, np.ndarray]) -> Stimulus:
        """A Stimulus from already typed columns (no coercion, no copy)."""
        new = cls.__new__(cls)
        new.header, new.data = dict(header), dict(data)
        return new

    @classmethod
    def read(cls, fname: PathLike) -> Stimulus:
        """Read a ``.stim.csv`` file; a relative ``path=`` is taken from the file's folder.

        Columns not named in :class:`Stimulus` are int64 if every cell is an integer, else
        float64 if every non-empty cell is a number (empty = NaN), else str. Raises
        FileNotFoundError if ``fname`` is missing, ValueError naming file, line (and column)
        if malformed: ``"a.stim.csv line 5: expected 5 values (stimID,label), got 3"``.
        """
        fname = _check_path(fname, "stimulus", "a .stim.csv file")
        try:
            lines = fname.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as err:
            line = fname.read_bytes()[:err.start].count(b"\n") + 1
            raise ValueError(f"stimulus file '{fname}' line {line}: not UTF-8 text (byte "
                             f"{err.object[err.start:err.start + 1]!r} at offset {err.start})"
                             "; save it as UTF-8") from None
        name = fname.name
        header, columns, body = _read_header(lines, name)
        rows, where = [], []
        for no, raw in enumerate(lines[body:], start=body + 1):
            if not raw.strip():
                continue
            cells = [c.strip() for c in raw.split(",")]
            if len(cells) != len(columns):
                raise ValueError(f"{name} line {no}: expected {len(columns)} values "
                                 f"({','.join(columns)}), got {len(cells)}")
            rows.append(cells)
            where.append(f"{name} line {no}")
        data = {c: _type_cells(c, [r[j] for r in rows], where) for j, c in enumerate(columns)}
        root = os.path.normpath(fname.absolute().parent / header["path"])
        return cls._from_parts({"type": header["type"], "path": root,
                                "title": header.get("title", "")}, data)

    @classmethod
    def from_folder(cls, folder: PathLike, pattern: str = "*",
                    extensions: Iterable[str] = IMAGE_EXTENSIONS) -> Stimulus:
        """The image files of a folder, sorted by relative path (a ``stimID`` column only).

        Parameters
        ----------
        folder : str or os.PathLike
            The folder (missing: FileNotFoundError); it becomes :attr:`root`.
        pattern : str
            :meth:`pathlib.Path.glob` pattern relative to ``folder`` (``"**/*"`` recurses).
        extensions : iterable of str
            File endings to keep, compared case-insensitively. No match: ValueError.
        """
        folder = Path(folder)
        if not folder.exists():
            raise FileNotFoundError(f"stimulus folder not found: '{folder}'")
        if not folder.is_dir():
            raise ValueError(f"`folder` must be a folder, got file '{folder}'")
        exts = {e.lower() for e in extensions}
        ids = sorted(p.relative_to(folder).as_posix() for p in folder.glob(pattern)
                     if p.is_file() and p.suffix.lower() in exts)
        if not ids:
            raise ValueError(f"no file in '{folder}' matches `pattern` {pattern!r} with "
                             f"`extensions` {sorted(exts)}")
        return cls({"stimID": ids}, path=folder)

    @classmethod
    def from_files(cls, files: Sequence[PathLike]) -> Stimulus:
        """The given image files, in order (not checked: see :meth:`check_files`).

        :attr:`root` is the files' deepest common folder and the stimIDs are relative to it;
        without one (different drives) the stimIDs are absolute. ValueError if empty.
        """
        paths = [os.path.abspath(f) for f in files]
        if not paths:
            raise ValueError("`files` must name at least one file, got none")
        try:
            root = os.path.commonpath([os.path.dirname(p) for p in paths])
        except ValueError:
            return cls({"stimID": [Path(p).as_posix() for p in paths]}, path=os.getcwd())
        return cls({"stimID": [Path(os.path.relpath(p, root)).as_posix() for p in paths]},
                   path=root)

    def write(self, fname: PathLike) -> Path:
        """Write a ``.stim.csv`` atomically and return ``fname``; ``read(s.write(f)) == s``.

        ``path=`` is written relative to the file's folder where possible. ValueError if a
        cell holds ',' or a line break, which the format cannot store.
        """
        fname = Path(fname)
        try:
            rel = Path(os.path.relpath(self.root, fname.absolute().parent)).as_posix()
        except ValueError:
            rel = self.root.as_posix()
        lines = [f"type={self.header['type']}", f"path={rel}"]
        if self.header.get("title"):
            lines.append(f"title={self.header['title']}")
        lines.append("data=" + ",".join(self.data))
        cols = [[_format_cell(v, a.dtype.kind) for v in a] for a in self.data.values()]
        bad = [(n, i, c) for n, cells in zip(self.data, cols) for i, c in enumerate(cells)
               if "," in c or "\n" in c or "\r" in c]
        if bad:
            raise ValueError(f"(column, row, cell) {bad[0]} cannot be written to a .stim.csv: "
                             "',' and line breaks are not allowed in cells")
        text = "\n".join(lines + [",".join(row) for row in zip(*cols)]) + "\n"
        return atomic_write(fname, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @property
    def root(self) -> Path:
        """pathlib.Path: absolute folder the stimIDs are relative to."""
        return Path(os.path.abspath(self.header["path"]))

    @property
    def ids(self) -> list[str]:
        """list of str: the stimIDs, in order."""
        return [str(s) for s in self.data["stimID"]]

    @property
    def paths(self) -> list[Path]:
        """list of pathlib.Path: ``root / stimID`` for each stimulus."""
        return [self.root / s for s in self.ids]

    @property
    def labels(self) -> np.ndarray | None:
        """numpy.ndarray or None: ``(n_stim,)`` int64 ``label`` column, None without one."""
        return self.data.get("label")

    @property
    def has_ground_truth(self) -> bool:
        """bool: True when there are stimuli and each has a non-empty box or mask cell."""
        cols = [self.data[c] for c in ("boxes", "mask") if c in self.data]
        return len(self) > 0 and bool(cols) and all(
            any(str(col[i]).strip() for col in cols) for i in range(len(self)))

    def __len__(self) -> int:
        return len(self.data["stimID"])

    def __iter__(self) -> Iterator[tuple[str, Path]]:
        """Yield ``(stimID, path)`` pairs in order."""
        return iter(zip(self.ids, self.paths))

    def __getitem__(self, idx: Any) -> dict[str, Any] | Stimulus:
        """An int gives row ``idx`` as ``{column: Python value}`` (negative from the end);
        a slice, int sequence/array or ``(n_stim,)`` bool mask gives a new Stimulus."""
        n = len(self)
        if isinstance(idx, (int, np.integer)) and not isinstance(idx, (bool, np.bool_)):
            if not -n <= idx < n:
                raise IndexError(f"stimulus index {idx} is out of range for {n} stimuli")
            return {k: v[idx].item() if hasattr(v[idx], "item") else v[idx]
                    for k, v in self.data.items()}
        if isinstance(idx, slice):
            rows = np.arange(n)[idx]
        else:
            arr = np.asarray(idx)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "biu"):
                raise TypeError("a Stimulus index must be an int, a slice, a sequence of "
                                f"ints or a bool mask, got {idx!r}")
            if arr.dtype.kind == "b" and len(arr) != n:
                raise ValueError(f"a bool mask must have length {n}, got {len(arr)}")
            rows = np.flatnonzero(arr) if arr.dtype.kind == "b" else arr.astype(np.int64)
            if rows.size and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"stimulus indices must lie in [{-n}, {n}), got {idx!r}")
        return Stimulus._from_parts(self.header, {k: v[rows] for k, v in self.data.items()})

    def boxes(self, i: int) -> list[Box]:
        """Boxes of stimulus ``i``: list of int ``(x0, y0, x1, y1)``, pixels of the original
        image, right/bottom exclusive; ``[]`` for an empty cell or no ``boxes`` column."""
        return _parse_boxes(str(self.data["boxes"][i])) if "boxes" in self.data else []

    def mask(self, i: int) -> np.ndarray | None:
        """Mask of stimulus ``i``: ``(H, W)`` bool, True where the ``mask`` column's image is
        nonzero (any colour channel, alpha ignored); None without a ``mask`` column or for
        an empty cell; FileNotFoundError if the image is missing. Read like the stimuli
        (:func:`dnnbrain.io.images.read_image`: EXIF orientation, pixel limit)."""
        if "mask" not in self.data or str(self.data["mask"][i]).strip() == "":
            return None
        fname = self.root / str(self.data["mask"][i])
        if not fname.is_file():
            raise FileNotFoundError(f"mask image of stimulus {i} not found: '{fname}'")
        img = read_image(fname, what="mask image")
        arr = np.asarray(img if img.mode in ("1", "L", "I", "I;16", "F", "RGB")
                         else img.convert("RGB"))
        return arr.any(axis=-1) if arr.ndim == 3 else arr != 0

    def check_files(self) -> None:
        """Raise FileNotFoundError listing every missing stimulus and mask image."""
        files = self.paths + [self.root / str(m) for m in self.data.get("mask", [])
                              if str(m).strip()]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} stimulus file(s) missing under "
                                    f"'{self.root}': {missing}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stimulus):
            return NotImplemented
        keys = ("type", "title")
        if ([self.header.get(k, "") for k in keys] != [other.header.get(k, "") for k in keys]
                or self.root != other.root or list(self.data) != list(other.data)):
            return False
        return all(a.dtype.kind == b.dtype.kind and a.shape == b.shape
                   and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
                   for a, b in ((self.data[k], other.data[k]) for k in self.data))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Stimulus({len(self)} {self.header['type']} stimuli in '{self.root}', "
                f"columns {list(self.data)})")
