"""Shared machinery of the torture tests: a case table, snapshots of everything a refused
call must leave alone, and the checks every case makes.

A case is refused correctly when

(a) the Python API raises a ValueError / TypeError / OSError (FileNotFoundError ...) that
    is not a torch, PIL, numpy, yaml or pickle type and not one of :data:`FORBIDDEN`
    (``UnicodeDecodeError``, ``RecursionError`` ...), or a CLI exits 2 with no traceback;
(b) the message is one line (a config report: a header line, then exactly one line per
    problem, and each case injects one problem, which starts with the key path), at most
    :data:`MAX_MESSAGE` characters, and names the offending parameter or file;
(c) no file under the case's folder was added, removed or changed, and no hook, train/eval
    flag, ``requires_grad``, parameter, input tensor or global state changed.

Every check is made and every problem reported at once, so a failure says all that went
wrong.
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import struct
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFile

#: Exception types a user error must never surface as (subclasses of allowed ones included).
FORBIDDEN = (UnicodeError, RecursionError, OverflowError, KeyError, IndexError, AssertionError,
             MemoryError, EOFError, AttributeError, NotImplementedError, RuntimeError)
#: Modules whose own exception types must not escape to the user.
INTERNAL_MODULES = ("torch", "PIL", "numpy", "yaml", "pickle", "_pickle", "zipfile",
                    "matplotlib")
MAX_MESSAGE = 2000
CONFIG_HEADER = re.compile(r".*: \d+ problems? in the run config:$")
MARKER = "EXECUTED_MARKER"


@dataclass
class Case:
    """One bad input.

    Attributes
    ----------
    id : str
        Readable pytest id.
    run : callable
        The call (API: ``run(ctx)``; CLI: ``run(ctx) -> argv``; YAML: mutates the config).
    names : tuple of str
        Each must appear in the message; ``'a|b'`` accepts either (``'-chn|unit'``).
    exc : tuple of type
        Exception types the API call may raise (API cases).
    setup : callable or None
        ``setup(ctx)`` prepares files before the snapshot.
    writes_ok : bool
        A failure that can only show up while writing or computing (a full disk, a
        truncated image in the middle of a run): folders may be left, but no file.
    skip : str or None
        Reason to skip (e.g. CUDA present).
    """

    id: str
    run: Callable[..., Any]
    names: Tuple[str, ...] = ()
    exc: Tuple[type, ...] = (ValueError, TypeError)
    setup: Optional[Callable[..., Any]] = None
    writes_ok: bool = False
    skip: Optional[str] = None
    max_s: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def params(cases: Sequence[Case]):
    """``pytest.mark.parametrize`` arguments with readable ids (and skips)."""
    import pytest
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"duplicate case ids {dup}"
    return [pytest.param(c, id=c.id, marks=[pytest.mark.skip(reason=c.skip)] if c.skip else [])
            for c in cases]


# ------------------------------------------------------------------------ snapshots


def state_snapshot() -> Dict[str, Any]:
    """Global state a call must leave as it found it."""
    return {
        "torch RNG state": torch.get_rng_state(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.is_inference_mode_enabled()": torch.is_inference_mode_enabled(),
        "torch default dtype": torch.get_default_dtype(),
        "torch deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch threads": torch.get_num_threads(),
        "active TorchFunctionModes": torch._C._len_torch_function_stack(),
        "PIL.Image.MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS,
        "PIL.ImageFile.LOAD_TRUNCATED_IMAGES": ImageFile.LOAD_TRUNCATED_IMAGES,
        "cwd": os.getcwd(),
        "warnings filters": list(warnings.filters),
        "os.environ": dict(os.environ),
        "sys.path": list(sys.path),
        "root logger handlers": len(logging.root.handlers),
        "root logger level": logging.root.level,
        "dnnbrain logger handlers": len(logging.getLogger("dnnbrain").handlers),
    }


def restore_state(snap: Dict[str, Any]) -> None:
    """Undo what a misbehaving call changed, so the next test starts clean."""
    torch.set_rng_state(snap["torch RNG state"])
    torch.set_grad_enabled(snap["torch.is_grad_enabled()"])
    torch.set_default_dtype(snap["torch default dtype"])
    Image.MAX_IMAGE_PIXELS = snap["PIL.Image.MAX_IMAGE_PIXELS"]
    ImageFile.LOAD_TRUNCATED_IMAGES = snap["PIL.ImageFile.LOAD_TRUNCATED_IMAGES"]
    os.chdir(snap["cwd"])
    warnings.filters[:] = snap["warnings filters"]
    os.environ.clear()
    os.environ.update(snap["os.environ"])
    sys.path[:] = snap["sys.path"]


def model_snapshot(model: torch.nn.Module) -> Dict[str, Any]:
    """Hooks, modes, ``requires_grad``, gradients and values of a model."""
    from ..conftest import hook_dicts_empty
    return {"no hooks": hook_dicts_empty(model),
            "training flags": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [p.grad is None for p in model.parameters()],
            "parameters": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def tensor_snapshot(x: torch.Tensor) -> Dict[str, Any]:
    """Values, flags and version counter of an input tensor."""
    return {"values": x.detach().clone(), "requires_grad": x.requires_grad,
            "version": x._version, "grad": x.grad is None}


def files_snapshot(root: Path) -> Dict[str, Optional[bytes]]:
    """Every path under ``root`` -> its bytes (None for a folder)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                  and torch.equal(a.nan_to_num(), b.nan_to_num())))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    return a == b


