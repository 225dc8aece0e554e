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


def pytest_terminal_summary(terminalreporter):
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
