# Two commands on a fresh machine: `make demo` (the main job on a small default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED := ../shared/datasets
OFFLINE_DATA := .cache/datasets

# Without BAYESTDA_DATA_ROOT, use the offline copies beside the checkout when they exist
# (MNIST as shipped, CIFAR-10 built once into .cache), else ./data with torchvision downloads.
ifeq ($(BAYESTDA_DATA_ROOT),)
ifneq ($(wildcard $(SHARED)/MNIST/raw),)
export BAYESTDA_DATA_ROOT := $(abspath $(OFFLINE_DATA))
DATA_DEPS := $(OFFLINE_DATA)/.ready
endif
endif

.PHONY: demo test lint clean-demo

$(VENV)/.installed: req.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r req.txt
	touch $@

$(OFFLINE_DATA)/.ready: $(VENV)/.installed
	mkdir -p $(OFFLINE_DATA)
	ln -sfn $(abspath $(SHARED)/MNIST) $(OFFLINE_DATA)/MNIST
	$(PY) $(SHARED)/build_cifar10.py $(OFFLINE_DATA)
	touch $@

# Main job, small default: the whole pipeline on MNIST3-10pc with all 10 seeds and the paper's five methods
# (subsets checked against the committed ones, training, TDA scores, p-values, correlations): ~11 min on 2 cores.
DEMO := --task mnist3 --num_per_class 10
demo: $(VENV)/.installed $(DATA_DEPS)
	$(PY) make_subsets.py --task mnist3
	$(PY) train_cnn.py $(DEMO)
	$(PY) tda_cnn_scripts/gd.py $(DEMO)
	$(PY) tda_cnn_scripts/gc.py $(DEMO)
	$(PY) tda_cnn_scripts/ats.py $(DEMO)
	$(PY) tda_cnn_scripts/if.py $(DEMO) --solver paper
	$(PY) tda_cnn_scripts/loo.py $(DEMO) --protocol paper
	$(PY) compute_pvalues.py --model cnn $(DEMO)
	$(PY) compute_correlations.py --model cnn $(DEMO)

test: $(VENV)/.installed $(DATA_DEPS)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
