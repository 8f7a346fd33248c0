"""benchmarks/gpu_check.sh stays runnable where no GPU is to test it: its syntax, the files
and test markers it names, and the options it passes to run_all.py."""
import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_syntax_and_strict_mode():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    limit = {k: int(v) for k, v in re.findall(r"^(LIMIT_\w+)=(\d+)$", text, re.M)}
    steps = re.findall(r'\bstep "?[\w$-]+"? "\$(LIMIT_\w+)"', text)
    assert sorted(steps) == sorted(limit)  # every step has its own limit
    nets = shlex.split(re.search(r"^SUITE_NETS=\((.*)\)$", text, re.M).group(1))
    runs = [limit["LIMIT_DEVICE"], limit["LIMIT_TESTS"]] + [limit["LIMIT_SUITE_NET"]] * len(
        nets)
    assert sum(runs) + 15 * len(runs) < 8 * 60  # limits + time to stop: < 8 minutes


def test_every_file_and_marker_it_names_exists():
    text = SCRIPT.read_text()
    scripts = set(re.findall(r"\b([\w/]+\.py)\b", text))
    assert {Path(s).name for s in scripts} == {"run_all.py"}
    assert all((REPO / s).is_file() or (REPO / "benchmarks" / s).is_file() for s in scripts)
    assert text.index('cd "$HERE"\n') < text.index('"$PY" run_all.py')  # where it imports
    assert (REPO / "tests").is_dir() and re.search(r"pytest .*\btests\b", text, re.S)
    markers = re.findall(r"pytest -q -m (\w+)", text)
    ini = configparser.ConfigParser()
    ini.read(REPO / "pytest.ini")
    registered = {line.split(":")[0].strip()
                  for line in ini["pytest"]["markers"].splitlines() if line.strip()}
    assert markers == ["cuda"] and set(markers) <= registered
    marked = [p.name for p in (REPO / "tests").rglob("test_*.py")
              if "@pytest.mark.cuda\n" in p.read_text()]
    assert len(marked) >= 4, marked  # the runner, the engine, fast paths, feature vis


def test_run_all_accepts_the_options(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import run_all
    text = SCRIPT.read_text()
    found = {k: shlex.split(v) for k, v in re.findall(r"^(SUITE_\w+)=\((.*)\)$", text, re.M)}
    assert '"${SUITE_ARGS[@]}" --nets "$net" --json "$DEST/suite_$net.json"' in text
    for net in found["SUITE_NETS"]:
        args = run_all._parser().parse_args(found["SUITE_ARGS"] + ["--nets", net,
                                                                   "--json", "s.json"])
        assert args.device == "cuda" and args.quick and args.pair_batch == 1
        assert args.nets == [net]
    assert found["SUITE_NETS"] == ["shapenet", "resnet18", "alexnet"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_stops_with_exit_3(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                       "PYTHON": sys.executable})
    assert done.returncode == 3, done.stdout + done.stderr
    device = (tmp_path / "device.txt").read_text()
    assert f"torch {torch.__version__}" in device and "CUDA is not available" in device
    assert (tmp_path / "summary.txt").read_text().startswith("device: FAILED (exit 1")
