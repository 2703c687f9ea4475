# One venv for everything. If python3 already imports torch (a CUDA build, say, system-wide or in
# an active virtualenv), the venv sees that torch through a .pth file naming its site-packages,
# and pip, finding the requirement met, leaves it alone. Otherwise pip installs torch==2.13.0 from
# the indexes it is configured with: from PyPI on Linux x86_64 that is the CUDA build; for a CPU
# build, install torch from https://download.pytorch.org/whl/cpu first (see README, Install).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.triton_nsr-installed
HOST_TORCH_SITE := $(shell python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))" 2>/dev/null)

.PHONY: setup test test-quick bench report lint clean gpu gpu-plan

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

# The whole suite, as CI runs it; pytest prints the 15 slowest tests (addopts in pyproject.toml).
test: setup
	$(PY) -m pytest -n 2 -q

# The edit loop: the suite without the tests marked slow.
test-quick: setup
	$(PY) -m pytest -n 2 -q -m "not slow"

bench: setup
	$(PY) -m bench

# Re-render docs/performance.md, docs/images/ and the README speed table from the newest
# committed GPU and CPU runs
# (no measuring).
report: setup
	$(PY) -m bench report

# A short GPU lease (bench/gpu/lease.py): the priority-ordered steps within BUDGET seconds, every
# measurement stored in OUT as it happens, then the kernel-by-kernel diagnosis
# (bench/gpu/diagnose.py) within DIAGNOSE_BUDGET seconds, the kernel gradient's ranked
# candidates timed against today's launch (bench/gpu/candidates.py) within CANDIDATES_BUDGET and
# the layer probed launcher by launcher (bench/gpu/layer_probe.py) within PROBE_BUDGET: 525 s in
# all, in a 600 s command. The kernels Triton's JIT compiled meanwhile are
# kept in OUT/jit_kernels.tar.xz (bench/gpu/jit_log.py; read it back with python -m
# bench.gpu.jit_compare). Runs with the machine's own python3 (torch, triton), no venv, no network:
# `make gpu OUT=$OUT`, or without make (BENCH_JIT_LOG=DIR to keep the compiles):
#   PYTHONPATH=. python3 -m bench lease --budget-s 360 --output-dir "$OUT"
#   PYTHONPATH=. python3 -m bench.gpu.diagnose --budget-s 40 --output-dir "$OUT"
#   PYTHONPATH=. python3 -m bench.gpu.candidates --budget-s 60 --output-dir "$OUT"
#   PYTHONPATH=. python3 -m bench.gpu.layer_probe --budget-s 65 --output-dir "$OUT"
# (bench/gpu/splits.py, the split sweep the candidates' model is fitted to, runs by hand.)
OUT ?= bench/results/lease
BUDGET ?= 360
DIAGNOSE_BUDGET ?= 40
CANDIDATES_BUDGET ?= 60
PROBE_BUDGET ?= 65
gpu:
	export BENCH_JIT_LOG=$(abspath $(OUT))/jit; rm -rf $(OUT)/jit; \
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} python3 -m bench lease --budget-s $(BUDGET) --output-dir $(OUT); \
	status=$$?; \
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} python3 -m bench.gpu.diagnose --budget-s $(DIAGNOSE_BUDGET) --output-dir $(OUT); \
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} python3 -m bench.gpu.candidates --budget-s $(CANDIDATES_BUDGET) --output-dir $(OUT); \
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} python3 -m bench.gpu.layer_probe --budget-s $(PROBE_BUDGET) --output-dir $(OUT); \
	if [ -d $(OUT)/jit ]; then \
		if command -v xz >/dev/null; then XZ_OPT=-T0 tar -cJf $(OUT)/jit_kernels.tar.xz -C $(OUT) jit; \
		else tar -czf $(OUT)/jit_kernels.tar.gz -C $(OUT) jit; fi && rm -rf $(OUT)/jit; fi; \
	exit $$status

# The lease's plan on any machine: steps, cases, expected compiles, seconds against BUDGET.
gpu-plan:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} python3 -m bench lease --budget-s $(BUDGET) --dry-run

lint: setup
	$(VENV)/bin/ruff check triton_nsr bench tests examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
