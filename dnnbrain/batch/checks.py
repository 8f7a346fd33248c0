"""Validation of the ``targets``, ``methods`` and ``outputs`` sections of a run config."""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import matplotlib
import torch

from ..dnn.algo.calls import call_index, check_call, count_calls
from ..dnn.algo.engine import SaliencyImage
from ..dnn.algo.checks import METHOD_LABEL_RE as _LABEL_RE
from ..dnn.algo.registry import get_method, method_names
from ..dnn.algo.target import LABEL, REDUCE, UNIT_BASES, static_size
from ..dnn.models import DNN
from ..viz import AUTO, CHANNEL_REDUCTIONS
from ..io.maps import existing_part
from .plan import layer_folder, unit_folder, unit_text
from .schema import (DEFAULTS, OUTPUT_KEYS, SAVE_KINDS, TARGET_KEYS, Problems, is_int, key,
                     mapping, number, plain, str_list, string, type_name)

#: Constructor arguments the runner sets itself; not method parameters of a config.
RUNNER_ARGS = ("self", "dnn", "from_layer", "from_chn", "batch_size")
_UNIT_FORMS = ("an int channel (from 1), 'predicted', 'label' (each stimulus's own class, "
               "from the stimulus file's label column), [channel, row, col] (from 1), or "
               "[cls, feature] (a token layer's class token)")


# ----------------------------------------------------------------------------- targets


def layer_shape(dnn: DNN, layer: str) -> Optional[Tuple[int, ...]]:
    """``(C, ...)`` output shape of ``layer`` for one blank input of the network's size,
    or None when the size is unknown or the layer gives no tensor."""
    size = dnn.test_transform.size or ((dnn.img_size,) * 2 if dnn.img_size else None)
    if not size:
        return None
    try:
        x = torch.zeros((1, dnn.test_transform.channels) + tuple(size), device=dnn.device)
        out = SaliencyImage(dnn).layer_output(x, layer)
    except (ValueError, TypeError, RuntimeError):
        return None
    return tuple(out.shape[1:]) if isinstance(out, torch.Tensor) and out.ndim >= 2 else None


def _call_exists(p: Problems, path: str, call: Any, dnn: Optional[DNN],
                 layer: Optional[str]) -> bool:
    """An int ``call`` must name a call the layer makes in one forward pass of a blank
    input of the network's size (counted without gradients; skipped when unknown).
    False after a problem."""
    size = None if dnn is None else input_shape(dnn)
    if not isinstance(call, int) or layer is None or size is None:
        return True
    x = torch.zeros((1,) + size, device=dnn.device)
    try:
        n = count_calls(dnn.layer2module(layer), lambda: dnn(x))
    except Exception:  # noqa: BLE001 - not countable here: the run checks it again
        return True
    try:
        call_index(call, n, layer)
    except ValueError as e:
        p.add(path, str(e).replace("`call` ", "", 1) + f"; use 'first', 'last' or 1..{n} "
                    "(-1 is the last call)")
        return False
    return True


