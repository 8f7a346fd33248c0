"""Pieces every command-line program shares: logging, networks, stimuli, parameters,
and turning user errors into one line on stderr."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..batch.config import check_device
from ..batch.launch import runtime_device
from ..batch.safeyaml import load_yaml_text
from ..batch.schema import Problems
from ..dnn.models import DNN, build_network
from ..io.maps import existing_part
from ..io.stim import IMAGE_EXTENSIONS, Stimulus

#: Values one ``-param`` may hold (a scalar or a short list on a command line).
MAX_PARAM_VALUES = 10_000
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, KeyError)


def setup_logging(verbose: int = 0) -> None:
    """INFO logging with ``-v``, DEBUG with ``-vv``; warnings otherwise."""
    level = logging.WARNING - 10 * min(int(verbose), 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dnnbrain").setLevel(level)


def add_verbosity(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a command ``-q/--quiet`` and ``-v/--verbose`` (repeatable), mutually exclusive.

    ``-q``: nothing on stdout/stderr on success (no summary line, no progress bar, only
    errors); default: the one-line summary (:func:`summary`) and warnings; ``-v``: also
    progress messages (logging INFO); ``-vv``: debug. Pair with
    :func:`configure_logging` after parsing::

        p = argparse.ArgumentParser(prog="dnn_x"); add_verbosity(p)
        args = p.parse_args(argv); configure_logging(args)
        ...; summary(args, "dnn_x: 12 maps -> out/")
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print nothing on success (errors still go to stderr)")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="-v: progress messages, -vv: debug")
    return parser


def configure_logging(args: argparse.Namespace) -> int:
    """Logging level from :func:`add_verbosity`'s options: ERROR with ``-q``, WARNING by
    default, INFO with ``-v``, DEBUG with ``-vv``. Returns the level."""
    if getattr(args, "quiet", False):
        level = logging.ERROR
    else:
        level = logging.WARNING - 10 * min(int(getattr(args, "verbose", 0) or 0), 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dnnbrain").setLevel(level)
    return level


def progress_flag(args: argparse.Namespace) -> Optional[bool]:
    """tqdm ``progress`` argument for these options: False with ``-q``, True with ``-v``,
    None (a bar only on a terminal) otherwise."""
    if getattr(args, "quiet", False):
        return False
    return True if getattr(args, "verbose", 0) else None


def summary(args: argparse.Namespace, line: str) -> None:
    """Print a command's one-line success summary on stdout, unless ``-q``."""
    if not getattr(args, "quiet", False):
        sys.stdout.write(line.rstrip("\n") + "\n")
        sys.stdout.flush()


def resolve_device(device: Optional[str]) -> torch.device:
    """``'auto'``/None -> CUDA when available (``cuda:<local rank>`` under torchrun or
    SLURM: :func:`dnnbrain.batch.launch.runtime_device`), else CPU; else a device this
    machine has (cpu, cuda[:N], mps), checked as a run config's ``model.device``
    (:func:`dnnbrain.batch.config.check_device`): ValueError naming `device` otherwise."""
    if device in (None, "auto"):
        return runtime_device("auto")
    problems = Problems()
    if check_device(problems, "device", device) is None:
        raise ValueError(f"`device` {problems.items[0][1]}")
    return torch.device(device)


def load_network(name: str, weights: Optional[str] = None, device: Optional[str] = None,
                 pretrained: bool = True) -> DNN:
    """A registered network by name (never ``eval``), on ``device``."""
    return build_network(name, pretrained=pretrained, weights=weights,
                         device=resolve_device(device))


def check_out(out: Path, force: bool) -> None:
    """``-out`` must be a folder (or creatable as one), empty unless ``-force``
    (FileExistsError / ValueError naming `-out` otherwise)."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"`-out` '{out}' is a file, not a folder")
        if any(out.iterdir()) and not force:
            raise FileExistsError(f"`-out` '{out}' is not empty; pass -force to write into it")
        return
    above = existing_part(out)
    if not above.is_dir():
        raise ValueError(f"`-out` '{out}' cannot be created: '{above}' is a file, not a "
                         "folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ValueError(f"`-out` '{out}' cannot be created: no write permission in "
                         f"'{above}'")


def load_stimuli(spec: Sequence[str] | str) -> Stimulus:
    """A ``.stim.csv`` file, a folder of images, or image files -> :class:`Stimulus`.

    Raises FileNotFoundError naming the first path that does not exist, or listing the
    missing image files of a stimulus table.
    """
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not items:
        raise ValueError("`stim` needs a .stim.csv file, a folder or image files")
    for item in items:
        if not Path(item).exists():
            raise FileNotFoundError(f"`stim` not found: '{item}'")
    first = Path(items[0])
    if len(items) == 1 and first.is_dir():
        stim = Stimulus.from_folder(first)
    elif len(items) == 1 and first.name.endswith(".csv"):
        stim = Stimulus.read(first)
    else:
        bad = [i for i in items if Path(i).suffix.lower() not in
               {e.lower() for e in IMAGE_EXTENSIONS}]
        if bad:
            raise ValueError(f"`stim` must be one .stim.csv, one folder or image files "
                             f"({', '.join(IMAGE_EXTENSIONS)}), got {bad}")
        stim = Stimulus.from_files(items)
    if len(stim) == 0:
        raise ValueError(f"`stim` {items} holds no images")
    stim.check_files()
    return stim


def parse_params(pairs: Optional[List[str]]) -> Dict[str, Any]:
    """``['steps=64', 'baseline=white']`` -> ``{'steps': 64, 'baseline': 'white'}``
    (values read as YAML scalars/lists, at most :data:`MAX_PARAM_VALUES` values each;
    ValueError naming `-param` otherwise)."""
    params: Dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"`-param` must be key=value, got {pair!r}")
        params[key.strip().replace("-", "_")] = load_yaml_text(
            value, f"`-param` {key.strip()}", MAX_PARAM_VALUES, "a -param value")
    return params


def os_error_line(err: OSError) -> Optional[str]:
    """One line for an operating-system error on a file (disk full, read-only disk, no
    permission, a file where a folder should be ...), naming the file; None for an
    OSError without an errno (a library's own error, which is not the user's)."""
    if err.errno is None:
        return None
    reason = err.strerror or os.strerror(err.errno)
    files = [f"'{os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else f}'"
             for f in (err.filename, err.filename2) if f is not None]
    return f"{reason}: {' -> '.join(files)}" if files else f"{reason} (errno {err.errno})"


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; a user error becomes one line on stderr and exit status 2.

    User errors are ValueError, TypeError, FileNotFoundError, FileExistsError and KeyError
    (their messages name the parameter or file), and operating-system errors on files
    (:func:`os_error_line`: a full or read-only disk, a missing permission). Anything
    else (a RuntimeError from torch, an OSError a library raises without an errno)
    propagates with its traceback: it is a bug, not the user's input.
    """
    try:
        return body()
    except USER_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        sys.stderr.write(f"{prog}: error: {msg}\n")
        return 2
    except OSError as err:
        line = os_error_line(err)
        if line is None:
            raise
        sys.stderr.write(f"{prog}: error: {line}\n")
        return 2
