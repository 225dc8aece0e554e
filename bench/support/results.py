"""The e2e tables (terminal and Markdown) and the results files.

Results never go to a tracked file: by default each e2e bench writes ``bench/results/<name>.md``
(git-ignored, newest run first) and the session's summary ``bench/results/summary.md``;
``FLUXGATE_BENCH_RESULTS=<path>`` puts every section of the session into that one file
instead. bench/RESULTS.md holds the history up to that change and is edited by hand.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from . import cpu
from .measure import SLICES, Measurement

RESULTS_ENV = "FLUXGATE_BENCH_RESULTS"
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def results_path(name: str) -> Path:
    """Where the section ``name`` goes: ``$FLUXGATE_BENCH_RESULTS`` when set (one file for the
    whole session), else bench/results/<name>.md."""
    chosen = os.environ.get(RESULTS_ENV)
    path = Path(chosen) if chosen else RESULTS_DIR / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

BEGIN = "<!-- e2e-runs:begin (written by bench/bench_e2e.py; newest first) -->"
END = "<!-- e2e-runs:end -->"
KEEP_RUNS = 6


def _per_core(m: Measurement) -> str:
    value = m.rps_per_proxy_core
    return "-" if value is None else f"{value:,.0f}"


def table(rows: list[Measurement]) -> list[str]:
    """Markdown table lines, one row per target."""
    out = [
        "| target | req/s | p50 µs | p99 µs | errors | non-200 | proxy CPU (cores) "
        "| req/s per proxy core | others' CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        proxy_cpu = "-" if m.target == "direct" else f"{m.proxy_cores:.2f}"
        out.append(
            f"| {m.target} | {m.rps:,.0f} | {m.p50_us:,} | {m.p99_us:,} | {m.error_count} "
            f"| {m.non_200} | {proxy_cpu} | {_per_core(m)} | {m.others_cores:.2f} |"
        )
    return out


def command(config: Any) -> str:
    """The pytest command line of this run (``config``: the pytest.Config), as typed from
    the repository root."""
    python = os.path.relpath(sys.executable, config.rootpath)
    if python.startswith(".."):
        python = sys.executable
    return shlex.join([python, "-m", "pytest", *config.invocation_params.args])


def update_results(path: Path, run_text: str, header: str, *, begin: str = BEGIN,
                   end: str = END, keep: int = KEEP_RUNS) -> None:
    """Insert ``run_text`` as the newest run of the section between the ``begin`` and
    ``end`` markers (created under ``header`` when missing), keep the last ``keep`` runs."""
    text = path.read_text() if path.exists() else "# FluxGate benchmark results\n"
    if begin not in text:
        text = text.rstrip("\n") + "\n\n" + header.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    before, rest = text.split(begin, 1)
    runs_text, after = rest.split(end, 1)
    runs = [r for r in re.split(r"(?m)^(?=### Run )", runs_text.strip("\n")) if r.strip()]
    runs = [run_text.strip("\n") + "\n"] + [r.rstrip("\n") + "\n" for r in runs]
    body = "\n".join(runs[:keep])
    path.write_text(f"{before}{begin}\n{body}{end}{after}")


def _run_head(config: Any, facts: dict[str, str], versions: list[str]) -> list[str]:
    """The first lines of a run's section: when, the command, the machine, the software."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"### Run {now}",
        "",
        f"- command: `{command(config)}` (from the repository root)",
        f"- machine: nproc {facts['nproc']} ({facts['cpu_count']} CPUs), {facts['model']}, "
        f"Linux {facts['kernel']}",
        f"- software: Python {platform.python_version()}; {'; '.join(versions)}",
    ]


