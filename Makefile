# One venv for everything. If python3 already imports torch (a CUDA build, say, system-wide or in
# an active virtualenv), the venv sees that torch through a .pth file naming its site-packages,
# and pip, finding the requirement met, leaves it alone. Otherwise torch==2.13.0 is installed
# (on the project's CPU machines that is the local CPU build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.triton_nsr-installed
HOST_TORCH_SITE := $(shell python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))" 2>/dev/null)

.PHONY: setup test bench report lint clean gpu gpu-plan

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	@if [ -n "$(HOST_TORCH_SITE)" ]; then \
		echo "using the installed torch in $(HOST_TORCH_SITE)"; \
		echo "$(HOST_TORCH_SITE)" > "$$($(PY) -c 'import site; print(site.getsitepackages()[0])')/host-torch.pth"; \
	else \
		$(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e ".[test,bench,dev]"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -n 2 -q

bench: setup
	$(PY) -m bench

# Re-render docs/performance.md and docs/images/ from the newest stored GPU and CPU runs
# (no measuring).
report: setup
	$(PY) -m bench report

# A short GPU lease (bench/lease.py): the priority-ordered steps within BUDGET seconds, every
# measurement stored in OUT as it happens. Runs with the machine's own python3 (torch, triton),
# no venv, no network: `make gpu OUT=$OUT`, or without make:
#   PYTHONPATH=. python3 -m bench lease --budget-s 480 --output-dir "$OUT"
OUT ?= bench/results/lease
BUDGET ?= 480
gpu:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} python3 -m bench lease --budget-s $(BUDGET) --output-dir $(OUT)

# The lease's plan on any machine: steps, cases, expected compiles, seconds against BUDGET.
gpu-plan:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} python3 -m bench lease --budget-s $(BUDGET) --dry-run

lint: setup
	$(VENV)/bin/ruff check triton_nsr bench tests examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
