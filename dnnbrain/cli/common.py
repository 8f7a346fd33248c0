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
from ..dnn.fingerprint import fingerprint, seeded
from ..dnn.models import DNN, build_network, network_names
from ..io.maps import existing_part
from ..io.stim import IMAGE_EXTENSIONS, Stimulus

#: Values one ``-param`` may hold (a scalar or a short list on a command line).
MAX_PARAM_VALUES = 10_000
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, KeyError)
#: ``-seed``'s help where it seeds only ``-random-weights``.
WEIGHTS_SEED_HELP = "seed of the random weights of -random-weights (default: 0)"
log = logging.getLogger(__name__)


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


def add_network_args(parser: argparse.ArgumentParser, *, timm: str = "timm:<model>",
                     seed_default: Optional[int] = None,
                     seed_help: str = WEIGHTS_SEED_HELP) -> argparse.ArgumentParser:
    """Give a command the network options: ``-net`` (its help listing
    :func:`~dnnbrain.dnn.models.network_names`, then ``timm``), ``-weights``,
    ``-random-weights``, ``-seed`` (``seed_default``, ``seed_help``) and ``-device``.
    Check them with :func:`check_network_args`, build the network with
    :func:`network_from_args`."""
    parser.add_argument("-net", required=True, metavar="NET",
                        help=f"network name, one of {network_names()} (case-insensitive), "
                             f"or {timm}")
    parser.add_argument("-weights", help="weights file (default: offline search, see docs)")
    parser.add_argument("-random-weights", dest="random_weights", action="store_true",
                        help="random weights (seeded by -seed) instead of trained ones")
    parser.add_argument("-seed", type=int, default=seed_default, help=seed_help)
    parser.add_argument("-device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def add_layer_arg(parser: argparse.ArgumentParser,
                  help: str = "layer name (or dotted module path)",
                  many: bool = False) -> argparse.ArgumentParser:
    """Give a command ``-layer`` (required; one name, or one or more with ``many``)."""
    if many:
        parser.add_argument("-layer", required=True, nargs="+", metavar="LAYER", help=help)
    else:
        parser.add_argument("-layer", required=True, help=help)
    return parser


def add_stim_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a command ``-stim`` (required, read by :func:`load_stimuli`)."""
    parser.add_argument("-stim", required=True, nargs="+", metavar="STIM",
                        help="a .stim.csv file, a folder of images, or image files")
    return parser


def add_batch_size_arg(parser: argparse.ArgumentParser, default: Optional[int] = 64,
                       help: str = "stimuli per forward pass (default: 64)"
                       ) -> argparse.ArgumentParser:
    """Give a command ``-batch-size`` (``args.batch_size``)."""
    parser.add_argument("-batch-size", dest="batch_size", type=int, default=default,
                        help=help)
    return parser


def add_output_args(parser: argparse.ArgumentParser,
                    force_help: str = "write into a non-empty -out"
                    ) -> argparse.ArgumentParser:
    """Give a command ``-out`` (a required folder, see :func:`check_out`) and ``-force``."""
    parser.add_argument("-out", required=True, help="output folder")
    parser.add_argument("-force", action="store_true", help=force_help)
    return parser


def check_network_args(args: argparse.Namespace, seed_only_weights: bool = True,
                       hint: str = "") -> int:
    """Check :func:`add_network_args`'s options; return the seed (0 without ``-seed``).

    ``-weights`` and ``-random-weights`` exclude each other; ``-seed`` must be >= 0 and,
    with ``seed_only_weights`` (it seeds nothing else), needs ``-random-weights``
    (``hint`` is added to that error). ValueError naming the option otherwise.
    """
    if args.random_weights and args.weights:
        raise ValueError("`-random-weights` and `-weights` exclude each other; pass one")
    if seed_only_weights and args.seed is not None and not args.random_weights:
        raise ValueError(f"`-seed` {args.seed} seeds only -random-weights, which is not "
                         f"given{hint}")
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise ValueError(f"`-seed` must be an integer >= 0, got {seed}")
    return seed


def network_from_args(args: argparse.Namespace, seed: int) -> DNN:
    """The network of :func:`add_network_args`'s options, random weights drawn with torch
    seeded by ``seed`` (the caller's random state untouched); a missing weights file's
    error suggests ``-random-weights``. Logs the weights' fingerprint (``-v``)."""
    with seeded(seed):
        try:
            dnn = load_network(args.net, args.weights, args.device,
                               pretrained=not args.random_weights)
        except FileNotFoundError as err:
            raise FileNotFoundError(str(err).replace("pass pretrained=False",
                                                     "pass -random-weights")) from None
    if log.isEnabledFor(logging.INFO):
        log.info("network %s: fingerprint %s", args.net, fingerprint(dnn.model))
    return dnn


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


def run_command(prog: str, parser: argparse.ArgumentParser,
                run: Callable[[argparse.Namespace], int],
                argv: Optional[Sequence[str]] = None) -> int:
    """A command's ``main``: parse ``argv``, set logging (:func:`configure_logging`) and
    call ``run(args)`` under :func:`run_main`; returns the exit status."""
    args = parser.parse_args(argv)
    configure_logging(args)
    return run_main(prog, lambda: run(args))
