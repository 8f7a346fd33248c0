"""Shared fixtures: tiny networks with known answers and hook-leak checks."""
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("DNNBRAIN_OFFLINE", "1")  # tests never try a download
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


#: What a launcher (torchrun, SLURM) tells its processes: never leaks into a test.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
               "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """Every test runs as one process that no launcher started: torchrun's and SLURM's
    variables of an outer launcher are removed (a test sets its own)."""
    for key in list(os.environ):
        if key in LAUNCH_VARS or key.startswith("SLURM_"):
            monkeypatch.delenv(key)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip on a machine without CUDA (benchmarks/gpu_check.sh runs
    them on a GPU and counts such a skip as a failure)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def hook_dicts_empty(model: nn.Module) -> bool:
    """True when no module of ``model`` holds any forward/backward hook."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
             "_backward_pre_hooks", "_forward_hooks_with_kwargs",
             "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    return all(len(getattr(m, n, {})) == 0 for m in model.modules() for n in names)


@pytest.fixture(scope="session")
def shapenet():
    """The shipped demo network (trained weights, offline)."""
    from dnnbrain.dnn.models import ShapeNet
    return ShapeNet()


@pytest.fixture(scope="session")
def demo_stim():
    """The shipped demo stimulus set (12 images with boxes and masks)."""
    from dnnbrain.io.stim import Stimulus, demo_stimulus_file
    return Stimulus.read(demo_stimulus_file())