def diff_snapshots(what: str, before: Dict[str, Any], after: Dict[str, Any]) -> List[str]:
    """One problem per changed entry."""
    return [f"{what}: {k!r} changed" for k in before if not _same(before[k], after.get(k))]


def diff_files(before: Dict[str, Optional[bytes]], after: Dict[str, Optional[bytes]],
               writes_ok: bool = False) -> List[str]:
    """Files added, removed or changed (with ``writes_ok``: added folders are allowed)."""
    added = [k for k in after if k not in before and not (writes_ok and after[k] is None)]
    removed = [k for k in before if k not in after]
    changed = [k for k in before if k in after and before[k] != after[k]]
    out = []
    for label, keys in (("written", added), ("removed", removed), ("changed", changed)):
        if keys:
            out.append(f"files {label}: {keys[:8]}{' ...' if len(keys) > 8 else ''}")
    return out


# ------------------------------------------------------------------------ checks


def exception_problems(err: Optional[BaseException], allowed: Tuple[type, ...],
                       result: Any = None) -> List[str]:
    """Problems with the exception a refused API call raised."""
    if err is None:
        return [f"no error raised (returned {type(result).__name__})"]
    t = type(err)
    if not isinstance(err, allowed):
        return [f"raised {t.__module__}.{t.__name__}, not one of "
                f"{[a.__name__ for a in allowed]}: {str(err)[:300]!r}"]
    if isinstance(err, FORBIDDEN):
        return [f"raised {t.__name__}, an internal error type: {str(err)[:300]!r}"]
    if t.__module__.split(".")[0] in INTERNAL_MODULES:
        return [f"raised {t.__module__}.{t.__name__}, a library's own type: "
                f"{str(err)[:300]!r}"]
    return []


def message_problems(msg: str, names: Sequence[str]) -> List[str]:
    """One line (or a one-problem config report) that names every one of ``names``."""
    out: List[str] = []
    if len(msg) > MAX_MESSAGE:
        return [f"message is {len(msg)} characters long (> {MAX_MESSAGE}): {msg[:200]!r}..."]
    lines = msg.strip("\n").split("\n")
    named = lines
    if CONFIG_HEADER.match(lines[0]):
        named = lines[1:]
        if len(named) != 1:
            out.append(f"config report lists {len(named)} problems, expected 1: {msg!r}")
        for line in named:
            if not re.match(r"  \S+: ", line):
                out.append(f"config report line is not '  <key>: <problem>': {line!r}")
    elif len(lines) != 1:
        out.append(f"message has {len(lines)} lines: {msg[:400]!r}")
    for name in names:
        alts = name.split("|")
        if not any(a in msg for a in alts):
            out.append(f"message does not name {' or '.join(map(repr, alts))}: {msg[:400]!r}")
        elif named is not lines and not any(line.strip().startswith(a) for a in alts
                                            for line in named):
            out.append(f"no config problem starts with the key {' or '.join(alts)}: {msg!r}")
    return out


def cli_problems(prog: str, rc: Any, err: str, names: Sequence[str]) -> List[str]:
    """Exit status 2, no traceback, one ``prog: error:`` message naming ``names``
    (argparse's usage lines before it are allowed)."""
    out = [] if rc == 2 else [f"exit status {rc!r}, not 2"]
    if "Traceback" in err:
        return out + [f"traceback on stderr: ...{err[-600:]!r}"]
    lines = err.strip("\n").split("\n") if err.strip() else []
    starts = [i for i, line in enumerate(lines) if line.startswith(f"{prog}: error: ")]
    if len(starts) != 1:
        return out + [f"stderr holds {len(starts)} '{prog}: error:' lines: {err[:600]!r}"]
    head = lines[:starts[0]]
    if any(not (h.startswith("usage:") or h.startswith(" ")) for h in head):
        out.append(f"stderr has lines other than usage before the error: {head[:5]!r}")
    msg = "\n".join(lines[starts[0]:])[len(f"{prog}: error: "):]
    return out + message_problems(msg, names)


