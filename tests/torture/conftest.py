"""Fixtures of the torture tests: the demo network, demo inputs, a small run config and a
finished run folder (each built once)."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dnnbrain.io.stim import demo_stimulus_file

ROOT = Path(__file__).resolve().parents[2]
DEMO_YAML = ROOT / "docs" / "examples" / "demo_run.yaml"
IMAGES = [str(demo_stimulus_file().parent / f"shape_0{i}.png") for i in range(2)]


def small_config() -> dict:
    """``docs/examples/demo_run.yaml`` cut down to two stimuli, one target and one method,
    so that a run that should have been refused still finishes in a blink."""
    cfg = yaml.safe_load(DEMO_YAML.read_text(encoding="utf-8"))
    cfg.pop("evaluate", None)
    cfg.update(stimuli=list(IMAGES), targets=[{"layer": "fc2", "units": [1, 2]}],
               methods=["vanilla"], batch_size=2)
    cfg["outputs"] = {"dir": "out", "save": ["npy"], "colormap": "inferno"}
    return cfg


@pytest.fixture(scope="session", autouse=True)
def _warm_imports():
    """Import what torch imports lazily on first use (the symbolic-shapes module, which
    adds a warnings filter; torchvision.models, which sets an environment variable), so
    that a case is not blamed for torch's own first call."""
    import torch.fx.experimental.symbolic_shapes  # noqa: F401
    import torchvision.models  # noqa: F401 - sets $TORCHINDUCTOR_CACHE_DIR on import
    from dnnbrain.dnn.algo import get_method, method_names
    for name in method_names():  # the method modules are imported lazily (skimage ...)
        get_method(name)


@pytest.fixture
def ctx(shapenet, tmp_path):
    """What a case works with: the network, a fresh preprocessed batch of two demo images
    ``x``, the image paths and the case's own folder."""
    x = shapenet.test_transform.batch(IMAGES)
    return SimpleNamespace(dnn=shapenet, x=x, images=list(IMAGES), tmp=tmp_path,
                           config=copy.deepcopy(small_config()))


def _finished(tmp_path_factory, name: str, **model) -> Path:
    """A complete ``dnn_saliency_batch`` run folder of :func:`small_config` (``model``:
    changes to its model section)."""
    from dnnbrain.batch import run
    where = tmp_path_factory.mktemp(name)
    cfg = small_config()
    cfg["model"].update(model)
    cfg["outputs"]["dir"] = str(where / "run")
    run(cfg, progress=False, workers=0)
    return where / "run"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A complete run of :func:`small_config`."""
    return _finished(tmp_path_factory, "torture_run")


@pytest.fixture(scope="session")
def random_run(tmp_path_factory):
    """A complete run of :func:`small_config` with random weights (so with
    ``network.pth``)."""
    out = _finished(tmp_path_factory, "torture_random_run", pretrained=False)
    assert (out / "network.pth").is_file()
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of :func:`finished_run` in the case's folder, to spoil."""
    return _copy(finished_run, tmp_path)


@pytest.fixture
def random_run_copy(random_run, tmp_path):
    """A copy of :func:`random_run` in the case's folder, to spoil."""
    return _copy(random_run, tmp_path)
