"""Sphinx configuration for dnnbrain's docs (``sphinx-build -W -b html docs docs/_build``).

The build is offline: MathJax is served from the ``sphinx-mathjax-offline`` package (copied
into ``_static/mathjax``), Markdown pages are parsed by MyST, and the package documented is
this checkout's (``..`` goes first on ``sys.path``), not whatever is installed.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "dnnbrain"
author = "dnnbrain developers"
release = "2.0.0.dev0"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc",
              "sphinx.ext.mathjax", "sphinx-mathjax-offline", "myst_parser"]
numpydoc_show_class_members = False
numpydoc_validation_checks = set()
autodoc_typehints = "none"
autodoc_inherit_docstrings = False  # torch's own docstrings (autograd.Function) hold refs
autodoc_mock_imports = []
exclude_patterns = ["_build", "examples"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
html_theme = "alabaster"
nitpicky = False
suppress_warnings = ["autosummary"]
