# Thin wrappers: the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: setup sysdeps demo test bench bench-micro bench-deps lint clean

# The Cython core links libcrypto (OpenSSL 3 headers: Debian's libssl-dev), and the venv needs
# ensurepip (Debian's python3-venv for the system Python); the browser tests drive Debian's
# chromium through its chromedriver (tests/support/browser.py), and cluster mode's tests a real
# redis-server (tests/support/redis_server.py): they skip without them, except under CI.
# Installed with apt when missing and we are root (CI is); otherwise say what is needed (only
# the build's packages stop the setup).
sysdeps:
	@missing=""; testpkgs=""; \
	[ -f /usr/include/openssl/evp.h ] || missing="$$missing libssl-dev"; \
	$(PYTHON) -c "import ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	[ -x /usr/bin/chromium ] || testpkgs="$$testpkgs chromium"; \
	[ -x /usr/bin/chromedriver ] || testpkgs="$$testpkgs chromium-driver"; \
	[ -x /usr/bin/redis-server ] || testpkgs="$$testpkgs redis-server"; \
	if [ -n "$$missing$$testpkgs" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing $$testpkgs; \
	  else echo "missing system packages:$$missing$$testpkgs (Debian/Ubuntu: apt-get install$$missing$$testpkgs)"; \
	    [ -z "$$missing" ] || exit 1; fi; \
	fi

# Both extensions: _core, and the data plane _proxy that cimports it (fluxgate/_proxy.pxd).
$(VENV)/.installed: pyproject.toml setup.py fluxgate/_core.pyx fluxgate/_proxy.pyx \
		$(wildcard fluxgate/*.pxi fluxgate/*.pxd)
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

# Micro benchmarks and the end-to-end comparisons (results: bench/results/, untracked).
bench: setup
	$(PY) -m pytest bench/

# The micro benchmarks only: no wrk, HAProxy or nginx needed.
bench-micro: setup
	$(PY) -m pytest bench/ -m "not e2e"

# What the end-to-end benches need besides the venv: wrk (the load generator), HAProxy (the
# peer) and nginx (the fixed-response upstream); pytest-benchmark comes with the venv's [test]
# extra. bench/ never installs anything: this prints the lines, `make bench-deps RUN=1` runs them.
BENCH_APT = wrk haproxy nginx
bench-deps:
	@echo "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(BENCH_APT)"
	@echo "$(PY) -m pip install -e '.[test]'"
	@if [ "$(RUN)" = 1 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(BENCH_APT) && \
	  $(PY) -m pip install -q -e '.[test]'; \
	else echo "(printed only; 'make bench-deps RUN=1' runs them: apt needs root)"; fi

lint: setup
	$(VENV)/bin/ruff check fluxgate tests tools bench

clean:
	rm -rf build *.egg-info fluxgate/_core.c fluxgate/_core*.so fluxgate/_proxy.c fluxgate/_proxy*.so \
		$(VENV)/.installed
