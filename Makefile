# One-command set-up: every target that runs code first makes sure .venv exists and holds the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo bench clean

install: $(STAMP)

# torch 2.14.1 and torchvision 0.29.1 are pinned together: timm imports torchvision, and these two
# builds are the pair that imports cleanly on these machines (README, "Set-up and first run").
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP)
	$(PY) -m pytest -q

# A short ALISTA-16 training run, then its report against ISTA and FISTA (2,000 iterations).
demo: $(STAMP)
	rm -rf outputs/demo
	$(PY) train.py experiment=demo hydra.run.dir=outputs/demo/train
	$(PY) compare.py runs=[outputs/demo/train] max_iter=2000 val_size=128 reg_grid.num=6 hydra.run.dir=outputs/demo/report

# The peers of bench.lasso_vs_sklearn (celer, skglm) are the optional extra "bench".
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m bench

clean:
	rm -rf $(VENV) outputs/demo multirun .pytest_cache
