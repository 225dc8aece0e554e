"""The e2e table (terminal and Markdown) and the update of bench/RESULTS.md."""

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


def ratios(rows: dict[str, Measurement]) -> list[str]:
    """FluxGate over each peer (and over direct), raw req/s and req/s per proxy core."""
    ours = rows.get("fluxgate")
    if ours is None:
        return []
    out = []
    for name in ("haproxy", "nginx"):
        peer = rows.get(name)
        if peer is None:
            continue
        line = f"fluxgate/{name}: req/s {ours.rps / peer.rps:.2f}x"
        if ours.rps_per_proxy_core and peer.rps_per_proxy_core:
            line += f", req/s per proxy core {ours.rps_per_proxy_core / peer.rps_per_proxy_core:.2f}x"
        out.append(line)
    if "direct" in rows:
        out.append(f"fluxgate/direct: req/s {ours.rps / rows['direct'].rps:.2f}x")
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


def run_text(
    config: Any, *, versions: list[str], plan: str, connections: int, warmup: float,
    seconds: float, rows: dict[str, Measurement], notes: list[str], load: str = "",
) -> str:
    """One e2e run as a RESULTS.md section: what ran where (the command from ``config``, the
    pytest.Config; the machine; the peers' ``versions``; the load), the table of ``rows``
    and the ``notes`` (ratios, targets), each a "- " line. ``load`` adds to the load line."""
    facts = cpu.machine_facts()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### Run {now}",
        "",
        f"- command: `{command(config)}` (from the repository root)",
        f"- machine: nproc {facts['nproc']} ({facts['cpu_count']} CPUs), {facts['model']}, "
        f"Linux {facts['kernel']}",
        f"- software: Python {platform.python_version()}; {'; '.join(versions)}",
        f"- load: closed loop, {connections} connections, 1 loadgen process, {warmup:g} s "
        f"warm-up then {SLICES} × {seconds / SLICES:g} s interleaved per target; {plan}{load}",
        "",
        *table(list(rows.values())),
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)
