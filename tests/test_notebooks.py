"""Executes every notebook in ``notebooks/`` (nbclient, kernel ``python3`` = this interpreter)
and fails on the first cell that raises. Also checks they are committed without outputs."""

import pathlib

import nbformat
import pytest
from conftest import reference

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

# Reference libraries a notebook needs beyond funcopt's own dependencies.
NEEDS = {
    "02_schedules.ipynb": ["torch", "transformers"],
    "03_torch_bridge.ipynb": ["torch", "transformers"],
    "04_tensorflow_bridge.ipynb": ["tensorflow", "tf_keras", "transformers"],
    # also run against transformers 5.x by tests/trainer5/test_notebooks5.py
    "08_trainer_in_jax.ipynb": ["torch", "transformers", "accelerate"],
}


def test_there_are_notebooks():
    names = {p.name for p in PATHS}
    assert {"01_quickstart.ipynb", "02_schedules.ipynb", "03_torch_bridge.ipynb",
            "04_tensorflow_bridge.ipynb"} <= names, names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} cell {i} has outputs: clear them before committing "
                "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)"
            )


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_runs(path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for module in NEEDS.get(path.name, []):
        reference(module)
    nb = nbformat.read(path, as_version=4)
    # kernel_name="python3" is ipykernel's native kernel: jupyter_client starts it with this
    # interpreter (sys.executable), so the notebook sees the same environment as the tests.
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
