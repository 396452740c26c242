# medmoe set-up: `make demo` runs the main job, `make test` runs the test suite.
# Both create ./.venv on first use and install everything the project needs into it.
#
# torch: when the venv has no importable torch, TORCH_SPEC is installed first. On these machines
# `torch==2.13.0` resolves to a local CPU wheel. Elsewhere, pick your build, e.g.
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# or pre-install any torch >= 2.4 into .venv yourself: it is kept as it is.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
EXTRAS ?= dev,parity,mil,seg,wsi,docs
PIP := $(PY) -m pip --disable-pip-version-check --no-input

.PHONY: install demo test test-slow lint docs bench doctor clean

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PIP) install -e ".[$(EXTRAS)]"
	@# lin-mil (Lin-MIL parity tests) declares torchvision, which would pull a CUDA torch: no deps.
	@# medmnist (its Evaluator is the reference for our ACC/AUC) declares torchvision as well: no deps.
	$(PIP) install --no-deps "lin-mil==1.0.1" "medmnist==3.0.2"
	@# Headless Chromium renders `medmoe report` pages in a test. Best effort: installed with apt when
	@# we are root, otherwise that one test is skipped with its reason.
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } \
	  || echo "chromium not installed: the report rendering test will be skipped"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/medmoe demo

test: install
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/bench_mammoth.py
	$(PY) benchmarks/bench_soft_moe.py
	$(PY) benchmarks/bench_linmil.py
	$(PY) benchmarks/bench_mil_zoo.py --quick
	$(PY) benchmarks/bench_dropout.py --reps 3
	$(PY) benchmarks/bench_depthwise_conv.py --reps 3
	$(PY) benchmarks/bench_expert_epilogue.py --reps 3
	$(PY) benchmarks/bench_pinv.py --reps 3
	$(PY) benchmarks/bench_dropout_attention.py --reps 2
	$(PY) benchmarks/bench_mosaic_step.py --reps 3

# The documentation site (mkdocs.yml, docs/) into ./site, warnings as errors; part of `make test`.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

doctor: install
	$(VENV)/bin/medmoe doctor

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache
