# Thin wrappers: the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: setup sysdeps demo test bench lint clean

# The Cython core links libcrypto (OpenSSL 3 headers: Debian's libssl-dev). Installed with
# apt when missing and we are root (CI is); otherwise say what is needed.
sysdeps:
	@if [ ! -f /usr/include/openssl/evp.h ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev; \
	  else echo "OpenSSL 3 development headers are needed (Debian/Ubuntu: apt-get install libssl-dev)"; exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml setup.py fluxgate/_core.pyx $(wildcard fluxgate/*.pxi fluxgate/*.pxd)
	$(MAKE) sysdeps
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
	rm -rf build *.egg-info fluxgate/_core.c fluxgate/_core*.so $(VENV)/.installed
