"""timm models as named networks: ``build_network('timm:<model>')``.

Any model of `timm <https://github.com/huggingface/pytorch-image-models>`_ (the optional
extra ``pip install -e ".[timm]"``) builds by name, with random weights
(``pretrained=False``, seeded by the caller's RNG) or weights found offline, and gets a
layer table derived from its own structure (:func:`timm_layers`):

* the model's top-level modules keep their names (``conv1``, ``patch_embed``, ``norm``,
  ``head`` ...; dropouts and identities are left out);
* a container of numbered blocks becomes ``block1`` .. ``blockN`` (a ViT's ``blocks``,
  with ``block<k>_attn`` and ``block<k>_mlp`` where the block has them);
* stages become ``stage1`` .. ``stageS`` with their blocks ``stage<s>_block<k>`` (ResNet's
  ``layer<s>``, RegNet's ``s<s>``, ConvNeXt's ``stages``, Swin's ``layers``,
  EfficientNet's ``blocks``).

Counting is from 1, as for units. Any dotted module path of the model works as well.
Preprocessing is timm's own (``timm.data.resolve_data_config``): input size, mean, std.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

PathLike = Union[str, "os.PathLike[str]"]
PREFIX = "timm:"


def is_timm_name(name: Any) -> bool:
    """True for a ``'timm:<model>'`` network name."""
    return isinstance(name, str) and name.lower().startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ValueError("timm networks need the timm package: pip install -e \".[timm]\" "
                         "(or pip install timm)") from None
    return timm


def check_timm_name(name: str) -> str:
    """The timm model name of ``'timm:<model>'``, checked against ``timm.list_models()``.

    Raises
    ------
    ValueError
        Without timm installed, or for a model timm does not know (with close names).
    """
    timm = _timm()
    model = name[len(PREFIX):]
    if not timm.is_model(model):
        import difflib
        close = difflib.get_close_matches(model, timm.list_models(), n=3)
        raise ValueError(f"`net` {name!r} is not a timm model" +
                         (f"; close: {['timm:' + c for c in close]}" if close else
                          "; see timm.list_models()"))
    return model


def _is_container(module: nn.Module) -> bool:
    kids = [k for k, _ in module.named_children()]
    return len(kids) >= 2 and all(k.isdigit() for k in kids)


def _skip(module: nn.Module) -> bool:
    return isinstance(module, (nn.Identity, nn.Dropout)) or type(module).__name__ in (
        "DropPath", "Identity")


def timm_layers(model: nn.Module) -> Dict[str, str]:
    """Layer table (name -> dotted module path, in forward order) of a timm model.

    Parameters
    ----------
    model : torch.nn.Module
        A model built by ``timm.create_model``.

    Returns
    -------
    dict of str to str
        See the module docstring for the names.
    """
    table: Dict[str, str] = {}
    stage = 0
    info = getattr(model, "feature_info", None)
    # the containers of the model's stages or blocks: where its feature maps come from
    holders = ({str(f["module"]).split(".")[0] for f in info if "." in str(f["module"])}
               if isinstance(info, list) and info and isinstance(info[0], dict) else None)
    for name, child in model.named_children():
        if _skip(child):
            continue
        if re.fullmatch(r"layer\d+|s\d+", name):  # ResNet / RegNet stage
            stage += 1
            table[f"stage{stage}"] = name
            for j, (sub, _) in enumerate(child.named_children(), 1):
                table[f"stage{stage}_block{j}"] = f"{name}.{sub}"
        elif (name in holders) if holders is not None else _is_container(child):
            staged = any(_is_container(g) or _is_container(getattr(g, "blocks", nn.Module()))
                         for _, g in child.named_children())
            for i, (sub, g) in enumerate(child.named_children(), 1):
                path = f"{name}.{sub}"
                if staged:
                    stage += 1
                    table[f"stage{stage}"] = path
                    inner = getattr(g, "blocks", None)
                    base, blocks = ((f"{path}.blocks", inner) if isinstance(inner, nn.Module)
                                    else (path, g))
                    for j, (b, _) in enumerate(blocks.named_children(), 1):
                        table[f"stage{stage}_block{j}"] = f"{base}.{b}"
                else:
                    table[f"block{i}"] = path
                    for part in ("attn", "mlp"):
                        if isinstance(getattr(g, part, None), nn.Module):
                            table[f"block{i}_{part}"] = f"{path}.{part}"
        else:
            table[name] = name
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module) and not _skip(head):
        path = next((k for k, v in model.named_modules() if v is head), None)
        if path is not None and path not in table.values():
            table[path.replace(".", "_")] = path
    return table


def canonical(name: str) -> str:
    """``'timm:<model>'`` with the prefix in lower case."""
    return PREFIX + name[len(PREFIX):]


def create(name: str, pretrained: bool = True, weights: Optional[PathLike] = None
           ) -> Tuple[nn.Module, Optional[Path]]:
    """Build ``'timm:<model>'`` (CPU) and say where its trained weights are.

    Parameters
    ----------
    name : str
        ``'timm:<model>'`` (any name of ``timm.list_models()``).
    pretrained : bool
        Trained weights, looked for offline: ``weights``, then
        ``$DNNBRAIN_DATA/models/timm/<model>.pth`` (or ``.safetensors``), then the files
        timm's Hugging Face hub id names in the local hub cache (never downloaded).
        False: random weights from torch's RNG (seed it for reproducible networks).
    weights : path or None
        Explicit weights file (implies ``pretrained``).

    Returns
    -------
    model : torch.nn.Module
        With random weights.
    path : pathlib.Path or None
        The weights file to load into ``model`` (None: nothing to load).

    Raises
    ------
    FileNotFoundError
        When trained weights are asked for and none of the places holds them.
    ValueError
        Without timm, or for a model timm does not know.
    """
    timm = _timm()
    model_name = check_timm_name(name)
    if not (pretrained or weights is not None):
        return timm.create_model(model_name, pretrained=False), None
    data = os.environ.get("DNNBRAIN_DATA")
    places = [Path(weights).expanduser()] if weights is not None else [
        Path(data).expanduser() / "models" / "timm" / f"{model_name}{ext}"
        for ext in (".pth", ".safetensors")] if data else []
    if weights is not None and not places[0].is_file():
        raise FileNotFoundError(f"`weights` file not found: '{places[0]}'")
    cached = _hub_cache(timm, model_name)
    for path in places + cached:
        if path.is_file():
            with torch.random.fork_rng(devices=[]):  # the random init is overwritten
                return timm.create_model(model_name, pretrained=False), path
    raise FileNotFoundError(
        f"no trained weights for timm:{model_name} offline: looked in "
        f"$DNNBRAIN_DATA/models/timm/{model_name}.pth|.safetensors (DNNBRAIN_DATA="
        f"{data or '<unset>'}) and timm's Hugging Face cache; put a state dict there, "
        "pass weights=..., or pretrained=False for random weights")


def _hub_cache(timm: Any, model_name: str) -> List[Path]:
    """The model's weights files already in the local Hugging Face cache (nothing is
    downloaded; [] when the model has no hub id or huggingface_hub is missing)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    cfg = getattr(timm.models, "get_pretrained_cfg", lambda n: None)(model_name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub:
        return []
    found = [try_to_load_from_cache(hub, f) for f in ("model.safetensors",
                                                      "pytorch_model.bin")]
    return [Path(f) for f in found if isinstance(f, str)]


def describe(model: nn.Module) -> Tuple[Dict[str, str], Tuple[int, int], Tuple[float, ...],
                                        Tuple[float, ...]]:
    """Layer table (:func:`timm_layers`), input size ``(H, W)``, mean and std of a timm
    model (timm's ``resolve_data_config``)."""
    cfg = _timm().data.resolve_data_config({}, model=model)
    size = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    return timm_layers(model), size, tuple(cfg["mean"]), tuple(cfg["std"])
