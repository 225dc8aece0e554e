"""Peer comparison for pytest-benchmark runs: ``pytest bench/``.

Benchmarks in one ``@pytest.mark.benchmark(group=...)`` call ``record_impl("fluxgate")`` or
``record_impl("<peer>")`` after timing; the terminal summary prints each peer's median over
fluxgate's as a ratio (> 1 means fluxgate is faster). bench_*.py files are collected because
pyproject.toml sets ``python_files = ["test_*.py", "bench_*.py"]``.
"""

from __future__ import annotations

import pytest

_MEDIANS: dict[str, dict[str, float]] = {}


@pytest.fixture
def record_impl(benchmark):
    def record(impl: str) -> None:
        if benchmark.stats is not None:  # None under --benchmark-disable
            _MEDIANS.setdefault(benchmark.group or "", {})[impl] = benchmark.stats.stats.median

    return record


_PAIRED: list[str] = []


@pytest.fixture
def record_paired():
    """Lines for the summary from benchmarks that time implementations in alternation."""
    return _PAIRED.append


def pytest_terminal_summary(terminalreporter):
    if _PAIRED:
        terminalreporter.section("paired ratios (implementations timed in alternation)")
        for line in _PAIRED:
            terminalreporter.write_line(line)
    if not _MEDIANS:
        return
    terminalreporter.section("median time ratios: peer / fluxgate (> 1: fluxgate faster)")
    for group, medians in sorted(_MEDIANS.items()):
        ours = medians.get("fluxgate")
        for impl, median in sorted(medians.items()):
            if impl != "fluxgate" and ours:
                terminalreporter.write_line(
                    f"{group}: {impl} {median * 1e9:,.0f} ns / fluxgate {ours * 1e9:,.0f} ns"
                    f" = {median / ours:.1f}x"
                )


# ---- end-to-end runs (bench_e2e*.py, bench_keys.py) -------------------------------------
# The repository root goes on sys.path so bench files can import tools.loadgen, bench.support
# and tests.support however pytest is started (``pytest bench/`` puts only bench/ there).

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

_E2E_RUNS: list[str] = []
_COMPARISONS: list = []  # bench.support.rounds.Comparison, in the order they ran
_CHECKS: list = []  # bench.support.rounds.Check: goals that are not ratios (memory)


class _E2ESummary:
    """Prints the e2e tables after pytest-benchmark's own (whose time for them is moot), and
    last of all the goals table, which also goes to the results file."""

    def pytest_terminal_summary(self, terminalreporter):
        if _E2E_RUNS:
            terminalreporter.section("end-to-end runs (also in bench/results/, untracked)")
            for text in _E2E_RUNS:
                for line in text.splitlines():
                    terminalreporter.write_line(line)
        if _COMPARISONS or _CHECKS:
            from bench.support.results import results_path, summary_lines, update_results

            lines = summary_lines(_COMPARISONS, _CHECKS)
            terminalreporter.section("summary: FluxGate vs HAProxy per proxy core (goals)")
            for line in lines:
                terminalreporter.write_line(line)
            path = results_path("summary")
            text = "### Run " + _now() + "\n\n" + "\n".join(lines) + "\n"
            update_results(path, text, "## Summary: FluxGate vs HAProxy per proxy core",
                           begin="<!-- summary-runs:begin (bench/conftest.py; newest first) -->",
                           end="<!-- summary-runs:end -->", keep=10)
            terminalreporter.write_line(f"(summary written to {path})")


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end load runs; skip with -m 'not e2e'")
    if not config.pluginmanager.has_plugin("fluxgate-bench-e2e-summary"):
        config.pluginmanager.register(_E2ESummary(), "fluxgate-bench-e2e-summary")


@pytest.fixture
def e2e_summary():
    return _E2E_RUNS.append


@pytest.fixture
def e2e_comparisons():
    """Record a finished ``Comparison`` for the goals table at the end of the session."""
    return _COMPARISONS.append


@pytest.fixture
def e2e_checks():
    """Record a finished ``Check`` (a goal that is not a ratio) for the goals table."""
    return _CHECKS.append
