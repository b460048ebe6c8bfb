# coincide: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
# Notebooks call the `coincide` command (`!coincide ...`): the venv's comes first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TRANSFORMERS_OFFLINE := 1
# nbdev_test runs several notebooks in one worker process, so the test bed's portable kernels are set before any starts:
# coincide.testbed.portable.PORTABLE_ENV, or nothing on a CPU without AVX2 (read when a recipe runs, after setup)
PORTABLE = $(shell $(PY) -c "from coincide.testbed.portable import PORTABLE_ENV, portable_reason; print('' if portable_reason() else ' '.join(f'{k}={v}' for k, v in PORTABLE_ENV.items()))")

.PHONY: setup demo test test-slow check-sync nbtest pytest outputs readme clean

## setup: create .venv, install torch==2.13.0 (unless a torch is importable there), then the package with its test bed and dev tools, at the versions of constraints.txt
setup: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,testbed]"
	touch $@

## demo: the CPU demo on the bundled benchmark generator: a miniature of the paper's Table 1 in demo_out/
demo: setup
	$(BIN)/coincide demo --out demo_out

## check-sync: the CI checks of STYLE.md: nbdev_clean and nbdev_export must change nothing
check-sync: setup
	@state() { git status --porcelain; git diff; }; before=$$(state | md5sum); \
	$(BIN)/nbdev_clean; \
	if [ "$$(state | md5sum)" != "$$before" ]; then echo "nbdev_clean changed files: run nbdev_clean and commit"; git status --porcelain; exit 1; fi; \
	$(BIN)/nbdev_export; \
	if [ "$$(state | md5sum)" != "$$before" ]; then echo "nbdev_export changed files: notebooks and coincide/ are out of sync"; git status --porcelain; exit 1; fi; \
	echo "nbdev_clean and nbdev_export changed nothing"

# Tests run two notebooks at a time on 2 cores: one BLAS/torch thread each avoids oversubscription.
nbtest: setup
	OMP_NUM_THREADS=1 $(PORTABLE) $(BIN)/nbdev_test --n_workers 2

pytest: setup
	OMP_NUM_THREADS=1 $(BIN)/pytest tests/

## test: setup, sync checks, notebook tests, then pytest (its summary is the last line)
test: setup check-sync nbtest pytest

## test-slow: the long cases (flagged slow) as well
test-slow: setup
	OMP_NUM_THREADS=1 $(PORTABLE) $(BIN)/nbdev_test --n_workers 2 --flags slow
	OMP_NUM_THREADS=1 $(BIN)/pytest tests/ --runslow

## outputs: run the notebooks as nbdev_test does and store their outputs (NB=one notebook or folder; FLAGS="slow gpu" runs flagged cells too)
outputs: setup
	OMP_NUM_THREADS=1 $(PORTABLE) $(PY) tools/run_notebooks.py $(NB) --flags "$(FLAGS)"
	$(BIN)/nbdev_clean

## readme: write README.md from nbs/index.ipynb (tests check that they are in step)
readme: setup
	$(PY) tools/readme_from_index.py

clean:
	rm -rf $(VENV) *.egg-info
