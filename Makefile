# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The second reference environment: the transformers 5.x Trainer and its menu's packages.
VENV5 := .venv5
STAMP5 := $(VENV5)/.installed
# The documentation site's tools (the docs extra), on top of .venv's test extra.
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

$(STAMP5): pyproject.toml
	test -x $(VENV5)/bin/python || $(PYTHON) -m venv $(VENV5)
	$(VENV5)/bin/python -m pip install --upgrade pip
	$(VENV5)/bin/python -m pip install -e '.[trainer5]'
	touch $(STAMP5)

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -e '.[docs]'
	touch $(DOCS_STAMP)

demo: $(STAMP)
	$(BIN)/python -m funcopt_demo

lint: $(STAMP)
	$(BIN)/ruff check funcopt tests benchmarks funcopt_demo docs

# Both references: transformers 4.49.0 + TF in .venv, the 5.x Trainer's in .venv5.
test: $(STAMP) $(STAMP5) $(DOCS_STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -q
	$(VENV5)/bin/python -m pytest -n 2 --dist loadfile -q tests/trainer5

bench: $(STAMP)
	$(BIN)/python -m benchmarks --output benchmarks/results/update_step_25m.md \
		--torch-output benchmarks/results/torch_bridge.md --goals-output benchmarks/results/goals.md

# The documentation site, notebooks executed, into docs/_build/html (docs/README.md).
docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -W --keep-going -j auto -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(VENV5) .pytest_cache build *.egg-info docs/_build
