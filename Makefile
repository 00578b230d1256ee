# The two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export GMP_DATA_DIR ?= $(CURDIR)/data

.PHONY: serve test lint bench compare install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/mail-proxy serve

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/run.py

# mail-proxy beside a raw aiosmtplib loop and Postfix; writes docs/benchmarks.md and .png
compare: $(STAMP)
	$(BIN)/pip install -q -e '.[test,dev,bench]'
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) build dist *.egg-info
