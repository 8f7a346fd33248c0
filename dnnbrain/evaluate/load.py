"""Reading a ``dnn_saliency_batch`` run folder for evaluation: manifest, resolved config,
network, stimuli, maps and ground truth."""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml
from PIL import Image

from ..batch.build import build_model
from ..batch.launch import runtime_device
from ..batch.network import load_run_network
from ..batch.store import COLUMNS, CONFIG_NAME, MANIFEST_NAME, read_manifest
from ..dnn.models import DNN
from ..io.images import image_size
from ..io.maps import load_map
from ..io.stim import IMAGE_EXTENSIONS, Stimulus

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
StimLike = Union[PathLike, Sequence[PathLike], Stimulus, None]
#: Manifest columns that locate a map, in order of preference.
MAP_KINDS = ("npy", "nifti")


@dataclass
class Run:
    """A run folder, read and checked.

    Attributes
    ----------
    run_dir : pathlib.Path
        The folder.
    config : dict
        ``config.resolved.yaml``.
    rows : list of dict
        ``manifest.csv``, one dict of str per map.
    stim : Stimulus
        The stimuli (from the config, or the override).
    index : dict of str to int
        stimID -> row of :attr:`stim`.
    kind : str
        The manifest column the maps are read from (``'npy'``, else ``'nifti'``).
    """

    run_dir: Path
    config: Dict[str, Any]
    rows: List[Dict[str, str]]
    stim: Stimulus
    index: Dict[str, int]
    kind: str
    _sizes: Dict[int, Tuple[int, int]] = field(default_factory=dict, repr=False)

    def map_file(self, row: Dict[str, str]) -> Path:
        """Path of a manifest row's map."""
        return self.run_dir / row[self.kind]

    def load(self, row: Dict[str, str]) -> np.ndarray:
        """The saved map of a manifest row (``(H, W)`` or ``(C, H, W)``)."""
        return load_map(self.map_file(row))

    def image_size(self, i: int) -> Tuple[int, int]:
        """``(height, width)`` of stimulus ``i``'s original image, upright by its EXIF
        orientation as the maps were computed (header read only)."""
        if i not in self._sizes:
            self._sizes[i] = image_size(self.stim.paths[i])
        return self._sizes[i]

    def ground_truth(self, i: int, shape: Tuple[int, int]) -> Optional[np.ndarray]:
        """Stimulus ``i``'s ground truth as a ``shape`` bool mask: its boxes scaled from the
        original image to ``shape`` (:func:`~dnnbrain.metrics.boxes_to_mask`), else its
        mask image resized (nearest); None when it has neither (or they are empty at
        this size)."""
        from ..metrics import boxes_to_mask
        boxes = self.stim.boxes(i)
        if boxes:
            mask = boxes_to_mask(boxes, shape, scale=self.image_size(i))
        else:
            m = self.stim.mask(i)
            if m is None:
                return None
            img = Image.fromarray(m.astype(np.uint8) * 255)
            mask = np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST)) > 0
        return mask if mask.any() else None


def parse_unit(text: str) -> Union[int, Tuple[int, ...], str]:
    """A manifest ``unit`` cell: ``'3'`` -> 3, ``'3_4_5'`` -> (3, 4, 5), ``'cls_3'`` ->
    ('cls', 3); other text as is."""
    parts = str(text).split("_")
    if len(parts) == 2 and parts[0] == "cls" and parts[1].isdigit():
        return ("cls", int(parts[1]))
    if all(p.strip().isdigit() for p in parts):
        vals = tuple(int(p) for p in parts)
        return vals[0] if len(vals) == 1 else vals
    return text


def _config_stimuli(spec: Any) -> Stimulus:
    """The stimuli a resolved config names (as the batch runner reads them)."""
    if isinstance(spec, list):
        return Stimulus.from_files(spec)
    spec = str(spec)
    if any(c in spec for c in "*?["):
        exts = {e.lower() for e in IMAGE_EXTENSIONS}
        files = sorted(f for f in glob.glob(spec, recursive=True)
                       if Path(f).suffix.lower() in exts and Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"the run's stimuli pattern '{spec}' matches no image; "
                                    "pass `stim`")
        return Stimulus.from_files(files)
    if os.path.isdir(spec):
        return Stimulus.from_folder(spec)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"the run's stimuli '{spec}' (config.resolved.yaml) not found;"
                                " pass `stim` to point at them")
    return Stimulus.read(spec)


