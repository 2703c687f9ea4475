# One venv for everything. If the system python already has torch (e.g. a CUDA build), the venv
# sees it through --system-site-packages and pip leaves it alone; otherwise torch==2.13.0 is
# installed (on the project's CPU machines that is the local CPU build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.triton_nsr-installed

.PHONY: setup test bench report lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if python3 -c "import torch" 2>/dev/null; then \
		echo "using the system torch: $$(python3 -c 'import torch; print(torch.__version__)')"; \
		python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && \
		$(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e ".[test,bench,dev]"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -n 2 -q

bench: setup
	$(PY) -m bench

# Re-render docs/performance.md and docs/images/ from the newest stored GPU run (no measuring).
report: setup
	$(PY) -m bench report

lint: setup
	$(VENV)/bin/ruff check triton_nsr bench tests examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
