# Thin wrappers: the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: setup sysdeps demo test bench lint clean

# The Cython core links libcrypto (OpenSSL 3 headers: Debian's libssl-dev), and the venv needs
# ensurepip (Debian's python3-venv for the system Python). Installed with apt when missing and
# we are root (CI is); otherwise say what is needed.
sysdeps:
	@missing=""; \
	[ -f /usr/include/openssl/evp.h ] || missing="$$missing libssl-dev"; \
	$(PYTHON) -c "import ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing system packages:$$missing (Debian/Ubuntu: apt-get install$$missing)"; exit 1; fi; \
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
