"""Sphinx extension for funcopt's site: the API pages from ``__all__``, the Trainer menu table
from ``funcopt._menu``, plain names for external objects, and a local MathJax.

* ``.. funcopt-api:: GROUP`` writes an autosummary table and one autodoc entry for every public
  name of that group, read from ``funcopt.__all__`` / ``funcopt.torch.__all__`` /
  ``funcopt.tensorflow.__all__`` at build time: a name added to ``__all__`` appears with no
  edit here. :func:`group_of` sorts ``funcopt``'s names by the module that defines them; a name
  from a module no rule knows lands in ``optimizers`` (most new modules are optimizers).
* ``.. funcopt-menu-table::`` renders the Trainer ``optim`` names of ``funcopt._menu.SUPPORTED``
  and ``UNSUPPORTED`` as two tables, so the porting guide stays what ``get_optimizer`` does.
* References to optax, JAX, NumPy, torch, transformers, TensorFlow and the Python standard
  library render as plain names: their inventories (intersphinx) are on the network, which the
  build machines do not reach, and a guessed link could be a broken one. Every other
  unresolved reference still warns (``nitpicky``), and the build treats warnings as errors.
* MathJax 3 is served from the build itself (the ``django-static-mathjax`` wheel ships it), so
  the maths renders offline.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pathlib
import re
import shutil

from sphinx.util.docutils import SphinxDirective

# --- API groups -----------------------------------------------------------------------------

GROUPS = {  # key -> the page api/<key>.rst that documents the group
    "optimizers": "Optimizers and their states",
    "trainer": "The Trainer front door",
    "schedules": "Learning-rate schedules",
    "gradients": "Gradient accumulation and clipping",
    "names": "Parameter names, masks and sharding",
    "torch": "funcopt.torch",
    "tensorflow": "funcopt.tensorflow",
}

# funcopt's private module (without "funcopt._"), by prefix -> group; first match wins.
_MODULE_RULES = [
    (("menu", "training_args"), "trainer"),
    (("lambda_schedules", "warmup_decay", "get_scheduler", "plateau", "greedy_lr",
      "schedules", "scheduler", "tf_schedules"), "schedules"),
    (("accumulation", "clipping", "keras_clipping"), "gradients"),
    (("names", "sharding"), "names"),
]

# The optimizers page in sections (in this order), by the library whose optimizer the module
# rebuilds; _SECTION_RULES match module prefixes in their own order (bitsandbytes' adamw_bnb
# before transformers' adamw); a module no rule knows lands in the last section.
_TRANSFORMERS, _TORCH, _BNB, _MORE = ("transformers' optimizers", "torch.optim's optimizers",
                                      "bitsandbytes' optimizers", "More of the Trainer's menu")
OPTIMIZER_SECTIONS = [_TRANSFORMERS, _TORCH, _BNB, _MORE]
_SECTION_RULES = [
    (("adamw_bnb", "lion", "ademamix", "fused_ademamix", "rmsprop_bnb", "rmsprop_8bit", "bnb"),
     _BNB),
    (("adam_torch", "sgd", "adagrad", "rmsprop"), _TORCH),
    (("adamw", "fused_adamw", "adafactor", "adam_weight_decay", "create_optimizer"),
     _TRANSFORMERS),
]

BRIDGES = {"torch": "funcopt.torch", "tensorflow": "funcopt.tensorflow"}


def public_names(package: str) -> list[str]:
    """``package.__all__``, in its order."""
    return list(importlib.import_module(package).__all__)


def _short_module(name: str) -> str:
    import funcopt

    module = getattr(getattr(funcopt, name), "__module__", None) or ""
    return module.removeprefix("funcopt.").removeprefix("_")


def group_of(name: str) -> str:
    """The API group of ``funcopt.<name>``: masks go with the names; the rest by the module
    that defines it, ``optimizers`` when no rule knows the module."""
    if name.endswith("_mask"):
        return "names"
    short = _short_module(name)
    for prefixes, group in _MODULE_RULES:
        if short.startswith(prefixes):
            return group
    return "optimizers"


def section_of(name: str) -> str:
    """The section of the optimizers page for ``funcopt.<name>``."""
    short = _short_module(name)
    for prefixes, title in _SECTION_RULES:
        if short.startswith(prefixes):
            return title
    return _MORE


def entries(group: str) -> list[str]:
    """The fully qualified public names documented on the page of ``group``."""
    if group in BRIDGES:
        package = BRIDGES[group]
        return [f"{package}.{name}" for name in public_names(package)]
    return [f"funcopt.{name}" for name in public_names("funcopt") if group_of(name) == group]


def _resolve(qualified: str):
    package, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(package), name)


def _autodoc_lines(qualified: str) -> list[str]:
    obj = _resolve(qualified)
    if inspect.isclass(obj):
        import enum

        if issubclass(obj, enum.Enum):
            return [f".. autoclass:: {qualified}", "   :members:", "   :undoc-members:", ""]
        if issubclass(obj, tuple):  # NamedTuple states: fields are in the docstring
            return [f".. autoclass:: {qualified}", ""]
        return [f".. autoclass:: {qualified}", "   :members:", ""]
    if callable(obj):
        return [f".. autofunction:: {qualified}", ""]
    return [f".. autodata:: {qualified}", "   :no-value:", ""]


def _summary_and_entries(package: str, names: list[str]) -> list[str]:
    lines = [".. autosummary::", "   :nosignatures:", ""]
    lines += [f"   {name.removeprefix(package + '.')}" for name in names] + [""]
    for name in names:
        lines += _autodoc_lines(name)
    return lines


def api_lines(group: str) -> list[str]:
    names = entries(group)
    if not names:
        return ["This build has no public names in this group.", ""]
    package = BRIDGES.get(group, "funcopt")  # summaries' short references resolve there
    lines = [f".. currentmodule:: {package}", ""]
    if group != "optimizers":
        return lines + _summary_and_entries(package, names)
    sections: dict[str, list[str]] = {}
    for name in names:
        sections.setdefault(section_of(name.removeprefix("funcopt.")), []).append(name)
    for title in OPTIMIZER_SECTIONS:
        if title in sections:
            lines += [title, "-" * len(title), ""]
            lines += _summary_and_entries(package, sections.pop(title))
    return lines


class ApiDirective(SphinxDirective):
    """``.. funcopt-api:: GROUP``: every public name of ``GROUP``, documented from its code."""

    required_arguments = 1

    def run(self):
        group = self.arguments[0]
        if group not in GROUPS:
            raise self.error(f"unknown funcopt-api group {group!r}; known: {sorted(GROUPS)}")
        root = pathlib.Path(importlib.import_module("funcopt").__file__).parent
        init = root / "__init__.py" if group not in BRIDGES else root / group / "__init__.py"
        self.env.note_dependency(str(init))  # a new name in __all__ rebuilds this page
        source = self.get_source_info()[0]
        self.state_machine.insert_input(api_lines(group), source)
        return []


# --- the Trainer's optim menu ---------------------------------------------------------------


def _function_cell(function: str) -> str:
    import funcopt

    if function in funcopt.__all__:
        return f":func:`funcopt.{function}`"
    return f"``funcopt.{function}`` :sup:`†`"


def menu_lines() -> list[str]:
    from funcopt import _menu

    lines = [".. list-table:: Supported ``optim`` names",
             "   :header-rows: 1", "   :widths: 22 30 36 12", "",
             "   * - ``optim``", "     - funcopt", "     - reference class the Trainer builds",
             "     - note"]
    missing = False
    for name, entry in _menu.SUPPORTED.items():
        cell = _function_cell(entry.function)
        missing |= cell.endswith("`†`")
        note = "paged = unpaged" if entry.note.startswith("paged_") else (entry.note or "")
        lines += [f"   * - ``{name}``", f"     - {cell}", f"     - ``{entry.reference}``",
                  f"     - {note}"]
    lines.append("")
    if missing:
        lines += ["† named by the menu but not exported by ``funcopt`` in this build, so "
                  "``get_optimizer`` raises for it.", ""]
    lines += [".. list-table:: ``optim`` names funcopt does not build, and why",
              "   :header-rows: 1", "   :widths: 30 70", "",
              "   * - ``optim``", "     - why"]
    for name, why in _menu.UNSUPPORTED.items():
        lines += [f"   * - ``{name}``", f"     - {why}"]
    return lines + [""]


class MenuTableDirective(SphinxDirective):
    """``.. funcopt-menu-table::``: ``funcopt._menu``'s SUPPORTED / UNSUPPORTED as tables."""

    def run(self):
        from funcopt import _menu

        self.env.note_dependency(_menu.__file__)
        self.state_machine.insert_input(menu_lines(), self.get_source_info()[0])
        return []


