"""One load run against one target, with the CPU it cost and the CPU others took meanwhile.

The benchmark machine is shared, so each run also reports how much CPU was used by processes
that are not part of the run (``others_cores``): total busy time from /proc/stat minus the
proxy's, the upstream's and the load generator's own time. A run with a high figure there is
noisy. The per-core figure (req/s divided by the proxy's CPU use) compares proxies even when
the client's core saturates before the proxy's does.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

from tools.loadgen import run_load

from .cpu import cpu_seconds, pin_tree, tree

_TICK_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass
class Target:
    name: str
    url: str
    proxy_pids: list[int] = field(default_factory=list)  # empty for the direct run


@dataclass
class Measurement:
    target: str
    seconds: float
    requests: int
    rps: float
    p50_us: int
    p99_us: int
    max_us: int
    status: dict[str, int]
    errors: dict[str, int]
    proxy_cores: float  # CPU seconds of the proxy per wall second
    others_cores: float  # CPU used meanwhile by processes outside the run

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def non_200(self) -> int:
        return sum(n for code, n in self.status.items() if code != "200")

    @property
    def rps_per_proxy_core(self) -> float | None:
        return self.rps / self.proxy_cores if self.proxy_cores > 0.05 else None


def _busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1 : 1 + len(_TICK_FIELDS)]]
    ticks = dict(zip(_TICK_FIELDS, values, strict=False))
    busy = sum(v for k, v in ticks.items() if k not in ("idle", "iowait"))
    return busy / os.sysconf("SC_CLK_TCK")


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proxy_target(name: str, pid: int, url: str, cpus: set[int] | None) -> Target:
    """The Target of a proxy's process tree, pinned to ``cpus`` first (None: not pinned)."""
    if cpus:
        pin_tree(pid, cpus)
    return Target(name, url, tree(pid))


def measure(
    target: Target,
    *,
    path: str,
    seconds: float,
    connections: int,
    upstream_pid: int,
    timeout: float = 5.0,
    load: dict | None = None,
) -> Measurement:
    """Closed-loop load on ``target`` for ``seconds`` (one loadgen process); ``load`` adds
    ``run_load`` options (headers, a rotating header: ``header_name`` + ``header_values``)."""
    proxy_before = cpu_seconds(target.proxy_pids)
    upstream_before = cpu_seconds([upstream_pid])
    loadgen_before = _children_seconds() + _self_seconds()  # the loadgen process is joined
    busy_before = _busy_seconds()
    wall_before = time.monotonic()
    report = run_load(
        target.url + path,
        connections=connections,
        duration=seconds,
        processes=1,
        timeout=timeout,
        **(load or {}),
    )
    wall = time.monotonic() - wall_before
    busy = _busy_seconds() - busy_before
    loadgen = _children_seconds() + _self_seconds() - loadgen_before
    proxy = cpu_seconds(target.proxy_pids) - proxy_before
    upstream = cpu_seconds([upstream_pid]) - upstream_before
    latency = report["latency_us"]
    return Measurement(
        target=target.name,
        seconds=report["duration_s"],
        requests=report["requests"],
        rps=report["rps"],
        p50_us=latency["p50"],
        p99_us=latency["p99"],
        max_us=latency["max"],
        status=dict(report["status"]),
        errors={k: v for k, v in report["errors"].items() if v},
        # the proxy is idle while the loadgen process starts: its time is all load time
        proxy_cores=proxy / report["duration_s"],
        others_cores=max(0.0, busy - proxy - upstream - loadgen) / wall,
    )


def combine(parts: list[Measurement]) -> Measurement:
    """Several runs on one target as one: requests and times add up, p50 is the
    request-weighted mean of the parts' p50, p99 and max the worst part's (the runs' histograms
    are not merged, so these two are conservative)."""
    seconds = sum(p.seconds for p in parts)
    requests = sum(p.requests for p in parts)
    status: dict[str, int] = {}
    errors: dict[str, int] = {}
    for p in parts:
        for code, n in p.status.items():
            status[code] = status.get(code, 0) + n
        for kind, n in p.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return Measurement(
        target=parts[0].target,
        seconds=seconds,
        requests=requests,
        rps=requests / seconds,
        p50_us=round(sum(p.p50_us * p.requests for p in parts) / max(requests, 1)),
        p99_us=max(p.p99_us for p in parts),
        max_us=max(p.max_us for p in parts),
        status=status,
        errors=errors,
        proxy_cores=sum(p.proxy_cores * p.seconds for p in parts) / seconds,
        others_cores=sum(p.others_cores * p.seconds for p in parts) / seconds,
    )


# Measured slices per target (bench_e2e_oauth2.py interleaves them). This VM's speed wanders by ±10 % over tens of seconds; four
# slices in the order A B C C B A A B C C B A leave a wander less room to favour one target
# than two halves did (a run of two halves once put the api_key route above the public one).
SLICES = 4
