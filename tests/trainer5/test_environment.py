"""The second reference environment holds exactly the pinned reference packages."""

import pathlib
import re
from importlib.metadata import version

import pytest

PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pins():
    text = PYPROJECT.read_text()
    block = text[text.index("trainer5 = ["):]
    block = block[:block.index("\n]")]
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', block))


@pytest.mark.parametrize("package", sorted(_pins()))
def test_reference_package_is_pinned_version(package):
    assert version(package) == _pins()[package]


def test_torch_is_the_cpu_build():
    import torch

    assert torch.__version__.startswith("2.13.0")
    assert not torch.cuda.is_available()