# --- the torch bridge's conversions ---------------------------------------------------------


def torch_pairs_lines() -> list[str]:
    """The state conversions of ``funcopt.torch``: its registry, plus torch's own AdamW."""
    from funcopt.torch import _registry

    lines = [".. list-table:: State conversions of ``funcopt.torch``", "   :header-rows: 1",
             "   :widths: 40 25 35", "",
             "   * - torch optimizer", "     - JAX transformation (state)",
             "     - torch per-parameter state keys"]
    for layout in _registry.LAYOUTS.values():
        torch_side = [f"``{r.module.split('.')[0]}.{r.name}``" for r in layout.references]
        torch_side.append(f"``funcopt.torch.Optimizer(..., {layout.name})``")
        function = layout.name.removeprefix("funcopt.")
        target = (f":func:`{layout.name}`" if function in _funcopt_all()
                  else f"``{layout.name}``")
        keys = ", ".join(f"``{k}``" for k in (("step",) if layout.step else ()) + layout.order)
        lines += [f"   * - {', '.join(torch_side)}",
                  f"     - {target} (``{layout.state_type.__name__}``)", f"     - {keys}"]
    lines += [""]
    return lines


def _funcopt_all() -> list[str]:
    import funcopt

    return list(funcopt.__all__)


class TorchPairsDirective(SphinxDirective):
    """``.. funcopt-torch-pairs::``: the optimizers ``funcopt.torch`` converts, as a table."""

    def run(self):
        from funcopt.torch import _registry

        self.env.note_dependency(_registry.__file__)
        self.state_machine.insert_input(torch_pairs_lines(), self.get_source_info()[0])
        return []


