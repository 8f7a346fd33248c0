"""One network per run (issue 11): random-weight runs are reproducible, shards, resumes
and evaluation use the network that made the maps, and one run holds a folder at a time."""
import fcntl
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dnnbrain.batch import merge, run
from dnnbrain.batch.store import read_manifest
from dnnbrain.cli.saliency import main as saliency_main

N_STIM = 4


@pytest.fixture(scope="module")
def stim4(tmp_path_factory):
    from dnnbrain.demo.shapes import write_stimuli
    return write_stimuli(tmp_path_factory.mktemp("stim"), n=N_STIM)


@pytest.fixture(scope="module")
def cfg_file(stim4, tmp_path_factory):
    """The demo run with random weights: 4 stimuli in 2 batches, vanilla, npy only."""
    cfg = {"model": {"name": "ShapeNet", "pretrained": False, "device": "cpu"},
           "stimuli": str(stim4), "targets": [{"layer": "fc2", "units": [1, 2]}],
           "methods": ["vanilla"], "outputs": {"save": ["npy"]}, "batch_size": 2, "seed": 7}
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ref(cfg_file, tmp_path_factory):
    return run(cfg_file, out=tmp_path_factory.mktemp("ref") / "out", progress=False)


def tree(root, skip=".part"):
    """Every file under ``root`` -> bytes; the resolved config without ``outputs.dir``;
    the empty lock files aside (not outputs)."""
    out = {}
    for p in Path(root).rglob("*"):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or skip in rel or p.name.startswith(".lock"):
            continue
        if p.name == "config.resolved.yaml":
            cfg = yaml.safe_load(p.read_text())
            cfg["outputs"].pop("dir")
            out[rel] = yaml.safe_dump(cfg).encode()
        else:
            out[rel] = p.read_bytes()
    return out


