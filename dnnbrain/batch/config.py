"""Run configs of ``dnn_saliency_batch``: read (``yaml.safe_load``'s loader, bounded:
:mod:`.safeyaml`), validate, resolve.

Validation checks everything before any work and reports every problem at once: one
ValueError whose message lists each problem on its own line with its key path
(``targets[1].units[2]``) and the valid choices. It builds the network (on the CPU; a
factory only from names, :mod:`.factories`) to check layers, units and method parameters
(each method's own ``check_input`` at every target). The resolved config has every default filled
in and every path absolute; it is itself a valid config. See ``docs/batch.rst``.
"""
from __future__ import annotations

import copy
import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..dnn.models import DNN, network_names
from ..dnn.timmnets import canonical, check_timm_name, is_timm_name
from ..io.images import image_size
from ..io.stim import IMAGE_EXTENSIONS, Stimulus
from . import checks, network
from .build import build_model
from .gallery import INDEX_NAME
from .store import CONFIG_NAME, MANIFEST_NAME
from .factories import check_factory, check_kwargs
from .probe import check_probe
from .plan import map_stem
from .safeyaml import check_acyclic, read_yaml
from .schema import (DEFAULTS, MODEL_FACTORY_KEYS, MODEL_NAMED_KEYS, TOP_KEYS, Problems,
                     boolean, integer, key, mapping, plain, string, type_name)

PathLike = Union[str, "os.PathLike[str]"]
log = logging.getLogger(__name__)
GLOB_CHARS = "*?["


@dataclass
class Prepared:
    """A validated run: resolved config, the network (CPU) and the stimuli.

    Attributes
    ----------
    config : dict
        The resolved config.
    dnn : DNN
        The network, built on the CPU.
    stim : Stimulus
        The stimuli, in run order.
    source : str
        Where the config came from (file name or ``'<dict>'``), for messages.
    """

    config: Dict[str, Any]
    dnn: DNN
    stim: Stimulus
    source: str


def load_config(source: Union[PathLike, Mapping[str, Any]],
                out: Optional[PathLike] = None, allow_code: bool = False) -> Dict[str, Any]:
    """Validate a run config and return it resolved (defaults filled, paths absolute).

    Parameters
    ----------
    source : str, os.PathLike or mapping
        A YAML file (relative paths inside it are relative to its folder) or the config
        itself as a dict (relative paths are relative to the current folder).
    out : str, os.PathLike or None
        Overrides ``outputs.dir`` (relative to the current folder).
    allow_code : bool
        Let ``model.factory`` name the user's own ``module:function`` or
        ``file.py:function`` (imported and called during validation). False (default):
        a config is data and runs no code (see "What a config can do" in
        ``docs/batch.rst``).

    Returns
    -------
    dict
        The resolved config.

    Raises
    ------
    ValueError
        Listing every problem, one per line, each with its key path.
    FileNotFoundError
        If ``source`` is a missing file.
    """
    return prepare(source, out, allow_code).config