# --- external references as plain names -----------------------------------------------------

EXTERNAL_ROOTS = {
    "optax", "jax", "jaxlib", "numpy", "np", "jnp", "chex", "torch", "transformers",
    "tensorflow", "tf", "tf_keras", "keras", "bitsandbytes", "schedulefree", "galore_torch",
    "optimi", "grokadamw", "accelerate",
}
STDLIB_ROOTS = {"typing", "collections", "enum", "re", "dataclasses", "numbers", "types",
                "functools", "os", "pathlib", "abc"}


def is_external(target: str) -> bool:
    """True for a name whose documentation is not built here: another package's, or one of
    funcopt's private modules and classes (``funcopt._bnb32``, ``funcopt.torch._layouts.Layout``:
    implementation, named in docstrings and annotations but not part of the API)."""
    parts = target.lstrip("~.").split(".")
    if parts[0] in EXTERNAL_ROOTS or parts[0] in STDLIB_ROOTS:
        return True
    if parts[0] == "funcopt" and any(part.startswith("_") for part in parts[1:]):
        return True
    if len(parts) == 1 and parts[0].startswith("_"):  # a private base class, unqualified
        return True
    return "." not in target and hasattr(builtins, target)  # int, float, str, None, ...


def plain_external_names(app, env, node, contnode):
    """``missing-reference``: an external Python object becomes its plain name, no link."""
    if node.get("refdomain") == "py" and is_external(node.get("reftarget", "")):
        return contnode
    return None


# --- MathJax, offline -----------------------------------------------------------------------

MATHJAX_PARTS = ["tex-chtml.js", "input/tex/extensions", "output/chtml", "ui", "a11y"]


def mathjax_source() -> pathlib.Path:
    import mathjax  # django-static-mathjax: MathJax 3 in mathjax/static/mathjax/es5

    return pathlib.Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    source, target = mathjax_source(), pathlib.Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        src, dst = source / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


_EXAMPLE_NOTE = re.compile(r"^(\s*)(Examples?) \((.*)$")


def example_notes(app, what, name, obj, options, lines):
    """``autodoc-process-docstring`` (before napoleon): the docstrings' ``Example (note):``
    header, which may wrap over two lines, becomes napoleon's ``Example:`` section with the
    note as its first paragraph."""
    i = 0
    while i < len(lines):
        match = _EXAMPLE_NOTE.match(lines[i])
        end = next((j for j in range(i, min(i + 4, len(lines)))
                    if lines[j].rstrip().endswith("):")), None)
        if match is None or end is None or end + 1 >= len(lines):
            i += 1
            continue
        indent, header, first = match.groups()
        note = " ".join([first] + [line.strip() for line in lines[i + 1:end + 1]])
        body = lines[end + 1]
        inner = body[:len(body) - len(body.lstrip())] or indent + "  "
        note = note[:-2].rstrip()
        lines[i:end + 1] = [f"{indent}{header}:", f"{inner}{note}:", ""]
        i = end + 1
    return None


def skip_internal_members(app, what, name, obj, skip, options):
    """``autodoc-skip-member``: members whose docstring says ``Internal API`` stay out."""
    doc = inspect.getdoc(obj) or ""
    return True if doc.startswith("Internal API") else None


def setup(app):
    app.add_directive("funcopt-api", ApiDirective)
    app.add_directive("funcopt-menu-table", MenuTableDirective)
    app.add_directive("funcopt-torch-pairs", TorchPairsDirective)
    app.connect("missing-reference", plain_external_names)
    app.connect("autodoc-skip-member", skip_internal_members)
    app.connect("autodoc-process-docstring", example_notes, priority=400)
    app.connect("build-finished", copy_mathjax)
    mathjax_source()  # fail early, with the import error, if the docs extra is missing
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