def _unit(p: Problems, path: str, u: Any, n: int, hw: Optional[Tuple[int, int]],
          layer: str, base: int = 1) -> Any:
    """One checked unit (int, 'predicted', 'label' or [c, r, col]) counted from ``base``
    (the target's ``unit_base``), returned counted from 1; None after a problem."""
    rng = f"{base}..{n - 1 + base}" if n else f">= {base}"
    frm = f"from {base}" + ("" if base == 1 else ", unit_base 0")
    if u in ("predicted", LABEL):
        return u
    if is_int(u):
        if u < base or (n and u > n - 1 + base):
            p.add(path, f"must be {f'in {rng}' if n else rng} (units count {frm}"
                        f"{f'; layer {layer!r} has {n} units' if n else ''}), got {u}")
            return None
        return int(u) + 1 - base
    if isinstance(u, list) and len(u) == 2 and u[0] == "cls" and is_int(u[1]):
        if u[1] < base or (n and u[1] > n - 1 + base):
            p.add(path, f"class-token feature must be {f'in {rng}' if n else rng} ({frm})"
                        f", got {u[1]}")
            return None
        return ["cls", int(u[1]) + 1 - base]
    if isinstance(u, list) and len(u) == 3 and all(is_int(v) for v in u):
        c, r, col = (int(v) + 1 - base for v in u)
        ok = c >= 1 and (not n or c <= n) and r >= 1 and col >= 1
        if ok and hw is not None:
            ok = r <= hw[0] and col <= hw[1]
        if not ok:
            lim = f"channel {rng}" + (
                f", row {base}..{hw[0] - 1 + base}, col {base}..{hw[1] - 1 + base}" if hw
                else f", row and col >= {base}")
            p.add(path, f"spatial unit must be within {lim} of layer {layer!r} ({frm}), "
                        f"got {u}")
            return None
        return [c, r, col]
    p.add(path, f"must be {_UNIT_FORMS}, got {type_name(u)} {u!r}")
    return None


def _units(p: Problems, path: str, value: Any, dnn: Optional[DNN],
           layer: Optional[str], base: int = 1) -> Optional[List[Any]]:
    items = value if isinstance(value, list) else [value]
    if not items:
        p.add(path, f"must be one unit or a non-empty list of units ({_UNIT_FORMS})")
        return None
    n, hw = 0, None
    if dnn is not None and layer is not None:
        n = static_size(dnn.layer2module(layer))
        if not n or any(isinstance(u, list) for u in items):
            shape = layer_shape(dnn, layer)
            if shape is not None:
                n = n or shape[0]
                hw = tuple(shape[1:3]) if len(shape) == 3 else None
    out = [_unit(p, key(path, j) if isinstance(value, list) else path, u, n, hw,
                 layer or "?", base) for j, u in enumerate(items)]
    if any(u is None for u in out):
        return None
    seen: Set[str] = set()
    for j, u in enumerate(out):
        if unit_text(u) in seen:
            p.add(key(path, j) if isinstance(value, list) else path,
                  f"unit {unit_text(u)} is listed twice")
            return None
        seen.add(unit_text(u))
    return out


def targets(p: Problems, value: Any, dnn: Optional[DNN]) -> Optional[List[Dict[str, Any]]]:
    """Checked ``targets``: ``[{layer, units: [...], reduce}]``."""
    if not isinstance(value, list) or not value:
        p.add("targets", "must be a non-empty list of {layer, units, reduce} mappings, got "
                         f"{type_name(value)} {value!r}")
        return None
    out: List[Dict[str, Any]] = []
    folders: Dict[Tuple[str, str], str] = {}
    for i, t in enumerate(value):
        path = key("targets", i)
        d = mapping(p, path, t, TARGET_KEYS, required=("layer", "units"))
        if d is None:
            continue
        layer = string(p, key(path, "layer"), d["layer"]) if "layer" in d else None
        if layer is not None and dnn is not None:
            try:
                dnn.layer2module(layer)
            except ValueError:
                p.add(key(path, "layer"), f"must be one of {dnn.layers} (or a dotted module "
                                          f"path of the model), got {layer!r}")
                layer = None
        reduce = string(p, key(path, "reduce"), d.get("reduce", DEFAULTS["reduce"]), REDUCE)
        base = d.get("unit_base", 1)
        if not is_int(base) or base not in UNIT_BASES:
            p.add(key(path, "unit_base"), f"must be 0 (units counted from 0, as Slideflow and "
                  f"PyHealth count classes) or 1 (the default), got {type_name(base)} "
                  f"{base!r}")
            base = None
        units = (_units(p, key(path, "units"), d["units"], dnn, layer, base)
                 if "units" in d and base is not None else None)
        # resolved 1-based: the resolved config, file names and manifests never mix counts
        out.append({"layer": layer, "units": units, "reduce": reduce})
        if d.get("call") is not None:  # absent: the engine's default (digests unchanged)
            try:
                out[-1]["call"] = check_call(d["call"])
            except (TypeError, ValueError) as e:
                p.add(key(path, "call"), str(e).replace("`call` ", "", 1))
            if "call" not in out[-1] or not _call_exists(p, key(path, "call"),
                                                          out[-1]["call"], dnn, layer):
                out[-1]["layer"] = None  # the methods' checks skip this target
        for j, u in enumerate(units or []):
            where = (layer_folder(layer, out[-1].get("call")), unit_folder(u))
            if layer is not None and where in folders:
                p.add(key(key(path, "units"), j), f"layer {layer!r} unit {unit_text(u)} is "
                      f"also a unit of {folders[where]}: both would write to "
                      f"<method>/{where[0]}/{where[1]}/ (merge the two targets)")
            folders.setdefault(where, path)
    return out


