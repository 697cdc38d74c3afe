"""The documentation site builds with no warning, and every public name has its API entry.

Builds ``docs/`` as ``make docs`` does (``sphinx-build -W --keep-going``: warnings are errors)
into a temporary folder, but with notebook execution off (``-D nb_execution_mode=off``):
``tests/test_notebooks.py`` already executes every notebook, and ``make docs`` executes them
for the site. Then reads the built HTML: every name of ``funcopt.__all__``,
``funcopt.torch.__all__`` and ``funcopt.tensorflow.__all__`` must have exactly one entry.
"""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("funcopt", "funcopt.torch", "funcopt.tensorflow")
# An autodoc entry: <dt class="sig sig-object py" id="funcopt.adamw">.
ENTRY = re.compile(r'<dt class="sig sig-object py[^"]*"[^>]*\bid="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("sphinx", "myst_nb", "furo", "mathjax", "torch", "tensorflow"):
        reference(module)  # the docs extra and the bridges' libraries (make test installs them)
    out = tmp_path_factory.mktemp("docs")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
               "-D", "nb_execution_mode=off", "-d", str(out / "doctrees"), str(ROOT / "docs"),
               str(out / "html")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert (out / "html" / "index.html").is_file(), run.stderr[-4000:]  # it built at all
    return out / "html", run


def test_site_builds_with_no_warning(site):
    _, run = site
    problems = [line for line in run.stderr.splitlines()
                if ("WARNING" in line or "ERROR" in line) and "absl::" not in line]
    assert run.returncode == 0 and not problems, (
        "sphinx-build -W --keep-going failed; fix each of these (a docstring's reference to a "
        "name funcopt does not export, or its reST):\n" + ("\n".join(problems)
                                                            or run.stderr[-4000:]))


def _entries(html: pathlib.Path) -> list[str]:
    ids = []
    for page in sorted((html / "api").glob("*.html")):
        ids += ENTRY.findall(page.read_text(encoding="utf-8"))
    return ids


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_has_one_entry(site, package):
    html, _ = site
    ids = _entries(html)
    names = importlib.import_module(package).__all__
    missing = [n for n in names if f"{package}.{n}" not in ids]
    repeated = [n for n in names if ids.count(f"{package}.{n}") > 1]
    assert not missing, f"{package}: no API entry for {missing}"
    assert not repeated, f"{package}: more than one API entry for {repeated}"


def test_api_entries_show_signatures_and_maths(site):
    html, _ = site
    page = (html / "api" / "optimizers.html").read_text(encoding="utf-8")
    entry = page[page.index('id="funcopt.adamw"'):]
    entry = entry[:entry.index("</dt>")]
    assert "learning_rate" in entry and "1e-3" in entry, entry  # defaults as in the code
    assert '<div class="math' in page  # the docstrings' .. math:: blocks


def test_maths_and_pages_need_no_network(site):
    html, _ = site
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    remote = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"')
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not remote.findall(text), (page, remote.findall(text))
        if 'class="math' in text:
            assert "_static/mathjax/tex-chtml.js" in text, page


def test_every_notebook_and_guide_has_a_page(site):
    html, _ = site
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (html / "notebooks" / f"{notebook.stem}.html").is_file(), notebook.name
    for guide in sorted((ROOT / "docs" / "guides").glob("*.md")):
        assert (html / "guides" / f"{guide.stem}.html").is_file(), guide.name


def test_porting_guide_lists_the_trainer_menu(site):
    from funcopt import _menu

    html, _ = site
    page = (html / "guides" / "porting.html").read_text(encoding="utf-8")
    for name in list(_menu.SUPPORTED) + list(_menu.UNSUPPORTED):
        assert f'<span class="pre">{name}</span>' in page, name


def _extension():
    """docs/_ext/funcopt_docs.py, the site's Sphinx extension."""
    reference("sphinx")
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        return importlib.import_module("funcopt_docs")
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))


def test_only_external_and_private_names_render_unlinked():
    funcopt_docs = _extension()
    plain = ["optax.GradientTransformation", "jax.Array", "torch.optim.AdamW", "int",
             "transformers.AdamW", "typing.Any", "funcopt._bnb32", "funcopt.torch._layouts.Layout"]
    linked = ["funcopt.adamw", "funcopt.not_a_name", "funcopt.torch.AdamW", "adamw", "Layout"]
    assert all(funcopt_docs.is_external(t) for t in plain)
    assert not any(funcopt_docs.is_external(t) for t in linked)  # these must resolve or warn
    node = {"refdomain": "py", "reftarget": "funcopt.not_a_name"}
    assert funcopt_docs.plain_external_names(None, None, node, "contnode") is None
    node = {"refdomain": "py", "reftarget": "optax.adamw"}
    assert funcopt_docs.plain_external_names(None, None, node, "contnode") == "contnode"


def test_example_headers_with_a_note_become_example_sections():
    funcopt_docs = _extension()
    lines = ["Text.", "", "Example (the reference ends at", "[0.4, 0.2]):", "  >>> 1 + 1", "  2"]
    funcopt_docs.example_notes(None, None, None, None, None, lines)
    assert lines == ["Text.", "", "Example:", "  the reference ends at [0.4, 0.2]:", "",
                     "  >>> 1 + 1", "  2"]
