"""Sphinx configuration of funcopt's documentation site (``make docs``; see docs/README.md)."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "docs" / "_ext")]
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as funcopt.tensorflow and transformers do

import funcopt  # noqa: E402

project = "funcopt"
author = "the funcopt authors"
copyright = "the funcopt authors, Apache-2.0"
release = version = funcopt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the docstrings' Google-style Args/Returns/Raises sections
    "sphinx.ext.mathjax",
    "myst_nb",  # MyST markdown pages and the executed notebooks
    "funcopt_docs",  # API pages from __all__, the Trainer menu table, offline MathJax
]
exclude_patterns = ["_build", "README.md", "**/.ipynb_checkpoints"]

# Every cross-reference must resolve: funcopt's own are checked; optax/JAX/torch/transformers/
# TF/stdlib objects render as plain names (funcopt_docs.plain_external_names: no inventories
# offline, and no link is better than a guessed one).
nitpicky = True

# --- API reference ---------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written in the code (1e-3, not 0.001)
autosummary_generate = False  # entries live on the group pages (funcopt-api), not in stubs
add_module_names = True
add_function_parentheses = False  # the guides write the arguments after the name
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False  # the class signature shows the field types already

# --- maths: MathJax 3 served from the build (funcopt_docs.copy_mathjax), no network ----------
mathjax_path = "mathjax/tex-chtml.js"

# --- MyST and notebooks -----------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"  # every notebook runs at every build (tests override: off)
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# Pages show stdout, results and plots; stderr (TF's C++ start-up logs, tqdm's and transformers'
# warnings) is left out. A cell that raises still fails the build, and tests/test_notebooks.py
# runs the notebooks with nothing hidden.
nb_output_stderr = "remove"

# --- HTML ---------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"funcopt {release}"
html_static_path = ["_static"]
html_css_files = ["funcopt.css"]
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}
