"""Weights files of the named networks: where they are looked for (offline first), how
they are read (``torch.load(weights_only=True)`` or safetensors), and how a state dict
that does not fit its network is described.

:func:`load_state_dict` searches an explicit ``weights=`` path, then
``$DNNBRAIN_DATA/models/<file>``, then torchvision's cache, and only then torchvision's
own download. :mod:`dnnbrain.dnn.models` builds the networks on top of it (and
re-exports these names).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from . import zoo

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def _tv_weights(spec: zoo.NetSpec):
    import torchvision.models as tvm
    enum_name, member = spec.tv_weights.split(".")
    return getattr(getattr(tvm, enum_name), member)


def _candidates(spec: zoo.NetSpec, weights: Optional[PathLike]) -> List[Path]:
    """The offline places, in search order."""
    places: List[Path] = []
    if weights is not None:
        places.append(Path(weights).expanduser())
        return places
    data = os.environ.get("DNNBRAIN_DATA")
    if data:
        places.append(Path(data).expanduser() / "models" / spec.weights_file)
    if spec.tv_weights:
        places.append(Path(torch.hub.get_dir()) / "checkpoints"
                      / os.path.basename(_tv_weights(spec).url))
    else:
        places.append(DATA_DIR / spec.weights_file)
    return places


def load_reason(err: Exception) -> str:
    """torch.load's (often multi-line) complaint in one line: the unpickler's own reason
    when it gives one."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    if found:
        reason = found.group(1)
    else:  # torch's "Weights only load failed ... re-run with weights_only=False" preamble
        # and documentation pointer are advice to run the file's code: keep the reason only
        paras = [q.strip() for q in re.split(r"\n\s*\n", text) if q.strip()]
        kept = [q for q in paras if not q.startswith(("Weights only load failed",
                                                       "Check the documentation"))]
        reason = (kept or paras or [""])[0]
    if not reason.strip():
        reason = "the file ends too early (empty or truncated)"
    return " ".join(f"{type(err).__name__}: {reason}".split())


def load_state_dict(spec: zoo.NetSpec, weights: Optional[PathLike] = None,
                    map_location: Union[str, torch.device] = "cpu",
                    download: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Find and load the state dict of ``spec``, offline first.

    Order: the explicit ``weights`` path; ``$DNNBRAIN_DATA/models/<weights_file>``;
    torchvision's cache (``$TORCH_HOME/hub/checkpoints/<file>``); then torchvision's normal
    download, unless ``download`` is False or ``$DNNBRAIN_OFFLINE`` is set.

    Raises
    ------
    FileNotFoundError
        If ``weights`` is given and missing, or nothing was found; the message names every
        place searched and the file name expected.
    ValueError
        If a file exists but is not a loadable state dict.
    """
    return _find_state_dict(spec, weights, map_location, download)[0]


def read_weights(path: Path, who: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """The state dict in the weights file ``path`` (``torch.load(weights_only=True)``, or
    safetensors for a ``.safetensors`` file) for the network ``who``.

    Raises
    ------
    ValueError
        For a corrupt file, one whose pickle holds code, or one without a state dict.
    """
    log.info("loading %s weights from %s", who, path)
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt / not a weights-only pickle
        raise ValueError(f"weights file {str(path)!r} for {who} could not be loaded by "
                         f"torch.load(weights_only=True): {load_reason(err)}") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {str(path)!r} for {who} does not hold a state dict "
                         f"(got {type(state).__name__})")
    return dict(state)


def _find_state_dict(spec: zoo.NetSpec, weights: Optional[PathLike],
                     map_location: Union[str, torch.device], download: Optional[bool]
                     ) -> Tuple[Dict[str, torch.Tensor], str]:
    """:func:`load_state_dict` and where the state dict came from (a path, or
    torchvision's download)."""
    places = _candidates(spec, weights)
    if weights is not None and places[0].is_dir():
        raise ValueError(f"`weights` must be a weights file, got the folder "
                         f"{str(places[0])!r}")
    if weights is not None and not places[0].is_file():
        raise FileNotFoundError(f"`weights` file not found: {str(places[0])!r}")
    for path in places:
        if path.is_file():
            return read_weights(path, spec.name, map_location), str(path)
    if download is None:
        download = not os.environ.get("DNNBRAIN_OFFLINE")
    if download and spec.tv_weights:
        try:
            return (_tv_weights(spec).get_state_dict(progress=True),
                    f"torchvision's download of {spec.tv_weights}")
        except Exception as err:
            log.info("download of %s weights failed: %s", spec.name, err)
    data = os.environ.get("DNNBRAIN_DATA", "<unset>")
    raise FileNotFoundError(
        f"no weights for {spec.name}: looked for (1) an explicit `weights=` path (none "
        f"given), (2) $DNNBRAIN_DATA/models/{spec.weights_file} (DNNBRAIN_DATA={data}), "
        f"(3) {'torchvision' if spec.tv_weights else 'dnnbrain'}'s "
        f"{'cache' if spec.tv_weights else 'package data'} {str(places[-1])!r}"
        + (", then tried torchvision's download" if download and spec.tv_weights else "")
        + ". Place the file in one of these, or pass pretrained=False for random weights.")


def state_dict_mismatch(model: nn.Module, state: Mapping[str, object],
                        show: int = 3) -> Optional[str]:
    """How ``state`` fails to fit ``model`` on one line, or None when every key and shape
    matches.

    Parameters
    ----------
    model : torch.nn.Module
        The network the weights are for.
    state : mapping of str to torch.Tensor
        A state dict (e.g. from a weights file).
    show : int
        Keys listed per kind of problem (the rest are counted).

    Returns
    -------
    str or None
        E.g. ``"2 tensor(s) of the wrong shape: 'fc.weight' is (10, 512) in the file,
        (4, 512) in the model; ..."``, then missing and unexpected keys.
    """
    expected = model.state_dict()

    def listed(items: List[str]) -> str:
        more = f"; ... and {len(items) - show} more" if len(items) > show else ""
        return "; ".join(items[:show]) + more

    def held(v: object) -> str:
        return (str(tuple(v.shape)) if isinstance(v, torch.Tensor) else
                f"a {type(v).__name__}, not a tensor,")

    shapes = [f"{k!r} is {held(v)} in the file, {tuple(expected[k].shape)} in the model"
              for k, v in state.items() if k in expected and not (
                  isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(expected[k].shape))]
    missing = [repr(k) for k in expected if k not in state]
    extra = [repr(k) for k in state if k not in expected]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of the wrong shape: {listed(shapes)}")
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the file: {listed(missing)}")
    if extra:
        parts.append(f"{len(extra)} key(s) the model does not have: {listed(extra)}")
    return ". ".join(parts) if parts else None


__all__ = ["load_state_dict", "load_reason", "read_weights", "state_dict_mismatch"]
