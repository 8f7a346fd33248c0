"""The benchmark scripts stay runnable: a quick suite on the demo network and a memory
budget check, each in a subprocess as a user runs them (slow: CI runs them once)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.slow


def run(args, tmp_path):
    done = subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_quick_suite_runs_and_agrees(tmp_path):
    out = tmp_path / "suite.json"
    run(["run_all.py", "--quick", "--nets", "shapenet", "--json", str(out)], tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in rows} == {"vanilla", "guided", "ig", "smoothgrad",
                                           "gradcam", "gradcam++", "scorecam", "occlusion"}
    for r in rows:
        assert r["dnnbrain_s"] > 0 and r["ref_s"] > 0
        if r["agree"] is not None and r["method"] != "gradcam++":  # pgc's eps, see docs
            assert r["agree"] < 1e-4, (r["method"], r["reference"], r["agree"])


def test_memory_budget_check_passes(tmp_path):
    table = run(["bench_memory.py", "--images", "1", "--rows", "50", "--budgets", "64MiB"],
                tmp_path)
    assert " yes " in table.splitlines()[-1]


def test_smoothgrad_profile_prints_both_tables(tmp_path):
    out = run(["profile_smoothgrad.py", "--net", "shapenet", "--samples", "4", "--rows", "3"],
              tmp_path)
    heads = [line for line in out.splitlines() if line.startswith("== ")]
    assert [h.split(":")[0] for h in heads] == ["== dnnbrain", "== bare forward+backward"]
    assert out.count("Self CPU time total") == 2


def test_topstim_memory_benchmark_runs(tmp_path):
    out = tmp_path / "topk.json"
    run(["bench_topstim.py", "--n", "64", "256", "--batch", "32", "--k", "3", "--json",
         str(out)], tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert [r["n"] for r in rows] == [64, 256]
    assert all(r["units"] == 64 and r["k"] == 3 and r["seconds"] > 0 for r in rows)


def test_eval_benchmark_times_maps_and_phases(tmp_path):
    from dnnbrain.io.stim import Stimulus, demo_stimulus_file
    stim = Stimulus.read(demo_stimulus_file())[[0, 1]].write(tmp_path / "two.stim.csv")
    yml = tmp_path / "tiny.yaml"
    yml.write_text(f"model: {{name: ShapeNet, device: cpu}}\nstimuli: {stim}\n"
                   "targets: [{layer: fc2, units: [1]}]\nmethods: [vanilla]\n"
                   "outputs: {save: [npy]}\n", encoding="utf-8")
    out = tmp_path / "fig.json"
    table = run(["bench_eval.py", "--yaml", str(yml), "--out", str(tmp_path / "o"),
                 "--json", str(out)], tmp_path)
    fig = json.loads(out.read_text())
    assert "x the maps" in table and fig["maps"] > 0 and fig["ratio"] > 0
    phases = ("ROAD", "deletion/insertion", "randomisation", "localisation", "plots")
    assert all(fig[k] > 0 for k in phases)
    assert sum(fig[k] for k in phases) <= fig["eval"]
    assert (tmp_path / "o" / "eval" / "metrics.json").is_file()


def test_xrai_benchmark_times_batched_and_single_calls(tmp_path):
    out = run(["bench_xrai.py", "--n", "2", "--repeats", "1", "--threads", "1"], tmp_path)
    for key in ("batched", "singles"):
        walls = re.findall(rf"^\s*{key}\s+wall min\s+([0-9.]+) s", out, re.M)
        assert len(walls) == 1 and float(walls[0]) > 0, out
    assert float(out.split("singles / batched (min wall):")[1].split()[0]) > 0
