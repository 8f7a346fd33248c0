"""Scale-out: shards and local devices from -shard, torchrun or SLURM; shards launched by
SLURM's variables and by a real torchrun equal one process byte for byte; a merge never
misses a part when shards finish together."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dnnbrain.batch import run
from dnnbrain.batch.config import prepare
from dnnbrain.batch.launch import local_rank, parse_shard, runtime_device
from dnnbrain.batch.lock import folder_lock
from dnnbrain.batch.merge import merge_parts
from dnnbrain.batch.plan import make_plan
from dnnbrain.batch.store import read_manifest
from dnnbrain.cli.act import main as act_main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny run: 6 shape stimuli, vanilla on 2 units of ShapeNet's fc2, 3 work items."""
    from dnnbrain.demo.shapes import write_stimuli
    root = tmp_path_factory.mktemp("tiny")
    cfg = {"model": {"name": "ShapeNet", "device": "cpu"},
           "stimuli": str(write_stimuli(root / "stim", n=6)),
           "targets": [{"layer": "fc2", "units": [1, 2]}], "methods": ["vanilla"],
           "outputs": {"save": ["npy", "png"]}, "batch_size": 2}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    """The tiny run in one process."""
    return run(tiny, out=tmp_path_factory.mktemp("single") / "out", progress=False)


