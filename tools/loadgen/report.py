"""Merge the per-process results into the report, and render the report for people."""

from __future__ import annotations

from collections.abc import Iterable

from .engine import ERROR_KINDS
from .histogram import Histogram

__all__ = ["format_summary", "merge_results"]

_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def merge_results(parts: Iterable[dict], settings: dict) -> dict:
    """Fold the workers' raw results into one report dict (the ``--json`` object).

    ``settings`` holds the run's parameters (url, method, connections, …), copied in first.
    """
    hist = Histogram()
    status: dict[int, int] = {}
    errors = dict.fromkeys(ERROR_KINDS, 0)
    sent = received = opened = 0
    start: float | None = None
    end: float | None = None
    for part in parts:
        hist.merge(Histogram.from_state(part["histogram"]))
        for code, n in part["status"].items():
            status[int(code)] = status.get(int(code), 0) + n
        for kind, n in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
        sent += part["sent"]
        received += part["bytes_received"]
        opened += part["connections_opened"]
        start = part["start"] if start is None else min(start, part["start"])
        end = part["end"] if end is None else max(end, part["end"])
    elapsed = (end - start) if start is not None and end is not None else 0.0
    responses = hist.count
    report = dict(settings)
    report.update(
        duration_s=round(elapsed, 6),
        requests=responses,
        sent=sent,
        rps=round(responses / elapsed, 3) if elapsed > 0 else 0.0,
        latency_us={
            **{name: hist.percentile(p) for name, p in _PERCENTILES},
            "max": hist.max,
            "min": hist.min,
            "mean": round(hist.mean(), 3),
        },
        status={str(code): status[code] for code in sorted(status)},
        errors=errors,
        bytes_received=received,
        connections_opened=opened,
    )
    return report


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def _ms(us: float) -> str:
    if us >= 1_000_000:
        return f"{us / 1_000_000:.2f} s"
    return f"{us / 1000:.3f} ms"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_summary(report: dict) -> str:
    """A few aligned lines, wrk-style."""
    if report["rate"] is None:
        mode = f"closed loop, {_plural(report['connections'], 'connection')}"
    else:
        mode = f"open loop at {report['rate']:g} req/s, up to {_plural(report['connections'], 'connection')}"
    procs = report["processes"]
    limit = f"{report['duration_limit_s']:g} s"
    if report["requests_limit"] is not None:
        limit += f" or {report['requests_limit']} requests"
    lat = report["latency_us"]
    errors = ", ".join(f"{k}: {n}" for k, n in report["errors"].items() if n) or "none"
    status = ", ".join(f"{code}: {n}" for code, n in report["status"].items()) or "none"
    rotating = f", {report['header_values']} rotating header values" if report["header_values"] > 1 else ""
    lines = [
        f"Target    {report['method']} {report['url']}",
        f"Load      {mode}, {_plural(procs, 'process')}, limit {limit}{rotating}",
        f"Done      {report['requests']} responses in {report['duration_s']:.3f} s = "
        f"{report['rps']:.1f} req/s ({report['sent']} sent, {_bytes(report['bytes_received'])} "
        f"received, {_plural(report['connections_opened'], 'connection')} opened)",
        "Latency   " + "  ".join(
            f"{label} {_ms(lat[key])}"
            for label, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99_9"), ("max", "max"), ("mean", "mean"))
        ),
        f"Status    {status}",
        f"Errors    {errors}",
    ]
    if report["rate"] is not None:
        lines.append("          (open loop: latency counts from each request's scheduled send time)")
    return "\n".join(lines)
