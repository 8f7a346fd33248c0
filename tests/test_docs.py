"""The documentation: every public module and name in the API reference, and an offline
``sphinx-build -W`` (math rendered from a local MathJax, Markdown pages rendered)."""
import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: automodule directive and its option lines
DIRECTIVE = re.compile(r"^\.\. automodule:: (\S+)[ \t]*\n((?:[ \t]+:.*\n?)*)", re.M)


def public_modules():
    """Every module under dnnbrain/ (packages included) whose dotted name has no ``_x``
    part, except the command-line programs (``dnnbrain.cli``: documented in cli.rst)."""
    mods = {}
    for path in sorted((ROOT / "dnnbrain").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or parts[:2] == ["dnnbrain", "cli"]:
            continue
        mods[".".join(parts)] = path
    return mods


def public_names(path):
    """``(names, exported)``: the module's public top-level names (its ``__all__`` names
    that it defines itself, else its non-underscore functions and classes), and its whole
    ``__all__`` (None without one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined, funcs, exported = set(), [], None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
            funcs.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    defined.add(t.id)
                    if t.id == "__all__":
                        exported = list(ast.literal_eval(node.value))
    if exported is not None:
        return [n for n in exported if n in defined], exported
    return [n for n in funcs if not n.startswith("_")], None


def api_directives():
    """module -> None (``:members:`` without a list: everything public) or the set of
    listed members, or an empty set (no ``:members:``: the docstring only)."""
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    out = {}
    for mod, options in DIRECTIVE.findall(text):
        members = set()
        for line in options.splitlines():
            m = re.match(r"\s+:members:(.*)", line)
            if m:
                listed = [x.strip() for x in m.group(1).split(",") if x.strip()]
                members = set(listed) if listed else None
        out[mod] = members
    return out


def test_every_public_module_is_in_the_api_reference():
    """A new module (``dnnbrain.probe.*`` ...) fails here until docs/api.rst has its
    ``.. automodule::`` line."""
    mods, documented = public_modules(), api_directives()
    assert "dnnbrain.batch" in mods and "dnnbrain.dnn.tokens" in mods  # the walk works
    missing = sorted(set(mods) - set(documented))
    assert not missing, f"add to docs/api.rst: {missing}"
    unknown = sorted(set(documented) - set(mods))
    assert not unknown, f"docs/api.rst names modules that do not exist: {unknown}"


def test_every_public_name_is_documented():
    """Each public name is documented in its own module's entry, or through a package
    whose ``__all__`` re-exports it with ``:members:`` (documented there)."""
    mods, documented = public_modules(), api_directives()
    via_package = set()
    for mod, members in documented.items():
        if mod in mods and members is None:
            _, exported = public_names(mods[mod])
            via_package.update(exported or [])
    missing = []
    for mod, path in mods.items():
        names, _ = public_names(path)
        members = documented.get(mod, set())
        for name in names:
            if members is None or name in members or name in via_package:
                continue
            missing.append(f"{mod}.{name}")
    assert not missing, f"undocumented in docs/api.rst: {missing}"
    # and a listed member exists
    for mod, members in documented.items():
        if mod in mods and members:
            defined = set(public_names(mods[mod])[0]) | set(
                public_names(mods[mod])[1] or [])
            tree = ast.parse(mods[mod].read_text(encoding="utf-8"))
            top = {getattr(n, "name", None) for n in tree.body} | {
                t.id for n in tree.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}
            assert members <= (defined | top), (mod, sorted(members - defined - top))


def _docs_tools_missing():
    for name in ("sphinx", "numpydoc", "myst_parser", "sphinx-mathjax-offline"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


@pytest.mark.slow
@pytest.mark.skipif(_docs_tools_missing() is not None,
                    reason=f"docs tools not installed ({_docs_tools_missing()}): "
                           f"pip install -e '.[docs]'")
def test_sphinx_builds_offline_without_warnings(tmp_path):
    out = tmp_path / "html"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
                           str(DOCS), str(out), "-d", str(tmp_path / "doctrees")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # math: a local MathJax, never one from the web
    page = (out / "metrics.html").read_text(encoding="utf-8")
    src = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page, re.I)
    assert src and all(not s.startswith(("http:", "https:", "//")) for s in src), src
    assert (out / src[0]).is_file()
    assert r"\(PE = " in page or "PE =" in page  # the formula is there for MathJax
    # the benchmarks page is rendered Markdown (tables, headings), not a code block
    bench = (out / "benchmarks.html").read_text(encoding="utf-8")
    assert "<table" in bench and "<h2" in bench and "```" not in bench
    # the API reference has the modules that used to be missing
    api = (out / "api.html").read_text(encoding="utf-8")
    for anchor in ("dnnbrain.batch.runner.run", "dnnbrain.evaluate.core.evaluate_run",
                   "dnnbrain.dnn.base.ip", "dnnbrain.viz.to_uint8_image"):
        assert f'id="{anchor}"' in api, anchor
    for page in sorted((DOCS / "coming_from").glob("*.rst")):
        assert (out / "coming_from" / (page.stem + ".html")).is_file(), page