def label_units(p: Problems, targets: Optional[List[Dict[str, Any]]], stim: Any,
                stimuli: Any, dnn: Optional[DNN]) -> None:
    """Targets with the unit ``'label'`` need the stimuli's ``label`` column (class
    indices from 0: stimulus ``i`` explains unit ``label[i] + 1``), every label within
    the target layer's units; checked before any work."""
    for i, t in enumerate(targets or []):
        if not t or not t.get("units") or LABEL not in t["units"] or stim is None:
            continue
        path = key(key(key("targets", i), "units"), t["units"].index(LABEL)) \
            if len(t["units"]) > 1 else key(key("targets", i), "units")
        if stim.labels is None:
            where = (f"the stimulus file '{stimuli}' has columns {list(stim.data)}"
                     if isinstance(stimuli, str) and stimuli.endswith(".csv") else
                     "the stimuli are image files without labels")
            p.add(path, f"'label' needs a 'label' column (class indices from 0) in the "
                        f"stimuli: {where}")
            continue
        n = static_size(dnn.layer2module(t["layer"])) if dnn is not None and t["layer"] \
            else 0
        if n == 0 and dnn is not None and t["layer"]:
            shape = layer_shape(dnn, t["layer"])
            n = shape[0] if shape else 0
        lo, hi = int(stim.labels.min()), int(stim.labels.max())
        if lo < 0 or (n and hi + 1 > n):
            bad = lo if lo < 0 else hi
            sid = stim.ids[int(list(stim.labels).index(bad))]
            p.add(path, f"'label' of stimulus {sid!r} is {bad}: labels are class indices "
                        f"from 0 and layer {t['layer']!r} has "
                        f"{f'{n} units (labels 0..{n - 1})' if n else 'no such unit'}")


# ----------------------------------------------------------------------------- methods


def accepted_params(cls: type) -> Tuple[List[str], bool]:
    """Parameters a method class's constructor takes from a config, and whether it also
    takes ``**kwargs``."""
    sig = inspect.signature(cls.__init__)
    names = [n for n, prm in sig.parameters.items() if n not in RUNNER_ARGS
             and prm.kind not in (prm.VAR_KEYWORD, prm.VAR_POSITIONAL)]
    var_kw = any(prm.kind == prm.VAR_KEYWORD for prm in sig.parameters.values())
    return names, var_kw


def method_param_names(name: str, params: Dict[str, Any]) -> List[str]:
    """Parameters method ``name`` takes (from a config's method entry or ``-param``); a
    wrapper (SmoothGrad) also takes its base method's, ``params['base']`` or its default
    (ValueError naming `base` when that is not another method)."""
    cls = get_method(name)
    names, var_kw = accepted_params(cls)
    allowed = list(names)
    if var_kw and "base" in names:
        base = params.get("base", inspect.signature(cls.__init__).parameters["base"].default)
        bases = [n for n in method_names() if n != name]
        if base not in bases:
            raise ValueError(f"`base` must be one of {bases}, got {base!r}")
        allowed += [n for n in accepted_params(get_method(base))[0] if n not in allowed]
    return allowed