def run_text(
    config: Any, *, versions: list[str], plan: str, connections: int, warmup: float,
    seconds: float, rows: dict[str, Measurement], notes: list[str], load: str = "",
) -> str:
    """One e2e run as a RESULTS.md section: what ran where (the command from ``config``, the
    pytest.Config; the machine; the peers' ``versions``; the load), the table of ``rows``
    and the ``notes`` (ratios, targets), each a "- " line. ``load`` adds to the load line."""
    lines = [
        *_run_head(config, cpu.machine_facts(), versions),
        f"- load: closed loop, {connections} connections, 1 loadgen process, {warmup:g} s "
        f"warm-up then {SLICES} × {seconds / SLICES:g} s interleaved per target; {plan}{load}",
        "",
        *table(list(rows.values())),
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)


# ---- paired rounds (bench.support.rounds) -------------------------------------------------


def _n(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def comparison_lines(cmp: Any) -> list[str]:
    """One comparison (a ``rounds.Comparison``) as Markdown: a row per side with the medians
    over rounds, the per-round ratios, the flags."""
    out = [
        f"#### {cmp.name}: {cmp.ours.label} {cmp.ours.path} vs {cmp.peer.label} {cmp.peer.path}",
        "",
        "| side | req/s | p50 µs | p99 µs | proxy CPU (cores) | req/s per proxy core "
        "| wrk CPU (cores, peak) | wrk read() calls per request (peak) | client CPU busy (peak) "
        "| others on client CPU (peak) | others on proxy CPU (peak) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for which, side in ((0, cmp.ours), (1, cmp.peer)):
        runs = [r[which] for r in cmp.rounds]

        def med(value, runs=runs, which=which):
            return cmp.side_median(which, value)

        def peak(value, runs=runs):
            values = [value(s) for s in runs if value(s) is not None]
            return max(values) if values else None

        out.append(
            f"| {side.label} | {_n(med(lambda s: s.rps))} | {_n(med(lambda s: s.p50_us))} "
            f"| {_n(med(lambda s: s.p99_us))} | {_n(med(lambda s: s.proxy_cores), '.2f')} "
            f"| {_n(med(lambda s: s.per_core))} | {_n(peak(lambda s: s.generator_cores), '.2f')} "
            f"| {_n(peak(lambda s: s.generator_reads_per_request), ',.1f')} "
            f"| {_n(peak(lambda s: s.client_busy), '.2f')} "
            f"| {_n(peak(lambda s: s.others_on_client_cpu), '.2f')} "
            f"| {_n(peak(lambda s: s.others_on_proxy_cpu), '.2f')} |"
        )
    rounds = ", ".join(f"{r:.2f}" for r in cmp.per_core_ratios)
    out += [
        "",
        f"- per proxy core, {cmp.ours.label}/{cmp.peer.label}: median {_x(cmp.per_core_ratio)} "
        f"of rounds [{rounds}]",
        f"- req/s: median {_x(cmp.rps_ratio)}; p99: median {_x(cmp.p99_ratio)} "
        f"(of per-round ratios)",
    ]
    if cmp.goal is not None:
        goal = f">= {cmp.goal.per_core:g}x per core"
        if cmp.goal.p99 is not None:
            goal += f", p99 <= {cmp.goal.p99:g}x"
        out.append(f"- goal {goal}: **{cmp.verdict()}**")
    polling = cmp.polling_runs
    if polling:
        peak = max(s.generator_reads_per_request for s in polling)
        out.append(f"- wrk busy-polled in {len(polling)} run(s) (up to {peak:,.0f} read() calls "
                   "per request): its CPU and the client CPU's fill what is spare, whatever its "
                   "work; the flags come from the proxy's CPU (bench/support/rounds.py)")
    out += [f"- ⚑ {flag}" for flag in cmp.flags()]
    out += [f"- {note}" for note in cmp.notes]
    return out + [""]


def direct_line(sample: Any, upstream: str) -> str:
    """The client side's ceiling: wrk straight to the upstream."""
    busy = "" if sample.client_busy is None else (
        f", client CPU busy {sample.client_busy:.2f} (others {sample.others_on_client_cpu:.2f})")
    return (f"client side alone (wrk → {upstream}, no proxy): {sample.rps:,.0f} req/s, "
            f"p99 {sample.p99_us:,} µs, wrk CPU {sample.generator_cores:.2f} cores{busy}")


def rounds_run_text(config: Any, *, versions: list[str], plan: str, upstream: str,
                    comparisons: list[Any], notes: list[str], facts: dict[str, str]) -> str:
    """One run of paired comparisons as a results section (newest-first runs under a header);
    ``facts``: ``cpu.machine_facts()`` read before this process was pinned."""
    from .rounds import CONNECTIONS, ROUND_SECONDS, ROUNDS, WARMUP_SECONDS

    lines = [
        *_run_head(config, facts, versions),
        f"- load: wrk, 1 thread, {CONNECTIONS} connections, closed loop; per comparison a "
        f"{WARMUP_SECONDS} s warm-up per side, then {ROUNDS} rounds of {ROUND_SECONDS} s per side "
        f"(A B, B A, …); {plan}; upstream: {upstream}",
        *(f"- {note}" for note in notes),
        "",
    ]
    for cmp in comparisons:
        lines += comparison_lines(cmp)
    return "\n".join(lines)


def summary_lines(comparisons: list[Any], checks: list[Any] = ()) -> list[str]:
    """The table of every goal: the ratios to HAProxy (``rounds.Comparison``), then the goals
    that are not ratios (``rounds.Check``), each measured in this session (met / missed, with
    the figures and flags) or not."""
    from .rounds import CHECK_GOALS, GOALS, TLS_GOALS

    by_name = {c.name: c for c in comparisons}
    out = [
        "| comparison | FluxGate req/s per core | HAProxy req/s per core | per-core ratio "
        "| goal | FluxGate req/s | HAProxy req/s | FluxGate p99 µs | HAProxy p99 µs "
        "| p99 ratio | wrk CPU peak | result |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    named = [g.name for g in GOALS + TLS_GOALS]
    extra = [c.name for c in comparisons if c.name not in named]
    for name in named + extra:
        cmp = by_name.get(name)
        goal = next((g for g in GOALS + TLS_GOALS if g.name == name), None)
        goal_text = "-" if goal is None else f">= {goal.per_core:g}x" + (
            f", p99 <= {goal.p99:g}x" if goal.p99 is not None else "")
        if cmp is None:
            how = f" (`pytest bench/ -k {goal.bench}`)" if goal and goal.bench else ""
            out.append(f"| {name} | | | | {goal_text} | | | | | | | not measured in this run{how} |")
            continue
        result = cmp.verdict() if goal is not None else "(no goal)"
        if cmp.flags():
            result += " ⚑"
        out.append(
            f"| {name} | {_n(cmp.side_median(0, lambda s: s.per_core))} "
            f"| {_n(cmp.side_median(1, lambda s: s.per_core))} | {_x(cmp.per_core_ratio)} "
            f"| {goal_text} | {_n(cmp.side_median(0, lambda s: s.rps))} "
            f"| {_n(cmp.side_median(1, lambda s: s.rps))} "
            f"| {_n(cmp.side_median(0, lambda s: s.p99_us))} "
            f"| {_n(cmp.side_median(1, lambda s: s.p99_us))} | {_x(cmp.p99_ratio)} "
            f"| {cmp.generator_peak:.2f}{' (polls)' if cmp.generator_polls else ''} | {result} |"
        )
    by_check = {c.name: c for c in checks}
    for goal in CHECK_GOALS:
        check = by_check.get(goal.name)
        if check is None:
            result = f"not measured in this run (`pytest bench/ -k {goal.bench}`)"
        else:
            result = f"{check.verdict()}{' ⚑' if check.flags else ''}: {check.detail}"
        out.append(f"| {goal.name} | | | | {goal.goal} | | | | | | | {result} |")
    out += [
        "",
        "Ratios are medians of per-round ratios (FluxGate ÷ HAProxy); req/s and p99 are medians "
        "over rounds. ⚑: see the comparison's flags (generator or client CPU saturated, others "
        "on the proxy's CPU). (polls): wrk busy-polls that load, its CPU is no measure of its "
        "work; the flags there come from the proxy's CPU.",
    ]
    return out
