"""Executes the notebooks that must also run against transformers 5.x (``.venv5``), with
nbclient and kernel ``python3`` = this interpreter, as ``tests/test_notebooks.py`` does in
``.venv`` with 4.49.0. ``08_trainer_in_jax`` reproduces a Trainer run with
``funcopt.from_training_args``, which follows the 5.x Trainer: it must run against both."""

import pathlib

import nbformat
import pytest
from conftest import reference

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
CELL_TIMEOUT_S = 300

# notebook -> the reference libraries it needs
FIVE = {"08_trainer_in_jax.ipynb": ["torch", "transformers", "accelerate", "matplotlib"]}


@pytest.mark.parametrize("name", sorted(FIVE))
def test_notebook_runs_against_transformers5(name):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for module in FIVE[name]:
        reference(module)
    transformers = reference("transformers")
    assert transformers.__version__.startswith("5."), transformers.__version__
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{name} failed:\n{err}", pytrace=False)
    stdout = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.get("name") == "stdout")
    # The kernel is this interpreter: the notebook says it ran with this transformers.
    assert f"transformers {transformers.__version__}," in stdout, stdout[:500]
