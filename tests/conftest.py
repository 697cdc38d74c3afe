"""Shared test fixtures: golden values and the reference libraries.

In CI (``CI`` or ``FUNCOPT_REQUIRE_REFERENCE`` set) a missing reference library is an error,
never a skip: a skipped parity test is a failed one.
"""

import importlib
import json
import os
import pathlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

GOLDEN = pathlib.Path(__file__).parent / "golden"
STRICT = bool(os.environ.get("CI") or os.environ.get("FUNCOPT_REQUIRE_REFERENCE"))


def _transformers_major() -> str | None:
    try:
        from importlib.metadata import version

        return version("transformers").split(".")[0]
    except Exception:
        return None


# Two reference environments (see Makefile): tests/trainer5/ runs against transformers 5.x in
# .venv5, everything else against 4.49.0 in .venv. Each run collects only its own tests.
collect_ignore = ["trainer5"] if _transformers_major() != "5" else []
collect_ignore_glob = ["test_*.py"] if _transformers_major() == "5" else []


def golden(name: str) -> dict:
    """``golden_pt`` / ``golden_tf``: values produced by running transformers 4.49.0."""
    return json.loads((GOLDEN / f"{name}.json").read_text())


def reference(module: str):
    """Imports a reference library (torch, transformers, tensorflow, ...) or skips the test
    locally; in CI a missing one fails the test."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if STRICT:
            pytest.fail(f"reference library {module!r} is required here: {err}")
        pytest.skip(f"{module} is not installed", allow_module_level=True)


@pytest.fixture(scope="session")
def golden_pt():
    return golden("golden_pt")


@pytest.fixture(scope="session")
def golden_tf():
    return golden("golden_tf")