def load_stim(stim: StimLike, config: Dict[str, Any]) -> Stimulus:
    """``stim`` (a Stimulus, a ``.stim.csv``, a folder or image files) or, for None, the
    config's stimuli; their image files are checked."""
    if stim is None:
        out = _config_stimuli(config.get("stimuli"))
    elif isinstance(stim, Stimulus):
        out = stim
    else:
        items = [stim] if isinstance(stim, (str, os.PathLike)) else list(stim)
        missing = [str(p) for p in items if not Path(p).exists()]
        if not items or missing:
            raise FileNotFoundError(f"`stim` not found: {missing or items}")
        if len(items) == 1 and Path(items[0]).is_dir():
            out = Stimulus.from_folder(items[0])
        elif len(items) == 1 and str(items[0]).endswith(".csv"):
            out = Stimulus.read(items[0])
        else:
            out = Stimulus.from_files(items)
    out.check_files()
    return out


def read_run(run_dir: PathLike, stim: StimLike = None) -> Run:
    """Read and check a run folder.

    Raises
    ------
    FileNotFoundError
        If ``run_dir``, its ``manifest.csv`` or ``config.resolved.yaml``, the stimuli, or
        a map file the manifest lists is missing (the first missing map is named).
    ValueError
        If the manifest is empty, lacks columns, or names a stimulus the stimuli lack.
    """
    run = Path(run_dir)
    if run.is_file():
        raise ValueError(f"`run_dir` must be a dnn_saliency_batch run folder, got the file "
                         f"'{run}'")
    if not run.is_dir():
        raise FileNotFoundError(f"`run_dir` not found: '{run}'")
    manifest, cfg_file = run / MANIFEST_NAME, run / CONFIG_NAME
    if not manifest.is_file():
        parts = sorted(p.name for p in run.glob("manifest.part*of*.csv"))
        hint = (f" (it holds the shard parts {parts[:3]}: merge them with "
                "`dnn_saliency_batch RUN.yaml -merge`)" if parts else
                " (not a finished dnn_saliency_batch run folder)")
        raise FileNotFoundError(f"`run_dir` '{run}' has no {MANIFEST_NAME}{hint}")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"`run_dir` '{run}' has no {CONFIG_NAME}")
    try:
        config = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).split("\n")[0]
        raise ValueError(f"'{cfg_file}' is not a readable YAML file ({reason}); re-run "
                         "dnn_saliency_batch to rewrite it") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"'{cfg_file}' must be a run config mapping with a `model` section "
                         f"(as dnn_saliency_batch writes it), got {type(config).__name__}")
    rows = read_manifest(manifest)
    if not rows:
        raise ValueError(f"'{manifest}' lists no map")
    lacking = [c for c in COLUMNS if c not in rows[0] and c not in ("network", "class")]
    kind = next((k for k in MAP_KINDS if rows[0].get(k)), None)
    if lacking or kind is None:
        raise ValueError(f"'{manifest}' must have the columns {list(COLUMNS)} and one of "
                         f"{list(MAP_KINDS)} (outputs.save), got {list(rows[0])}")
    missing = [r[kind] for r in rows if not (run / r[kind]).is_file()]
    if missing:
        raise FileNotFoundError(f"map file listed in {MANIFEST_NAME} not found: "
                                f"'{run / missing[0]}' ({len(missing)} of {len(rows)} "
                                "missing; re-run dnn_saliency_batch to redo them)")
    stimuli = load_stim(stim, config)
    index = {sid: i for i, sid in enumerate(stimuli.ids)}
    unknown = sorted({r["stimulus"] for r in rows} - set(index))
    if unknown:
        raise ValueError(f"`stim`: the manifest's stimuli {unknown[:5]} ({len(unknown)}) are "
                         f"not among the stimuli ({stimuli.ids[:3]} ...)")
    return Run(run, config, rows, stimuli, index, kind)


def build_dnn(config: Dict[str, Any], device: Optional[str] = None,
              run_dir: Optional[PathLike] = None, allow_code: bool = False) -> DNN:
    """The network that made a run's maps, on ``device`` (None: the config's
    ``model.device``, ``'auto'`` = CUDA when available).

    Built from ``config['model']`` (seeded from ``config['seed']``); with ``run_dir``, the
    run's saved weights (``network.pth``) are loaded and the result is checked against
    the fingerprint the run recorded (:func:`dnnbrain.batch.network.load_run_network`).
    ``allow_code``: its factory may be the user's own code.

    Raises
    ------
    FileNotFoundError
        If the run's saved weights are missing.
    ValueError
        If the network's fingerprint is not the recorded one (both named).
    """
    dev = runtime_device(device or config["model"].get("device", "auto"))
    dnn = build_model(config["model"], int(config.get("seed") or 0), allow_code)
    if run_dir is not None:
        dnn = load_run_network(dnn, Path(run_dir), config.get("network"))
    return dnn.to(dev)


def network_input(dnn: DNN, run: Run, idx: Sequence[int]) -> torch.Tensor:
    """Network input ``(len(idx), 3, H, W)`` float32, on the CPU, of stimuli ``idx``."""
    return dnn.test_transform.batch([str(run.stim.paths[i]) for i in idx])