def input_shape(dnn: DNN) -> Optional[Tuple[int, int, int]]:
    """``(C, H, W)`` of the network's input (its ``test_transform``'s channels and size),
    or None when the size is unknown."""
    size = dnn.test_transform.size or ((dnn.img_size,) * 2 if dnn.img_size else None)
    return (dnn.test_transform.channels,) + tuple(int(v) for v in size) if size else None


def _check_at_targets(p: Problems, path: str, name: str, obj: Any, params: Dict[str, Any],
                      dnn: DNN, targets: List[Dict[str, Any]], section: str = "targets"
                      ) -> bool:
    """The method's :meth:`~dnnbrain.dnn.algo.engine.SaliencyImage.check_input` at each
    valid target, as the run calls it (False after a problem); ``section`` names the
    targets in messages."""
    shape = input_shape(dnn)
    seen: Set[str] = set()  # a problem of every target (a window too large) is listed once
    for j, t in enumerate(targets):
        if t is None or t.get("layer") is None or not t.get("units") or t.get("reduce") is None:
            continue
        units = [tuple(u) if isinstance(u, list) else u for u in t["units"]]
        call = {"call": t["call"]} if "call" in t else {}
        try:
            obj.set_layer(t["layer"], units, t["reduce"], **call)
            if shape is not None:
                obj.check_input(shape)
        except (ValueError, TypeError) as err:
            if str(err) not in seen:
                named = re.match(r"`(\w+)`", str(err))
                where = key(path, named[1]) if named and named[1] in params else path
                at = f"targets[{j}]" if section == "targets" else section
                p.add(where, f"method {name!r} cannot run at {at} (layer "
                             f"{t['layer']!r}): {err}")
            seen.add(str(err))
    return not seen


def method_entry(p: Problems, path: str, m: Any, dnn: Optional[DNN], seed: int,
                 batch_size: int, targets: Optional[List[Any]] = None,
                 section: str = "targets") -> Optional[Dict[str, Any]]:
    """One checked method entry at key path ``path`` (a name or ``{name, label,
    <param>: ...}``): ``{name, label, <params>}`` with ``seed`` filled in for a method
    that takes one, checked at each of ``targets`` (named ``section`` in messages); None
    after recording a problem."""
    n0 = len(p)
    if isinstance(m, str):
        m = {"name": m}
    if not isinstance(m, dict):
        p.add(path, f"must be a method name ({method_names()}) or a mapping {{name: ..., "
                    f"<parameter>: ...}}, got {type_name(m)} {m!r}")
        return None
    name = string(p, key(path, "name"), m.get("name"), method_names())
    label = m.get("label", name)
    if label is not None and not (isinstance(label, str) and _LABEL_RE.fullmatch(label)):
        p.add(key(path, "label"), "must be a folder name of letters, digits and _ . + - "
                                  f"(default: the method name), got {label!r}")
    params = {k: plain(p, key(path, str(k)), v) for k, v in m.items()
              if k not in ("name", "label")}
    if name is None or len(p) > n0:
        return None
    cls = get_method(name)
    try:
        allowed = method_param_names(name, params)
    except ValueError as err:
        p.add(key(path, "base"), str(err).replace("`base` ", "", 1))
        return None
    unknown = [k for k in params if k not in allowed]
    for k in unknown:
        extra = " (batch_size is set at the top level)" if k == "batch_size" else ""
        p.add(key(path, str(k)), f"is not a parameter of method {name!r}; valid parameters "
                                 f"are {['name', 'label'] + allowed}{extra}")
    if unknown:
        return None
    if "seed" in allowed and "seed" not in params:
        params["seed"] = seed
    if dnn is not None:
        try:
            obj = cls(dnn, batch_size=batch_size, **params)
        except (ValueError, TypeError) as err:
            named = re.match(r"`(\w+)`", str(err))  # the messages name the parameter first
            where = key(path, named[1]) if named and named[1] in params else path
            p.add(where, f"method {name!r} rejects its parameters: {err}")
            return None
        if not _check_at_targets(p, path, name, obj, params, dnn, targets or [], section):
            return None
    return {"name": name, "label": label, **params}