def prepare(source: Union[PathLike, Mapping[str, Any]], out: Optional[PathLike] = None,
            allow_code: bool = False) -> Prepared:
    """:func:`load_config`, also returning the built network and the stimuli."""
    if isinstance(source, Mapping):
        check_acyclic(source, "<dict>")
        raw, base, name, title = copy.deepcopy(dict(source)), Path.cwd(), "<dict>", None
    else:
        path = Path(source).absolute()
        raw, base, name, title = read_yaml(path), path.parent, str(source), path.stem
    p = Problems()
    top = mapping(p, "", raw, TOP_KEYS, required=("model", "stimuli", "targets", "methods"))
    if top is None:
        p.raise_if_any(name)
    cfg: Dict[str, Any] = {}
    cfg["title"] = string(p, "title", top.get("title", title or "dnnbrain saliency run"))
    cfg["batch_size"] = integer(p, "batch_size", top.get("batch_size", DEFAULTS["batch_size"]),
                                1)
    cfg["seed"] = integer(p, "seed", top.get("seed", DEFAULTS["seed"]), 0)
    dnn = None
    if "model" in top:
        cfg["model"], dnn = _model(p, top["model"], base, allow_code, cfg["seed"] or 0)
    stim = None
    if "stimuli" in top:
        cfg["stimuli"], stim = _stimuli(p, top["stimuli"], base)
    if "targets" in top:
        cfg["targets"] = checks.targets(p, top["targets"], dnn)
    if "targets" in top and "stimuli" in top:
        checks.label_units(p, cfg["targets"], stim, cfg["stimuli"], dnn)
    if "methods" in top:
        cfg["methods"] = checks.methods(p, top["methods"], dnn, cfg["seed"] or 0,
                                        cfg["batch_size"] or 1, cfg.get("targets"))
    cfg["outputs"] = checks.outputs(p, top.get("outputs", {}), base, out,
                                    None if title is None else f"out/{title}")
    cfg["evaluate"] = _evaluate(p, top.get("evaluate"))
    taken = [m["label"] for m in cfg.get("methods") or [] if m] + [
        "stimuli", ".progress", (cfg["evaluate"] or {}).get("out_dir") or "eval",
        CONFIG_NAME, MANIFEST_NAME, INDEX_NAME]
    cfg["probe"] = check_probe(p, top.get("probe"), dnn, None if stim is None else len(stim),
                               cfg["seed"] or 0, cfg["batch_size"] or 1, taken)
    cfg["network"] = None if dnn is None else network.record(cfg["model"], dnn)
    network.check_pin(p, top.get("network"), cfg["network"])
    rank = {k: i for i, k in enumerate(TOP_KEYS)}  # report in the order of the file's keys
    p.items.sort(key=lambda it: rank.get(re.split(r"[.\[]", it[0])[0], -1))
    p.raise_if_any(name)
    return Prepared({k: cfg[k] for k in TOP_KEYS if k != "probe" or cfg["probe"] is not None},
                    dnn, stim, name)


def _evaluate(p: Problems, value: Any) -> Optional[Dict[str, Any]]:
    """The optional ``evaluate:`` section: null/false (none), true (defaults) or a mapping
    of :func:`dnnbrain.evaluate.evaluate_run` options, checked by its own validator."""
    import inspect

    from ..evaluate import OPTIONS, check_options, evaluate_run
    if value is None or value is False:
        return None
    value = {} if value is True else value
    allowed = [k for k in OPTIONS if k not in ("progress", "stim")]
    if not isinstance(value, Mapping):
        p.add("evaluate", f"must be true, null or a mapping with keys {allowed}, got "
                          f"{type_name(value)}")
        return None
    unknown = [k for k in value if k not in allowed]
    for k in unknown:
        p.add(key("evaluate", k), f"unknown key; valid keys: {allowed}")
    defaults = {k: v.default for k, v in inspect.signature(evaluate_run).parameters.items()}
    checked = {k: value.get(k, defaults[k]) for k in inspect.signature(check_options).parameters}
    try:
        check_options(**checked)
    except (TypeError, ValueError) as err:  # the messages name the option first
        named = re.match(r"`(\w+)` (.*)", str(err), re.S)
        if named:
            p.add(f"evaluate.{named.group(1)}", named.group(2))
        else:
            p.add("evaluate", str(err))
    return None if unknown else dict(value)


# ------------------------------------------------------------------------------- model


