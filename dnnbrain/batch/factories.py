"""Network builders a run config may name in ``model.factory`` (configs are data).

A config names a builder; it never names code. :func:`check_factory` accepts, without
importing or calling anything the config names:

* ``torchvision:<model>`` (also spelled ``torchvision.models.<model>`` or
  ``torchvision.models:<model>``): a name from ``torchvision.models.list_models()``,
  always built with random weights (``weights`` and ``weights_backbone`` set to None);
* ``timm:<model>``: a name from ``timm.list_models()`` where timm is installed, built by
  ``timm.create_model(name, pretrained=False, **kwargs)``;
* ``<name>``: a builder registered from Python with :func:`register_factory`, or declared
  by an installed package in the entry-point group ``dnnbrain.factories``;
* ``package.module:function`` or ``path/to/file.py:function``: a user's own code, only
  when the person running the config allows it outside the config
  (``run(..., allow_code=True)``, ``-allow-code``); modules of Python's standard library
  are refused even then (none of them builds a network).

Keyword arguments are plain data; those that would make a builder fetch or read weights
(``weights``, ``pretrained``, ``checkpoint_path`` ...) are refused.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

#: Entry-point group of installed packages' network builders.
ENTRY_POINT_GROUP = "dnnbrain.factories"
#: Builder kwargs that fetch or read weights, per source; refused unless null/false.
WEIGHT_KWARGS = {"torchvision": ("weights", "weights_backbone", "pretrained",
                                 "pretrained_backbone"),
                 "timm": ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                          "checkpoint_path", "cache_dir")}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_TV_PREFIXES = ("torchvision:", "torchvision.models:", "torchvision.models.")
_FORMS = ("'torchvision:<model>', 'timm:<model>', a registered builder name, or (with "
          "allow_code / -allow-code) 'package.module:function' / 'file.py:function'")
_REGISTRY: Dict[str, Callable[..., Any]] = {}


def register_factory(name: str, fn: Optional[Callable[..., Any]] = None, *,
                     overwrite: bool = False) -> Any:
    """Register a network builder under ``name``, for ``model: {factory: name}``.

    Parameters
    ----------
    name : str
        Letters, digits, ``_ . -`` (no ``:``), not starting with a digit.
    fn : callable or None
        ``fn(**kwargs)`` returning a :class:`~dnnbrain.dnn.models.DNN` or a
        ``torch.nn.Module``. None: return a decorator (``@register_factory('mynet')``).
    overwrite : bool
        Replace a builder already registered under ``name`` (else ValueError).

    Returns
    -------
    callable
        ``fn`` (or the decorator).

    Raises
    ------
    ValueError
        For a malformed or already registered name.
    TypeError
        If ``fn`` is not callable.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"`name` must be letters, digits and _ . - without ':' (not "
                         f"starting with a digit), got {name!r}")
    if fn is None:
        return lambda f: register_factory(name, f, overwrite=overwrite)
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
        raise ValueError(f"`name` {name!r} is already a registered factory; pass "
                         "overwrite=True to replace it")
    _REGISTRY[name] = fn
    return fn


def unregister_factory(name: str) -> None:
    """Remove a builder registered with :func:`register_factory` (no error if absent)."""
    _REGISTRY.pop(name, None)


def _entry_points() -> Dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def factory_names() -> List[str]:
    """Builders a config may name by themselves: registered ones, then installed
    packages' entry points (group ``dnnbrain.factories``), sorted within each."""
    return sorted(_REGISTRY) + sorted(n for n in _entry_points() if n not in _REGISTRY)


def _close(name: str, names: List[str]) -> str:
    near = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {near}?" if near else ""


def _source(spec: str) -> Tuple[str, str]:
    """``(kind, rest)``: kind 'torchvision', 'timm', 'registered' or 'code'."""
    for prefix in _TV_PREFIXES:
        if spec.startswith(prefix):
            return "torchvision", spec[len(prefix):]
    if spec.startswith("timm:"):
        return "timm", spec[len("timm:"):]
    if ":" not in spec:
        return "registered", spec
    return "code", spec