def methods(p: Problems, value: Any, dnn: Optional[DNN], seed: int,
            batch_size: int, targets: Optional[List[Any]] = None
            ) -> Optional[List[Dict[str, Any]]]:
    """Checked ``methods``: ``[{name, label, <params>}]`` with ``seed`` filled in for
    methods that take one; each is also checked at every valid target of ``targets``
    (the checked ``targets``) by the method's own ``check_input``."""
    if not isinstance(value, list) or not value:
        p.add("methods", f"must be a non-empty list of method names ({method_names()}) or "
                         f"{{name: ..., <parameter>: ...}} mappings, got {type_name(value)} "
                         f"{value!r}")
        return None
    out = [method_entry(p, key("methods", i), m, dnn, seed, batch_size, targets)
           for i, m in enumerate(value)]
    labels: Dict[str, int] = {}
    for i, m in enumerate(out):
        if m is not None and m["label"] is not None:
            if m["label"] in labels:
                p.add(key(key("methods", i), "label"), f"{m['label']!r} is also the label of "
                      f"methods[{labels[m['label']]}]; give one a distinct `label` (its "
                      "output folder)")
            labels.setdefault(m["label"], i)
    return out


# ----------------------------------------------------------------------------- outputs


def outputs(p: Problems, value: Any, base: Path, out: Any = None,
            default_dir: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Checked ``outputs`` with defaults; ``out`` overrides ``dir``. Both, when relative,
    are relative to the current folder (never to the config's folder, so a config kept
    with the sources does not write into them); ``default_dir`` (None:
    ``DEFAULTS['outputs']['dir']``) when neither is given (``out/<config name>`` for a
    file). ``base`` (the config's folder) is not used for outputs."""
    d = mapping(p, "outputs", value if value is not None else {}, OUTPUT_KEYS)
    if d is None:
        return None
    dflt = DEFAULTS["outputs"]
    res: Dict[str, Any] = {}
    folder = string(p, "outputs.dir", d.get("dir", default_dir or dflt["dir"]))
    if out is not None:
        res["dir"] = str(Path(out).absolute())
    elif folder is not None:
        res["dir"] = str((Path.cwd() / folder).absolute())
    there = existing_part(res["dir"]) if res.get("dir") is not None else None
    if there is not None and not there.is_dir():
        given = " (given by -out)" if out is not None else ""
        p.add("outputs.dir", f"must be a folder (new or existing){given}, got "
                             f"'{res['dir']}', but '{there}' is a file")
    res["save"] = str_list(p, "outputs.save", d.get("save", dflt["save"]), list(SAVE_KINDS))
    cmap = d.get("colormap", dflt["colormap"])
    if not isinstance(cmap, str) or (cmap != AUTO and cmap not in matplotlib.colormaps):
        p.add("outputs.colormap", "must be 'auto' or a matplotlib colormap name such as "
                                  f"['inferno', 'viridis', 'hot', 'gray', 'jet'], got {cmap!r}")
    res["colormap"] = cmap
    pct = d.get("percentile", dflt["percentile"])
    res["percentile"] = None if pct is None else number(p, "outputs.percentile", pct, 0, 100,
                                                        lo_open=True)
    res["alpha"] = number(p, "outputs.alpha", d.get("alpha", dflt["alpha"]), 0, 1)
    if "reduce" in d:  # absent: the default (digests of earlier runs unchanged)
        res["reduce"] = string(p, "outputs.reduce", d["reduce"], list(CHANNEL_REDUCTIONS))
    return res