def call_cli(main: Callable[[List[str]], int], argv: List[str], capsys) -> Tuple[Any, str]:
    """``main(argv)`` in-process: (exit status, stderr); argparse's SystemExit counts."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as stop:
        rc = stop.code
    except Exception:  # an escaped error: what a console user would see
        import traceback
        rc, tb = 1, traceback.format_exc()
        return rc, capsys.readouterr().err + tb
    return rc, capsys.readouterr().err


class Guard:
    """What a call changed: ``problems`` (one line each) and ``elapsed`` seconds."""

    def __init__(self) -> None:
        self.problems: List[str] = []
        self.elapsed = 0.0

    def check(self, max_s: Optional[float] = None) -> None:
        """Fail listing every problem (and the time, when over ``max_s``)."""
        if max_s is not None and self.elapsed > max_s:
            self.problems.append(f"took {self.elapsed:.2f} s (> {max_s} s)")
        assert not self.problems, "\n".join(self.problems)


@contextlib.contextmanager
def guarded(roots: Sequence[Path], model: Optional[torch.nn.Module] = None,
            tensors: Sequence[torch.Tensor] = (), writes_ok: bool = False):
    """Snapshot everything before the block; after it, the yielded :class:`Guard` lists
    what changed (and the global state is put back for the next test)."""
    guard = Guard()
    state = state_snapshot()
    files = [files_snapshot(r) for r in roots]
    msnap = model_snapshot(model) if model is not None else None
    tsnaps = [tensor_snapshot(t) for t in tensors]
    tic = time.perf_counter()
    try:
        yield guard
    finally:
        guard.elapsed = time.perf_counter() - tic
        p = guard.problems
        p += diff_snapshots("global state", state, state_snapshot())
        for r, f in zip(roots, files):
            p += diff_files(f, files_snapshot(r), writes_ok)
        if msnap is not None:
            p += diff_snapshots("model", msnap, model_snapshot(model))
        for i, (t, s) in enumerate(zip(tensors, tsnaps)):
            p += diff_snapshots(f"input tensor {i}", s, tensor_snapshot(t))
        restore_state(state)


def marker(ctx: Any) -> Path:
    """The file code smuggled into an input would create (it must never appear)."""
    return ctx.tmp / MARKER


def check_refused(case: Case, ctx: Any, model: Optional[torch.nn.Module] = None,
                  tensors: Sequence[torch.Tensor] = ()) -> None:
    """Run an API case (after its ``setup``) and fail listing every problem: the exception
    type, the message (naming ``case.names``, holding ``case.extra['mentions']``), files
    under ``ctx.tmp``, ``model``, ``tensors``, global state, and :data:`MARKER` (code
    named by the input ran)."""
    if case.setup is not None:
        case.setup(ctx)
    result = err = None
    with guarded([ctx.tmp], model, tensors) as guard:
        try:
            result = case.run(ctx)
        except Exception as caught:  # noqa: BLE001 - the type is what is checked
            err = caught
    guard.problems += exception_problems(err, case.exc, result)
    if err is not None and not guard.problems:
        guard.problems += message_problems(str(err), case.names)
        guard.problems += [f"message does not mention {m!r}: {str(err)[:300]!r}"
                           for m in case.extra.get("mentions", ()) if m not in str(err)]
    if marker(ctx).exists():
        guard.problems.append(f"{MARKER} was created: code named by the input ran")
    guard.check(case.max_s)


# ------------------------------------------------------------------------ bad files


def png_bytes(size: Tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    """A noisy RGB PNG (so that it does not compress to nothing)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(size: Tuple[int, int] = (64, 64)) -> bytes:
    """A noisy RGB JPEG."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(size))).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed): PIL's
    decompression-bomb check fires on opening it."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = 8  # after the signature: length(4) 'IHDR'(4) width(4) height(4) ...
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4:ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13:ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


class Payload:
    """Pickles to a call of ``os.system`` that creates ``path``: weights_only refuses it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def alias_bomb(levels: int = 6, width: int = 9) -> str:
    """A YAML flow sequence of nested aliases: a few hundred bytes, ``width ** levels``
    leaves once expanded."""
    parts = ['&a0 ["lol"]'] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
                               for i in range(1, levels + 1)]
    return "[" + ", ".join(parts) + "]"


def enospc(path: Any = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def refuse_writes(monkeypatch, under: Path, make_error: Callable[[Any], OSError],
                  mkdir: bool) -> None:
    """Make every write below ``under`` fail with ``make_error(path)`` (a full disk; with
    ``mkdir`` also folder creation: a read-only disk). Reads stay as they are."""
    import builtins
    root = str(under)

    def inside(p: Any) -> bool:
        try:
            return os.path.abspath(os.fspath(p)).startswith(root)
        except TypeError:
            return False

    real_open, real_os_open = builtins.open, os.open

    def fake_open(file, mode="r", *a, **k):
        if inside(file) and any(c in mode for c in "wax+"):
            raise make_error(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise make_error(path)
        return real_os_open(path, flags, *a, **k)

    def wrap(fn):
        def inner(src, dst=None, *a, **k):
            if inside(src) or (dst is not None and inside(dst)):
                raise make_error(dst if dst is not None else src)
            return fn(src, *((dst,) if dst is not None else ()), *a, **k)
        return inner

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "replace", wrap(os.replace))
    monkeypatch.setattr(os, "rename", wrap(os.rename))
    if mkdir:
        real_mkdir = os.mkdir

        def fake_mkdir(path, *a, **k):
            if inside(path):
                raise make_error(path)
            return real_mkdir(path, *a, **k)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
