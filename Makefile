# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project first when needed.
PY := .venv/bin/python
STAMP := .venv/.installed
PRESET ?= tiny
RUN ?= demo

.PHONY: demo test test-fast smoke lab bench clean-run setup

$(STAMP): pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh
	touch $(STAMP)

setup: $(STAMP)

## Run the whole pipeline (notebooks 00-05) on the embedded tiny model.
demo: $(STAMP)
	$(PY) -m empathy_workbook run --preset $(PRESET) --run $(RUN)

## Unit tests, then the papermill smoke run of every notebook.
test: $(STAMP)
	$(PY) -m pytest -q

## Unit tests only (no notebook execution).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not smoke"

## JupyterLab on the project's virtual environment (installed by setup; its kernel is .venv's python3).
lab: $(STAMP)
	JUPYTER_PATH="$(CURDIR)/.venv/share/jupyter$${JUPYTER_PATH:+:$$JUPYTER_PATH}" $(PY) -m jupyter lab notebooks/

## Benchmarks (not tests): see bench/README.md.
bench: $(STAMP)
	$(PY) bench/run_all.py

clean-run:
	rm -rf artifacts/runs/$(RUN)
