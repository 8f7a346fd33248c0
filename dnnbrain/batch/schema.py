"""Checking pieces of a run config: a collector of problems and typed field readers.

Every reader takes the :class:`Problems` collector, the key path of the value
(``targets[1].units[2]``) and the value; it returns the checked value, or ``None`` after
recording a problem, so validation goes on and reports everything at once.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: Top-level keys of a run config, in documentation order.
TOP_KEYS = ("title", "model", "stimuli", "targets", "methods", "outputs", "batch_size", "seed",
            "evaluate", "probe", "network")
#: Keys of ``model`` for a named network and for a user's factory.
MODEL_NAMED_KEYS = ("name", "weights", "pretrained", "device")
MODEL_FACTORY_KEYS = ("factory", "kwargs", "layers", "img_size", "mean", "std", "device")
#: Keys of one ``targets`` entry.
TARGET_KEYS = ("layer", "units", "reduce", "call", "unit_base")
#: Keys of ``outputs``.
OUTPUT_KEYS = ("dir", "save", "colormap", "percentile", "alpha", "reduce")
#: File kinds ``outputs.save`` accepts, and the file ending each one gets.
SAVE_KINDS = {"npy": ".npy", "png": ".png", "overlay": "_overlay.png", "nifti": ".nii.gz"}
#: Defaults of the optional fields.
DEFAULTS: Dict[str, Any] = {
    "batch_size": 32, "seed": 0,
    "model": {"weights": None, "pretrained": True, "device": "auto", "kwargs": {},
              "layers": None, "img_size": None, "mean": None, "std": None},
    "outputs": {"dir": "out", "save": ["npy", "png"], "colormap": "auto",
                "percentile": 99.0, "alpha": 0.5},
    "reduce": "mean",
}


class Problems:
    """Collects ``(key path, message)`` pairs and raises them together."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        """Record one problem at ``path`` (``''`` for the whole file)."""
        self.items.append((path or "<config>", message))

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, source: str) -> None:
        """Raise one ValueError listing every problem on its own line.

        Raises
        ------
        ValueError
            ``"<source>: 3 problems in the run config:\\n  targets[1].units[2]: ..."``.
        """
        if self.items:
            n = len(self.items)
            lines = [f"  {path}: {msg}" for path, msg in self.items]
            raise ValueError(f"{source}: {n} problem{'s' if n > 1 else ''} in the run "
                             "config:\n" + "\n".join(lines))


def key(path: str, name: Any) -> str:
    """Child key path: ``key('targets[1]', 'units') == 'targets[1].units'``,
    ``key('targets', 1) == 'targets[1]'``."""
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else str(name)


def is_int(value: Any) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def type_name(value: Any) -> str:
    """YAML-ish name of ``value``'s type, for messages."""
    names = {dict: "mapping", list: "list", str: "str", bool: "bool", int: "int",
             float: "float", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def mapping(p: Problems, path: str, value: Any, allowed: Sequence[str],
            required: Iterable[str] = ()) -> Optional[Dict[str, Any]]:
    """``value`` as a dict of its known keys, after recording its unknown and missing
    keys; None (and a problem) when it is not a mapping at all."""
    if not isinstance(value, Mapping):
        p.add(path, f"must be a mapping with keys {list(allowed)}, got {type_name(value)} "
                    f"{value!r}")
        return None
    for k in value:
        if k not in allowed:
            p.add(key(path, str(k)), f"unknown key {k!r}; valid keys are {list(allowed)}")
    for k in required:
        if k not in value:
            p.add(key(path, k), f"is required (keys: {list(allowed)})")
    return {k: v for k, v in value.items() if k in allowed}


def integer(p: Problems, path: str, value: Any, minimum: Optional[int] = None) -> Optional[int]:
    """An int (not a bool) >= ``minimum``."""
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        p.add(path, f"must be an int{bound}, got {type_name(value)} {value!r}")
        return None
    return int(value)


def number(p: Problems, path: str, value: Any, lo: float, hi: float,
           lo_open: bool = False) -> Optional[float]:
    """A real number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    if not is_number(value) or not (lo < value if lo_open else lo <= value) or value > hi:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        p.add(path, f"must be a number in {rng}, got {type_name(value)} {value!r}")
        return None
    return float(value)


def string(p: Problems, path: str, value: Any, choices: Optional[Sequence[str]] = None,
           allow_none: bool = False) -> Optional[str]:
    """A str (one of ``choices`` when given); None passes with ``allow_none``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or (choices is not None and value not in choices):
        what = f"one of {list(choices)}" if choices is not None else "a str"
        p.add(path, f"must be {what}, got {type_name(value)} {value!r}")
        return None
    return value


def boolean(p: Problems, path: str, value: Any) -> Optional[bool]:
    """A YAML bool (true/false)."""
    if not isinstance(value, bool):
        p.add(path, f"must be true or false, got {type_name(value)} {value!r}")
        return None
    return value


def str_list(p: Problems, path: str, value: Any, choices: Optional[Sequence[str]] = None,
             allow_one: bool = True) -> Optional[List[str]]:
    """A non-empty list of str (a single str counts as a list of one with ``allow_one``)."""
    if allow_one and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        what = f"a non-empty list of {list(choices)}" if choices else "a non-empty list of str"
        p.add(path, f"must be {what}, got {type_name(value)} {value!r}")
        return None
    out = [string(p, key(path, i), v, choices) for i, v in enumerate(value)]
    return None if any(v is None for v in out) else list(dict.fromkeys(out))


def plain(p: Problems, path: str, value: Any) -> Any:
    """``value`` as plain YAML data (tuples become lists); a problem for anything else
    (a callable, a tensor ...), which a config file could not hold."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(p, key(path, i), v) for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: plain(p, key(path, k), v) for k, v in value.items()}
    p.add(path, f"must be plain YAML data (str, number, bool, null, list, mapping), got "
                f"{type_name(value)}")
    return None
