# Thin wrappers: the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: setup demo test bench lint clean

$(VENV)/.installed: pyproject.toml setup.py fluxgate/_core.pyx $(wildcard fluxgate/*.pxi fluxgate/*.pxd)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/fluxgate demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pytest bench/

lint: setup
	$(VENV)/bin/ruff check fluxgate tests tools bench

clean:
	rm -rf build *.egg-info fluxgate/_core.c fluxgate/_core*.so
