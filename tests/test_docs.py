"""Every public name is documented with the math/behaviour and a runnable example, and every
example in funcopt's docstrings runs as a test."""

import doctest
import importlib
import inspect
import pkgutil

import pytest
from conftest import reference

import funcopt

BRIDGES = ["funcopt.torch", "funcopt.tensorflow"]


def modules():
    found = ["funcopt"]
    for info in pkgutil.walk_packages(funcopt.__path__, "funcopt."):
        found.append(info.name)
    return sorted(found)


def test_all_is_complete():
    """Everything importable from funcopt without an underscore is in __all__ and vice versa."""
    exported = {n for n in dir(funcopt) if not n.startswith("_")} - {"torch", "tensorflow"}
    assert exported == set(funcopt.__all__)


@pytest.mark.parametrize("name", funcopt.__all__)
def test_core_names_documented(name):
    check_documented(getattr(funcopt, name), name)


@pytest.mark.parametrize("module_name", BRIDGES)
def test_bridge_names_documented(module_name):
    reference("torch" if module_name.endswith("torch") else "tensorflow")
    module = importlib.import_module(module_name)
    assert module.__doc__ and module.__all__
    for name in module.__all__:
        check_documented(getattr(module, name), f"{module_name}.{name}")


def check_documented(obj, name):
    doc = inspect.getdoc(obj) or ""
    assert len(doc.split()) >= 8, f"{name} has no real docstring"
    assert ">>>" in doc, f"{name}'s docstring carries no example"


@pytest.mark.parametrize("module_name", modules())
def test_docstring_examples_run(module_name):
    if module_name.startswith("funcopt.torch"):
        reference("torch")
    if module_name.startswith("funcopt.tensorflow"):
        reference("tensorflow")
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    for test in finder.find(module, module_name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