def test_two_runs_are_byte_identical_and_record_the_network(ref, cfg_file, tmp_path):
    state = torch.get_rng_state()
    again = run(cfg_file, out=tmp_path / "out", progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # building the network forks the RNG
    assert tree(again.out_dir) == tree(ref.out_dir)
    rec = yaml.safe_load((ref.out_dir / "config.resolved.yaml").read_text())["network"]
    assert rec["weights"] == "network.pth" and len(rec["fingerprint"]) == 64
    assert {r["network"] for r in read_manifest(ref.manifest)} == {rec["fingerprint"]}
    from dnnbrain.dnn.fingerprint import fingerprint
    from dnnbrain.dnn.models import ShapeNet
    net = ShapeNet(pretrained=False).model
    net.load_state_dict(torch.load(ref.out_dir / "network.pth", weights_only=True))
    assert fingerprint(net) == rec["fingerprint"]
    # the resolved config is a valid config, and it pins the network
    fed = run(ref.out_dir / "config.resolved.yaml", out=tmp_path / "fed", dry_run=True)
    assert fed.config["network"] == rec


def test_two_shards_equal_one_process(ref, cfg_file, tmp_path):
    out = tmp_path / "out"
    run(cfg_file, out=out, shard="1/2", progress=False)
    torch.manual_seed(1234)  # the second shard starts from another global random state
    second = run(cfg_file, out=out, shard="0/2", progress=False)
    assert second.manifest == out / "manifest.csv"
    assert tree(out) == tree(ref.out_dir)


def test_resume_uses_the_saved_network(ref, cfg_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = run(cfg_file, out=out, progress=False)
    for row in read_manifest(first.manifest)[::3]:
        (out / row["npy"]).unlink()
    torch.manual_seed(99)
    seen = []
    from dnnbrain.batch import network
    real = network.use_run_network
    monkeypatch.setattr(network, "use_run_network",
                        lambda dnn, *a, **k: seen.append(real(dnn, *a, **k)) or seen[-1])
    again = run(cfg_file, out=out, progress=False)
    assert len(again.todo) == 2 and seen and tree(out) == tree(ref.out_dir)


def test_changed_network_is_refused_naming_both_fingerprints(ref, cfg_file, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "out"
    run(cfg_file, out=out, progress=False)
    old = yaml.safe_load((out / "config.resolved.yaml").read_text())["network"]["fingerprint"]
    from dnnbrain.batch import build as build_mod
    from dnnbrain.dnn.fingerprint import seeded
    # the same config now builds another network (as after a change of torch's init)
    monkeypatch.setattr(build_mod, "seeded", lambda seed: seeded(seed + 1))
    with pytest.raises(FileExistsError) as err:
        run(cfg_file, out=out, progress=False)
    msg = str(err.value)
    new = msg.split("now builds the network ")[1].split(";")[0]
    assert "\n" not in msg and old in msg and len(new) == 64 and new != old
    forced = run(cfg_file, out=out, progress=False, force=True)
    assert len(forced.todo) == len(forced.items) == 2  # every map of the old one redone
    assert {r["network"] for r in read_manifest(forced.manifest)} == {new}
    assert tree(out)["network.pth"] != tree(ref.out_dir)["network.pth"]
    assert tree(out)[forced.manifest.name] != tree(ref.out_dir)[ref.manifest.name]


def test_tampered_saved_network_is_an_error(cfg_file, tmp_path):
    out = tmp_path / "out"
    first = run(cfg_file, out=out, progress=False)
    state = torch.load(out / "network.pth", weights_only=True)
    state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, out / "network.pth")
    from dnnbrain.evaluate import evaluate_run
    with pytest.raises(ValueError, match="network.pth.*fingerprint"):
        evaluate_run(out, metrics=["road"], progress=False)
    tampered = (out / "network.pth").read_bytes()
    (out / "network.pth").unlink()
    with pytest.raises(FileNotFoundError, match="network.pth"):
        evaluate_run(out, metrics=["road"], progress=False)
    (out / "network.pth").write_bytes(tampered)
    (out / read_manifest(first.manifest)[0]["npy"]).unlink()
    with pytest.raises(ValueError, match="fingerprint") as err:
        run(cfg_file, out=out, progress=False)
    assert "\n" not in str(err.value)


def test_evaluation_scores_the_network_that_made_the_maps(ref, tmp_path):
    from dnnbrain.evaluate import evaluate_run
    torch.manual_seed(5)
    res = evaluate_run(ref.out_dir, metrics=["road"], out_dir=tmp_path / "ev",
                       road_percentages=[0.5], progress=False)
    act = {(r["stimulus"], r["unit"]): float(r["activation"])
           for r in read_manifest(ref.manifest)}
    assert len(res["maps"]) == len(act) == 2 * N_STIM
    for m in res["maps"]:
        assert m["road"]["original"] == pytest.approx(act[m["stimulus"], str(m["unit"])],
                                                      rel=1e-5, abs=1e-6)


def _flock(path, mode):
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    return fd


def test_one_run_per_folder_while_shards_share_it(cfg_file, tmp_path):
    out = tmp_path / "out"
    run(cfg_file, out=out, shard="0/2", progress=False)  # a run folder, shard 1 to do
    rows0 = read_manifest(out / "manifest.part0of2.csv")
    mine = Path(rows0[0]["npy"])  # a temporary file of shard 0, as if it were writing
    temp = out / mine.parent / f".{mine.name}.0123456789ab.tmp.npy"
    temp.write_bytes(b"being written")
    (out / mine).unlink()  # shard 0 has work to do again
    shared = _flock(out / ".lock", fcntl.LOCK_SH)  # a live shard 0 of this run
    own = _flock(out / ".lock.shard0of2", fcntl.LOCK_EX)
    try:
        for shard in (None, "0/2"):
            with pytest.raises(FileExistsError) as err:
                run(cfg_file, out=out, shard=shard, progress=False)
            msg = str(err.value)
            assert "\n" not in msg and str(out) in msg and "another run" in msg
        assert temp.is_file()  # nobody cleaned the live shard's temporary file
        other = run(cfg_file, out=out, shard="1/2", progress=False)  # shards run side by side
        assert other.maps == 2 * 2 and temp.is_file()
    finally:
        os.close(own)
        os.close(shared)
    exclusive = _flock(out / ".lock", fcntl.LOCK_EX)  # a live unsharded run
    try:
        with pytest.raises(FileExistsError, match="another run"):
            run(cfg_file, out=out, shard="1/2", progress=False)
        assert run(cfg_file, out=out, dry_run=True).dry_run  # a dry run takes no lock
        with pytest.raises(FileExistsError, match="another run"):
            merge(cfg_file, out=out)  # nor does a merge by hand merge under it
    finally:
        os.close(exclusive)
    done = run(cfg_file, out=out, shard="0/2", progress=False)
    assert done.manifest == out / "manifest.csv" and temp.is_file() is False


def test_cli_random_weights_are_seeded(stim4, tmp_path):
    def maps(seed, name):
        out = tmp_path / name
        assert saliency_main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "1", "-stim",
                              str(stim4), "-meth", "vanilla", "-random-weights", "-seed",
                              str(seed), "-out", str(out)]) == 0
        return {p.name: np.load(p) for p in sorted((out / "npy").glob("*.npy"))}
    state = torch.get_rng_state()
    a, b, c = maps(3, "a"), maps(3, "b"), maps(4, "c")
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a) == N_STIM and all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a)


def test_cli_no_weights_error_suggests_random_weights(stim4, tmp_path, monkeypatch, capsys):
    import dataclasses

    from dnnbrain.dnn import zoo
    spec = dataclasses.replace(zoo.get_spec("ShapeNet"), weights_file="missing.pth")
    monkeypatch.setattr(zoo, "get_spec", lambda name: spec)
    monkeypatch.setenv("DNNBRAIN_DATA", str(tmp_path))
    rc = saliency_main(["-net", "ShapeNet", "-layer", "fc2", "-chn", "1", "-stim",
                        str(stim4), "-out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "-random-weights" in err, err


def test_concurrent_shard_processes_share_one_network(ref, cfg_file, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dnnbrain.cli.saliency_batch", str(cfg_file), "-out",
           str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd + ["-shard", f"{k}/2"], env=env, stderr=subprocess.PIPE)
             for k in (0, 1)]
    errs = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert tree(out) == tree(ref.out_dir)