def tree(root):
    """Every file of a finished run -> bytes (the resolved config names its folder; the
    shards' parts and locks are not in a single run)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*")
            if p.is_file() and p.name != "config.resolved.yaml" and ".part" not in p.name
            and not p.name.startswith(".lock")}


def test_shard_from_flag_torchrun_or_slurm():
    torchrun = {"RANK": "2", "WORLD_SIZE": "4"}
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "3"}
    assert parse_shard("1/3", env={}) == (1, 3) and parse_shard((0, 2), env={}) == (0, 2)
    assert parse_shard(None, env={}) is None and parse_shard("0/1", env={}) is None
    assert parse_shard(None, env=torchrun) == (2, 4)
    assert parse_shard(None, env=slurm) == (1, 3)
    assert parse_shard(None, env={**slurm, **torchrun}) == (2, 4)  # torchrun inside srun
    assert parse_shard("0/2", env={**slurm, **torchrun}) == (0, 2)  # -shard wins
    assert parse_shard(None, env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None


@pytest.mark.parametrize("shard, env, needle", [
    ("3/3", {}, "`shard` must be 'k/n' with 0 <= k < n, got 3/3"),
    ("-1/2", {}, "got -1/2"),
    ("1", {}, "`shard` must be integers 'k/n'"),
    ("a/b", {}, "got 'a/b'"),
    (None, {"RANK": "4", "WORLD_SIZE": "4"}, "RANK/WORLD_SIZE must satisfy 0 <= RANK < "
                                             "WORLD_SIZE, got 4/4"),
    (None, {"RANK": "1"}, "torchrun: WORLD_SIZE is not set but RANK is"),
    (None, {"SLURM_NTASKS": "2"}, "SLURM: SLURM_PROCID is not set but SLURM_NTASKS is"),
    (None, {"SLURM_PROCID": "2", "SLURM_NTASKS": "2"}, "SLURM_PROCID/SLURM_NTASKS must "
                                                       "satisfy"),
    (None, {"SLURM_PROCID": "x", "SLURM_NTASKS": "2"}, "got 'x/2'"),
    (None, {"RANK": "0", "WORLD_SIZE": "0"}, "got 0/0"),
])
def test_inconsistent_values_are_one_line_errors(shard, env, needle):
    with pytest.raises(ValueError) as err:
        parse_shard(shard, env=env)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_local_rank_and_device(monkeypatch):
    assert local_rank({}) is None
    assert local_rank({"LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == 1
    assert local_rank({"SLURM_LOCALID": "3", "SLURM_NTASKS": "8"}) == 3
    assert local_rank({"LOCAL_RANK": "0", "SLURM_LOCALID": "5"}) == 0  # torchrun first
    bad = [({"LOCAL_RANK": "2", "WORLD_SIZE": "2"},
            "torchrun: LOCAL_RANK must satisfy 0 <= LOCAL_RANK < WORLD_SIZE, got 2 "),
           ({"SLURM_LOCALID": "-1"}, "SLURM_LOCALID must be an integer >= 0"),
           ({"LOCAL_RANK": "one"}, "LOCAL_RANK must be an integer >= 0, got 'one'"),
           ({"LOCAL_RANK": "0", "WORLD_SIZE": "x"}, "WORLD_SIZE must be an integer >= 1")]
    for env, needle in bad:
        with pytest.raises(ValueError, match=needle):
            local_rank(env)
    assert runtime_device("cpu", env={"LOCAL_RANK": "1"}) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime_device("auto", env={"LOCAL_RANK": "1"}) == torch.device("cuda:1")
    assert runtime_device("auto", env={"SLURM_LOCALID": "3"}) == torch.device("cuda:1")
    assert runtime_device("auto", env={}) == torch.device("cuda")


def test_slurm_shards_equal_one_process(tiny, single, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_PROCID", "1")
    first = run(tiny, out=out, progress=False)
    assert first.shard == (1, 2) and first.manifest == out / "manifest.part1of2.csv"
    assert [it.index for it in first.items] == [1]
    monkeypatch.setenv("SLURM_PROCID", "0")
    second = run(tiny, out=out, progress=False)
    assert second.shard == (0, 2) and second.manifest == out / "manifest.csv"
    assert tree(out) == tree(single.out_dir)


def test_merge_waits_for_a_merge_in_progress(tiny, single, tmp_path):
    """Two shards finishing together: the second waits for the first's merge and then
    finds everything merged, instead of leaving (the parts might have been incomplete
    when the first looked)."""
    out = tmp_path / "out"
    run(tiny, out=out, shard="0/2", progress=False)
    run(tiny, out=out, shard="1/2", progress=False)
    (out / "manifest.csv").unlink()
    prep = prepare(tiny, out, False)
    plan = make_plan(prep.config, len(prep.stim))
    got = {}
    with folder_lock(out):  # another process is merging
        t = threading.Thread(target=lambda: got.update(m=merge_parts(prep, plan, 2, False)))
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and not (out / "manifest.csv").exists()  # it waits
    t.join(10)
    assert got["m"] == out / "manifest.csv" and tree(out) == tree(single.out_dir)
    assert merge_parts(prep, plan, 2, False) is None  # merged already: not twice
    assert merge_parts(prep, plan, 2, True) == out / "manifest.csv"  # -merge: always


def test_dnn_act_under_slurm(tmp_path, monkeypatch, capsys):
    from dnnbrain.io.stim import demo_stimulus_file
    args = ["-net", "ShapeNet", "-layer", "conv2", "fc2", "-stim", str(demo_stimulus_file()),
            "-batch-size", "4", "-no-progress"]
    assert act_main(args + ["-out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("SLURM_NTASKS", "2")
    for k in ("1", "0"):
        monkeypatch.setenv("SLURM_PROCID", k)
        assert act_main(args + ["-out", str(tmp_path / "sh")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "shard done; 4 of 12 stimuli" in lines[1] and "for 12 stimuli" in lines[2]
    for layer in ("conv2", "fc2"):
        assert (tmp_path / "sh" / f"{layer}.npy").read_bytes() == \
            (tmp_path / "one" / f"{layer}.npy").read_bytes()
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert act_main(args + ["-out", str(tmp_path / "bad")]) == 2
    assert "SLURM_PROCID/SLURM_NTASKS must satisfy" in capsys.readouterr().err


@pytest.mark.cuda
def test_run_on_cuda_of_the_local_rank_equals_cpu(tiny, single, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count() - 1))
    cfg = yaml.safe_load(tiny.read_text())
    cfg["model"]["device"] = "auto"
    result = run(cfg, out=tmp_path / "out", progress=False)
    want = f"cuda:{torch.cuda.device_count() - 1}"
    assert runtime_device("auto") == torch.device(want) and result.maps == 12
    cpu, gpu = (read_manifest(Path(d) / "manifest.csv")
                for d in (single.out_dir, result.out_dir))
    act = [[float(r.pop("activation")) for r in m] for m in (cpu, gpu)]
    # cuDNN's convolutions may run in TF32 (10-bit mantissa): agreement to ~1e-3
    assert gpu == cpu and np.allclose(act[1], act[0], rtol=1e-2, atol=1e-3)
    for name in [k for k in tree(single.out_dir) if k.endswith(".npy")]:
        a, b = np.load(single.out_dir / name), np.load(result.out_dir / name)
        assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max(), name


@pytest.mark.slow
def test_real_torchrun_two_processes_equal_one_process(tiny, single, tmp_path):
    env = {k: v for k, v in os.environ.items()}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "dnnbrain.cli.saliency_batch", str(tiny),
           "-out", str(out), "-q"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.glob("manifest.part*")} == {"manifest.part0of2.csv",
                                                            "manifest.part1of2.csv"}
    got, want = tree(out), tree(single.out_dir)
    assert sorted(got) == sorted(want) and got == want
    npys = [k for k in want if k.endswith(".npy")]
    assert len(npys) == 12 and all(np.abs(np.load(out / k)).max() > 0 for k in npys)
    # each process computed its own items: 2 and 1 of 3, 2 units per stimulus
    assert [len((out / f"manifest.part{k}of2.csv").read_text().splitlines()) - 1
            for k in (0, 1)] == [8, 4]