def check_device(p: Problems, path: str, value: Any) -> Optional[str]:
    """``'auto'`` or a device torch parses and this machine has (cpu, cuda[:N], mps)."""
    if not isinstance(value, str):
        p.add(path, f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {type_name(value)} "
                    f"{value!r}")
        return None
    if value == "auto":
        return value
    try:
        dev = torch.device(value)
    except RuntimeError:
        p.add(path, f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return None
    if dev.type not in ("cpu", "cuda", "mps"):
        p.add(path, f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")
    elif dev.type == "cuda" and not torch.cuda.is_available():
        p.add(path, f"is {value!r} but CUDA is not available here; use 'auto' or 'cpu'")
    elif dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        p.add(path, f"is {value!r} but this machine has {torch.cuda.device_count()} CUDA "
                    f"device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
    else:
        return value
    return None


def _model(p: Problems, value: Any, base: Path,
           allow_code: bool = False, seed: int = 0) -> Tuple[Optional[dict], Optional[DNN]]:
    named = isinstance(value, Mapping) and "factory" not in value
    allowed = MODEL_NAMED_KEYS if named else MODEL_FACTORY_KEYS
    d = mapping(p, "model", value, allowed, required=("name",) if named else ("factory",))
    if d is None:
        return None, None
    n0 = len(p)
    dflt = DEFAULTS["model"]
    res: Dict[str, Any] = {}
    if named:
        name = d.get("name")
        spelled = {n.lower(): n for n in network_names()}  # case-insensitive, as build_network
        res["name"] = spelled.get(name.lower()) if isinstance(name, str) else None
        if is_timm_name(name):
            try:
                check_timm_name(name)
                res["name"] = canonical(name)
            except ValueError as err:
                p.add("model.name", str(err).replace("`net` ", "", 1))
        elif res["name"] is None and "name" in d:
            p.add("model.name", f"must be one of {network_names()} (case-insensitive) or "
                                f"'timm:<model>', got {type_name(name)} {name!r}")
        weights = string(p, "model.weights", d.get("weights", dflt["weights"]), allow_none=True)
        res["weights"] = None if weights is None else str((base / weights).absolute())
        if weights is not None and not Path(res["weights"]).is_file():
            what = ("is a folder, not a weights file" if Path(res["weights"]).is_dir() else
                    "file not found")
            p.add("model.weights", f"{what}: '{res['weights']}'")
        res["pretrained"] = boolean(p, "model.pretrained",
                                    d.get("pretrained", dflt["pretrained"]))
    else:
        res["factory"] = _factory(p, d.get("factory"), base, allow_code)
        res["kwargs"] = d.get("kwargs", dflt["kwargs"])
        if not isinstance(res["kwargs"], Mapping):
            p.add("model.kwargs", f"must be a mapping of keyword arguments for the factory, "
                                  f"got {type_name(res['kwargs'])}")
        else:
            res["kwargs"] = plain(p, "model.kwargs", res["kwargs"])
            if res["factory"] is not None and res["kwargs"] is not None:
                try:
                    check_kwargs(res["factory"], res["kwargs"])
                except ValueError as err:
                    named = re.match(r"`(\w+)`", str(err))
                    p.add(key("model.kwargs", named[1]) if named else "model.kwargs",
                          str(err))
        res["layers"] = d.get("layers", dflt["layers"])
        lay = res["layers"]
        if lay is not None and not (isinstance(lay, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in lay.items())) and not (
                isinstance(lay, list) and all(isinstance(v, str) for v in lay)):
            p.add("model.layers", "must be null, a mapping of layer name -> dotted module path"
                                  f" or a list of dotted module paths, got {lay!r}")
        res["img_size"] = (None if d.get("img_size") is None else
                           integer(p, "model.img_size", d["img_size"], 1))
        for k in ("mean", "std"):
            v = d.get(k, dflt[k])
            if v is not None and not (isinstance(v, list) and len(v) in (1, 3) and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                p.add(f"model.{k}", f"must be null or a list of 3 numbers (1 for a "
                                    f"grayscale network), got {v!r}")
            res[k] = v
    # unknown keys and the device do not keep the network from being built (on the CPU)
    buildable = len(p) == n0 and (res.get("name") or res.get("factory"))
    res["device"] = check_device(p, "model.device", d.get("device", dflt["device"]))
    if not buildable:
        return res, None
    try:
        return res, build_model(res, seed, allow_code)
    except Exception as err:  # noqa: BLE001 - a builder's own error is a config problem
        ours = isinstance(err, (ValueError, TypeError, FileNotFoundError, RuntimeError))
        if not ours and "factory" not in res:
            raise
        text = " ".join(str(err).split())  # one line
        where = ("model.factory" if "factory" in res else
                 "model.weights" if res.get("weights") else "model")
        p.add(where, "cannot build the network: "
              + (text if ours else f"{type(err).__name__}: {text}"))
    return res, None


def _factory(p: Problems, value: Any, base: Path, allow_code: bool) -> Optional[str]:
    """``model.factory`` in its canonical spelling (nothing it names imported or called:
    see :mod:`dnnbrain.batch.factories`), or None after a problem."""
    try:
        return check_factory(value, base, allow_code)
    except ValueError as err:
        p.add("model.factory", str(err))
    return None


# ----------------------------------------------------------------------------- stimuli


def _image_files(files: List[str]) -> List[str]:
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    return sorted(f for f in files if Path(f).suffix.lower() in exts and Path(f).is_file())


def _stimuli(p: Problems, value: Any, base: Path) -> Tuple[Any, Optional[Stimulus]]:
    what = ("a .stim.csv file, a folder of images, a glob pattern of images, or a list "
            "of image files")
    if isinstance(value, str) and value:
        target = str(base / value) if not os.path.isabs(value) else value
        target = os.path.normpath(target)
        stim = _one_stimulus_source(p, target, what)
        resolved: Any = target
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        resolved = [os.path.normpath(str(base / v)) for v in value]
        missing = [i for i, f in enumerate(resolved) if not Path(f).is_file()]
        for i in missing:
            p.add(key("stimuli", i), f"image file not found: '{resolved[i]}'")
        bad = [i for i, f in enumerate(resolved) if i not in missing and not _image_files([f])]
        for i in bad:
            p.add(key("stimuli", i), f"must be an image file ({', '.join(IMAGE_EXTENSIONS)})"
                                     f", got '{resolved[i]}'")
        stim = None if missing or bad else Stimulus.from_files(resolved)
    else:
        p.add("stimuli", f"must be {what}, got {type_name(value)} {value!r}")
        return None, None
    if stim is not None:
        bad = _unreadable(stim)
        if bad and isinstance(resolved, list):
            for i, msg in bad:
                p.add(key("stimuli", i), msg)
        elif bad:
            more = f" (and {len(bad) - 1} more unreadable image file(s))" if len(bad) > 1 else ""
            p.add("stimuli", bad[0][1] + more)
        stim = None if bad else stim
    if stim is not None:
        stems = [map_stem(s) for s in stim.ids]
        dups = sorted({s for s in stems if stems.count(s) > 1})
        if dups:
            p.add("stimuli", f"stimIDs must give distinct output names (stimID without its "
                             f"ending); these repeat: {dups[:10]}")
            stim = None
    return resolved, stim


def _unreadable(stim: Stimulus) -> List[Tuple[int, str]]:
    """``(index, message)`` of each stimulus whose image header cannot be read (not an
    image, empty, a folder, over the pixel limit): checked before any work, from the
    headers only (damaged pixel data past the header still fails during the run)."""
    bad = []
    for i, path in enumerate(stim.paths):
        try:
            image_size(path)
        except (ValueError, OSError) as err:
            bad.append((i, " ".join(str(err).split())))
    return bad


def _folder_stimuli(folder: str) -> Stimulus:
    """The images directly in ``folder``; images in its sub-folders are not read, and
    the log says so (with the glob that would read them)."""
    deeper = sum(1 for q in Path(folder).glob("*/**/*") if q.suffix.lower() in
                 IMAGE_EXTENSIONS and q.is_file())
    hint = f"'{os.path.join(folder, '**', '*')}' as `stimuli` reads them too"
    if deeper:
        top = [q for q in Path(folder).iterdir() if q.is_file() and
               q.suffix.lower() in IMAGE_EXTENSIONS]
        if not top:
            raise ValueError(f"the folder '{folder}' holds no image file itself, only "
                             f"{deeper} in sub-folders: the glob {hint}")
        log.warning("stimuli: %d image file(s) in sub-folders of '%s' are not read (a "
                    "folder means its own images); the glob %s", deeper, folder, hint)
    return Stimulus.from_folder(folder)


def _one_stimulus_source(p: Problems, target: str, what: str) -> Optional[Stimulus]:
    try:
        if any(c in target for c in GLOB_CHARS):
            files = _image_files(glob.glob(target, recursive=True))
            if not files:
                p.add("stimuli", f"the glob pattern '{target}' matches no image file "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
                return None
            return Stimulus.from_files(files)
        if not os.path.exists(target):
            p.add("stimuli", f"not found: '{target}' (must be {what})")
            return None
        if os.path.isdir(target):
            return _folder_stimuli(target)
        if not target.endswith(".csv"):
            p.add("stimuli", f"must be {what}, got the file '{target}'")
            return None
        stim = Stimulus.read(target)
        if len(stim) == 0:
            p.add("stimuli", f"'{target}' lists no stimulus")
            return None
        stim.check_files()
        return stim
    except (ValueError, FileNotFoundError) as err:
        p.add("stimuli", str(err))
    return None
