"""Every command's output contract (docs/cli.rst, *What the commands print and write*):
one summary line on stdout naming where the output went, nothing at all with ``-q``.

Each command runs on the demo network (ShapeNet) and one demo stimulus."""
from pathlib import Path

import pytest
import yaml

from dnnbrain.batch import run
from dnnbrain.cli import act, probe, saliency, saliency_batch, saliency_eval, topstim
from dnnbrain.io.stim import Stimulus, demo_stimulus_file


@pytest.fixture(scope="module")
def stim1(tmp_path_factory):
    """The first demo stimulus (with its box and mask)."""
    folder = tmp_path_factory.mktemp("stim")
    return Stimulus.read(demo_stimulus_file())[[0]].write(folder / "one.stim.csv")


@pytest.fixture(scope="module")
def run_yaml(stim1, tmp_path_factory):
    """A one-map batch run: the vanilla map of fc2 unit 1."""
    cfg = {"model": {"name": "ShapeNet", "device": "cpu"}, "stimuli": str(stim1),
           "targets": [{"layer": "fc2", "units": [1]}], "methods": ["vanilla"],
           "outputs": {"save": ["npy"]}}
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _net(stim1):
    return ["-net", "ShapeNet", "-stim", str(stim1), "-device", "cpu"]


def _saliency(out, stim1, run_yaml):
    return [*_net(stim1), "-layer", "fc2", "-chn", "1", "-meth", "vanilla", "-out", str(out)]


def _act(out, stim1, run_yaml):
    return [*_net(stim1), "-layer", "conv1", "fc1", "-pool", "max", "-out", str(out)]


def _topstim(out, stim1, run_yaml):
    return [*_net(stim1), "-layer", "fc2", "-chn", "1", "-top", "1", "-out", str(out)]


def _probe(out, stim1, run_yaml):
    return [*_net(stim1), "-layer", "fc2", "-chn", "1", "-top", "1", "-meth",
            "-featvis-steps", "0", "-out", str(out)]


def _batch(out, stim1, run_yaml):
    return [str(run_yaml), "-out", str(out)]


def _eval(out, stim1, run_yaml):
    folder = out.parent / "run"
    if not folder.exists():
        run(run_yaml, out=folder, progress=False)
    return [str(folder), "-metrics", "localisation", "-no-plots", "-out", str(out)]


COMMANDS = {"dnn_saliency": (saliency.main, _saliency),
            "dnn_act": (act.main, _act),
            "dnn_topstim": (topstim.main, _topstim),
            "dnn_probe": (probe.main, _probe),
            "dnn_saliency_batch": (saliency_batch.main, _batch),
            "dnn_saliency_eval": (saliency_eval.main, _eval)}


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_one_summary_line_or_nothing_with_quiet(prog, stim1, run_yaml, tmp_path, capsys):
    main, argv = COMMANDS[prog]
    quiet = tmp_path / "quiet"
    assert main(argv(quiet, stim1, run_yaml) + ["-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert any(quiet.iterdir())  # it did write its output
    out = tmp_path / "out"
    assert main(argv(out, stim1, run_yaml)) == 0
    text = capsys.readouterr().out
    if prog == "dnn_saliency_eval":  # its Markdown table comes first
        table = (out / "table.md").read_text(encoding="utf-8")
        assert text.startswith(table)
        text = text[len(table):]
    lines = text.split("\n")
    assert len(lines) == 2 and lines[1] == "", text
    assert lines[0].startswith(f"{prog}: ") and f"-> {out}" in lines[0], lines[0]
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(
        p.name for p in quiet.iterdir())  # -q changes what is printed, not what is written


def test_every_command_runs_as_a_module():
    """``python -m dnnbrain.cli.<command>`` runs the command (it once exited 0 doing
    nothing for four of the six): each module ends by calling its ``main``, and one
    module run in a subprocess fails as the command does, with its exit status 2."""
    import ast
    import subprocess
    import sys
    for mod in (act, probe, saliency, saliency_batch, saliency_eval, topstim):
        tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
        last = tree.body[-1]
        assert isinstance(last, ast.If) and "__main__" in ast.unparse(last.test), mod
        assert "sys.exit(main())" in ast.unparse(last), mod.__name__
    res = subprocess.run([sys.executable, "-m", "dnnbrain.cli.saliency", "-net", "ShapeNet",
                          "-layer", "fc2", "-chn", "1", "-stim", "nowhere.stim.csv",
                          "-meth", "vanilla", "-out", "unused"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "dnn_saliency: error:" in res.stderr
    assert "nowhere.stim.csv" in res.stderr and "Traceback" not in res.stderr
