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

# One pytest-xdist worker per core, each test file in one worker (its module fixtures are built once); the
# workers split the cores' threads between them (tests/conftest.py). `make test TEST_WORKERS=` runs serially.
TEST_WORKERS ?= -n auto --dist loadfile

.PHONY: demo test test-all lint clean-demo

# req-scale.txt (Ray, submitit) is optional for users; the tests of those backends need it. The package itself is
# an editable install, so `from bayestda import load_checkpoint` works from any directory with the venv's python.
$(VENV)/.installed: req.txt req-scale.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r req.txt -r req-scale.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(OFFLINE_DATA)/.ready: $(VENV)/.installed
	mkdir -p $(OFFLINE_DATA)
	ln -sfn $(abspath $(SHARED)/MNIST) $(OFFLINE_DATA)/MNIST
	$(PY) $(SHARED)/build_cifar10.py $(OFFLINE_DATA)
	touch $@

# Main job, small default: the whole experiment cnn_mnist3_10pc with all 10 seeds and the paper's five methods
# (training, TDA scores, p-values, correlations) through run_experiment.py; finished tasks are skipped on rerun.
demo: $(VENV)/.installed $(DATA_DEPS)
	$(PY) run_experiment.py --model cnn --task mnist3 --num_per_class 10

# req-test.txt: the reference libraries the tests cross-check against (dattri, kronfluence, traker); test-only.
$(VENV)/.test-installed: req-test.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r req-test.txt
	touch $@

# `make test` leaves out the tests marked slow (more end-to-end runs of the same scripts, the Ray backend);
# `make test-all` runs them too.
test: $(VENV)/.installed $(VENV)/.test-installed $(DATA_DEPS)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow" $(TEST_WORKERS)

test-all: $(VENV)/.installed $(VENV)/.test-installed $(DATA_DEPS)
	$(PY) -m ruff check .
	$(PY) -m pytest $(TEST_WORKERS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