def check_factory(spec: Any, base: Optional[Path] = None, allow_code: bool = False) -> str:
    """The canonical spelling of a ``model.factory``, checked without importing or
    calling anything it names.

    Parameters
    ----------
    spec : str
        As the config gives it.
    base : pathlib.Path or None
        Folder a relative ``file.py`` is relative to (the config's); None: the cwd.
    allow_code : bool
        Accept a user's own ``module:function`` or ``file.py:function`` (the person's
        opt-in; a config cannot give it).

    Returns
    -------
    str
        ``'torchvision:<model>'``, ``'timm:<model>'``, the registered name, the
        ``module:function`` or ``/absolute/file.py:function``.

    Raises
    ------
    ValueError
        Naming the factory, what is wrong and the accepted forms.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"must be {_FORMS}, got {spec!r}")
    kind, rest = _source(spec)
    if kind == "torchvision":
        from torchvision.models import list_models
        names = list_models()
        if rest not in names:
            raise ValueError(f"{rest!r} is not a torchvision model (torchvision.models."
                             f"list_models(), {len(names)} names){_close(rest, names)}")
        return f"torchvision:{rest}"
    if kind == "timm":
        if importlib.util.find_spec("timm") is None:
            raise ValueError(f"{spec!r} needs timm, which is not installed (pip install timm)")
        import timm
        if not timm.is_model(rest):
            raise ValueError(f"{rest!r} is not a timm model (timm.list_models())"
                             f"{_close(rest, timm.list_models())}")
        return f"timm:{rest}"
    if kind == "registered":
        names = factory_names()
        if spec not in names:
            raise ValueError(f"{spec!r} is not a registered factory (registered: {names}; "
                             f"register one with dnnbrain.batch.register_factory); a factory "
                             f"must be {_FORMS}")
        return spec
    module, _, attr = spec.rpartition(":")
    if not module or not attr:
        raise ValueError(f"must be {_FORMS}, got {spec!r}")
    if not allow_code:
        raise ValueError(f"{spec!r} names Python code, which a config cannot run by itself; "
                         f"a factory must be {_FORMS}. To run your own builder, pass "
                         "allow_code=True (-allow-code) or register it from Python with "
                         "dnnbrain.batch.register_factory")
    if module.endswith(".py"):
        return f"{((base or Path.cwd()) / module).absolute()}:{attr}"
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ValueError(f"{spec!r} is in Python's standard library, not a network builder; "
                         f"a factory must be {_FORMS}")
    return spec


def check_kwargs(spec: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse builder kwargs that would fetch or read weights (ValueError naming the
    first one); the torchvision and timm builders also run this before building."""
    kind = _source(spec)[0]
    for k in WEIGHT_KWARGS.get(kind, ()):
        if kwargs.get(k) not in (None, False):
            raise ValueError(f"`{k}` must be null: a {kind} factory builds random weights and "
                             f"never fetches or reads any, got {kwargs[k]!r}; for pretrained "
                             "weights use `model: {name: ...}` (looked up offline, see "
                             "docs/models.rst) or register a builder that loads a local file "
                             "(dnnbrain.batch.register_factory)")


def _torchvision(name: str) -> Callable[..., Any]:
    import inspect

    from torchvision.models import get_model_builder
    builder = get_model_builder(name)
    offline = {k: None for k in ("weights", "weights_backbone")
               if k in inspect.signature(builder).parameters}

    def build(**kwargs: Any) -> Any:
        check_kwargs(f"torchvision:{name}", kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in WEIGHT_KWARGS["torchvision"]}
        return builder(**kwargs, **offline)

    return build


def _timm(name: str) -> Callable[..., Any]:
    import timm

    def build(**kwargs: Any) -> Any:
        check_kwargs(f"timm:{name}", kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in WEIGHT_KWARGS["timm"]}
        return timm.create_model(name, pretrained=False, **kwargs)

    return build


def _code(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            if not Path(module_name).is_file():
                raise FileNotFoundError(f"file not found: '{module_name}'")
            mspec = importlib.util.spec_from_file_location(Path(module_name).stem,
                                                           module_name)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        fn = module
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError, FileNotFoundError) as err:
        raise ValueError(f"cannot import {spec!r}: {err}") from None
    return fn


def load_factory(spec: str, allow_code: bool = False) -> Callable[..., Any]:
    """The builder of a factory spec (any accepted spelling), checked first by
    :func:`check_factory`; a user's code is imported only with ``allow_code``.

    Raises
    ------
    ValueError
        If the spec is refused, cannot be imported or is not callable.
    """
    spec = check_factory(spec, allow_code=allow_code)
    kind, rest = _source(spec)
    if kind == "torchvision":
        fn = _torchvision(rest)
    elif kind == "timm":
        fn = _timm(rest)
    elif kind == "registered":
        try:
            fn = _REGISTRY[spec] if spec in _REGISTRY else _entry_points()[spec].load()
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load the factory {spec!r} (entry point of group "
                             f"{ENTRY_POINT_GROUP!r}): {err}") from None
    else:
        fn = _code(spec)
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn
