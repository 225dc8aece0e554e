"""FluxGate against a peer proxy, per proxy core, in paired rounds driven by wrk.

The method the goals (``GOALS``) are stated in:

* The proxy under test runs on one CPU with its whole process tree (FluxGate's master and
  worker); wrk (one thread) and the fixed-response upstream share another. Both proxies run
  all along, so neither gets a quieter machine by being alone.
* A comparison is a warm-up of each side, then ``ROUNDS`` rounds. A round measures the two
  sides back to back for ``ROUND_SECONDS`` each, FluxGate first in even rounds and the peer
  first in odd ones (A B, B A, A B, …): a drift of the shared machine within a round falls
  on both sides alike, and a drift across rounds moves both sides of a round together.
* Per side and run: req/s and latency percentiles from wrk; the proxy's CPU from /proc
  (utime + stime of every process of its tree) before and after; req/s per proxy core =
  req/s ÷ (CPU seconds ÷ run seconds). Per-core figures compare proxies even when neither
  is saturated, which raw req/s cannot.
* The reported ratio is the median over rounds of the per-round ratio (FluxGate ÷ peer), for
  per-core req/s, raw req/s and p99 alike; one noisy round cannot move a median of five.
* Every run also reports what could make it dishonest: the generator's own CPU (wrk, the
  load only; ``GENERATOR_SATURATED`` or more and wrk, not the proxy, set the pace), how busy
  the client CPU was (wrk + upstream, and how much of it processes outside the run took), and
  the CPU those processes took on the proxy's CPU. Those runs are flagged, in the comparison
  and in the summary.
* Except where wrk busy-polls (``Comparison.generator_polls``, measured: wrk's read() calls
  per request, ``GENERATOR_POLLING`` or more in a run). wrk 4.1 waits for its TLS handshakes
  on a writable socket, which a connected socket always is: every pass of its event loop
  calls SSL_connect on every connection in a handshake, and each fails reading (a new TLS
  connection per request, RSA-2048: 125-220 read() calls per connection, of which 110-205
  failed, where about 15 do the work). Its CPU then fills whatever the client CPU has spare
  however little work it has, and says nothing about who set the pace. There the proxy's
  own CPU does: a run is flagged when the proxy took less than ``PROXY_SATURATED`` core
  while others left its CPU alone (the client side held it back); a proxy at a full core was
  the bottleneck whatever wrk's CPU reads. A wrk that waits for readability while its
  handshake wants to read (tools/loadgen/README.md) does not poll, and is judged as usual.

A rotating header (tokens, keys) continues its rotation across the runs of a side
(``Side.next_start``), so 100,000 distinct tokens are a 100,000-request cycle per proxy and
a cache smaller than that never sees a token twice within the cycle.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.loadgen.wrk import run_wrk

from .cpu import cpu_seconds
from .measure import Target

ROUNDS = int(os.environ.get("FLUXGATE_BENCH_ROUNDS", "5"))
ROUND_SECONDS = int(os.environ.get("FLUXGATE_BENCH_ROUND_SECONDS", "5"))  # per side and round
WARMUP_SECONDS = 1
CONNECTIONS = int(os.environ.get("FLUXGATE_BENCH_CONNECTIONS", "32"))
GENERATOR_SATURATED = 0.9  # cores of the one wrk thread: at this, wrk sets the pace
CLIENT_SATURATED = 0.95  # the client CPU (wrk + upstream + anything else on it)
OTHERS_NOISY = 0.10  # cores taken on the proxy's CPU by processes outside the run
PROXY_SATURATED = 0.9  # cores of the proxy's tree: at this, the proxy set the pace
GENERATOR_POLLING = 50  # wrk's read() calls per request: at this, it busy-polls


@dataclass(frozen=True)
class Goal:
    """What a comparison must reach: FluxGate's req/s per proxy core at least ``per_core`` ×
    the peer's, and (when set) FluxGate's p99 at most ``p99`` × the peer's."""

    name: str
    per_core: float
    p99: float | None = None
    bench: str = ""  # the -k expression that runs it


GOALS = [
    Goal("public", 0.95, bench="e2e_public"),
    Goal("jwt 1 token, 300 B claims", 2.5, bench="e2e_jwt"),
    Goal("jwt 1 token, 1 kB claims", 2.5, bench="e2e_jwt"),
    Goal("jwt 100k tokens, 300 B claims", 1.2, 1.5, bench="e2e_jwt"),
    Goal("jwt 100k tokens, 1 kB claims", 1.2, 1.5, bench="e2e_jwt"),
    Goal("api_key + quota, 10k keys", 1.2, bench="e2e_api_key"),
]
# FluxGate and HAProxy terminating TLS (bench/bench_e2e_tls.py): TLS 1.3, the same
# certificate, key, ciphersuites and OpenSSL settings on both sides.
TLS_GOALS: list[Goal] = [
    Goal("tls 1.3 keep-alive", 0.9, bench="e2e_tls"),
    Goal("tls new connection per request, ECDSA P-256", 0.8, bench="e2e_tls"),
    Goal("tls new connection per request, RSA-2048", 0.8, bench="e2e_tls_rsa"),
]
GOAL_BY_NAME = {g.name: g for g in GOALS + TLS_GOALS}


@dataclass(frozen=True)
class CheckGoal:
    """A goal that is not a ratio to a peer (memory): what must hold, and the bench."""

    name: str
    goal: str
    bench: str = ""


@dataclass(frozen=True)
class Check:
    """A measured ``CheckGoal``: met or not, the figures that say so, and any flags."""

    name: str
    met: bool
    detail: str
    flags: tuple[str, ...] = ()

    def verdict(self) -> str:
        return "met" if self.met else "missed"


CHECK_GOALS = [
    CheckGoal("8 workers, 1,000,000 keys: one copy of the key table",
              "sum of the table mapping's PSS over all processes <= 1.1x its size", bench="memory"),
    CheckGoal("fluxctl keys import: 1,000,000 generated keys in < 60 s",
              "wall time of the command on a fresh state_dir", bench="keys_import"),
]


@dataclass
class Side:
    """One side of a comparison: a proxy (its process tree), a path, and what wrk sends."""

    label: str  # "fluxgate", "haproxy", ...
    target: Target
    path: str
    headers: tuple[str, ...] = ()
    header_file: Path | None = None
    header_name: str | None = None
    spread: int = 0  # distinct requests wrk builds at least (run_wrk's ``spread``)
    next_start: int = 0  # the rotating header's next value, carried from run to run


@dataclass
class Sample:
    """One wrk run on one side."""

    label: str
    seconds: float
    requests: int
    rps: float
    p50_us: int
    p99_us: int
    errors: dict[str, int]  # the kinds that happened (wrk: connect, read, write, timeout, status)
    proxy_cores: float  # the proxy tree's CPU seconds per second of load
    generator_cores: float  # wrk's CPU over the load only
    client_busy: float | None  # the client CPU's busy share (None: not pinned)
    others_on_client_cpu: float | None  # of which processes outside the run (None: not pinned)
    others_on_proxy_cpu: float | None  # cores others took on the proxy's CPU (None: not pinned)
    others_cores: float  # cores used anywhere by processes outside the run
    generator_reads_per_request: float | None = None  # wrk's read() calls (None: not counted)

    @property
    def per_core(self) -> float | None:
        return self.rps / self.proxy_cores if self.proxy_cores > 0.05 else None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class Comparison:
    """FluxGate (``ours``) against a peer, with the samples of its warm-ups and rounds."""

    name: str
    ours: Side
    peer: Side
    goal: Goal | None = None
    warmups: list[Sample] = field(default_factory=list)
    rounds: list[tuple[Sample, Sample]] = field(default_factory=list)  # (ours, peer)
    notes: list[str] = field(default_factory=list)

    def _ratios(self, value) -> list[float]:
        out = []
        for ours, peer in self.rounds:
            a, b = value(ours), value(peer)
            if a is not None and b:
                out.append(a / b)
        return out

    @property
    def per_core_ratios(self) -> list[float]:
        return self._ratios(lambda s: s.per_core)

    @property
    def rps_ratios(self) -> list[float]:
        return self._ratios(lambda s: s.rps)

    @property
    def p99_ratios(self) -> list[float]:
        return self._ratios(lambda s: s.p99_us)

    @staticmethod
    def _median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def per_core_ratio(self) -> float | None:
        return self._median(self.per_core_ratios)

    @property
    def rps_ratio(self) -> float | None:
        return self._median(self.rps_ratios)

    @property
    def p99_ratio(self) -> float | None:
        return self._median(self.p99_ratios)

    def side_median(self, which: int, value) -> float | None:
        """Median over rounds of ``value(sample)`` for side ``which`` (0 ours, 1 peer)."""
        values = [v for v in (value(r[which]) for r in self.rounds) if v is not None]
        return self._median(values)

    def samples(self) -> list[Sample]:
        return self.warmups + [s for r in self.rounds for s in r]

    @property
    def polling_runs(self) -> list[Sample]:
        """The measured runs in which wrk busy-polled (the module doc)."""
        return [s for r in self.rounds for s in r
                if (s.generator_reads_per_request or 0) >= GENERATOR_POLLING]

    @property
    def generator_polls(self) -> bool:
        """wrk busy-polled in some measured run: its CPU and the client CPU's are no measure
        of its work there, and the flags come from the proxy's CPU."""
        return bool(self.polling_runs)

    @property
    def generator_peak(self) -> float:
        return max((s.generator_cores for s in self.samples()), default=0.0)

    def flags(self) -> list[str]:
        """Why the figures may not mean what they say, from the measured runs (not warm-ups)."""
        measured = [s for r in self.rounds for s in r]
        out = []
        if self.generator_polls:
            return self._polling_flags(measured)
        gen = [s for s in measured if s.generator_cores >= GENERATOR_SATURATED]
        if gen:
            out.append(f"generator saturated in {len(gen)} run(s) (wrk ≥ {GENERATOR_SATURATED:g} "
                       f"core, peak {max(s.generator_cores for s in gen):.2f}): req/s measures wrk")
        busy = [s for s in measured if s.client_busy is not None and s.client_busy >= CLIENT_SATURATED]
        if busy:
            others = max(s.others_on_client_cpu or 0.0 for s in busy)
            out.append(f"client CPU saturated in {len(busy)} run(s) (busy ≥ {CLIENT_SATURATED:g}; "
                       f"processes outside the run took up to {others:.2f} of it): the proxies "
                       "may not have been pushed to a full core")
        return out + self._noise_flags(measured)

    @staticmethod
    def _noise_flags(measured: list[Sample]) -> list[str]:
        noisy = [s for s in measured if _noisy(s)]
        if not noisy:
            return []
        return [f"others used ≥ {OTHERS_NOISY:g} core of the proxy's CPU in {len(noisy)} "
                f"run(s) (peak {max(s.others_on_proxy_cpu for s in noisy):.2f})"]

    def _polling_flags(self, measured: list[Sample]) -> list[str]:
        held = [s for s in measured if s.proxy_cores < PROXY_SATURATED and not _noisy(s)]
        out = []
        if held:
            out.append(f"proxy below {PROXY_SATURATED:g} core in {len(held)} run(s) with its CPU "
                       f"otherwise quiet (lowest {min(s.proxy_cores for s in held):.2f}): the client "
                       "side set the pace (wrk busy-polls handshakes, so its CPU cannot say how "
                       "close it was)")
        return out + self._noise_flags(measured)

    def verdict(self) -> str:
        """"met" / "missed" against the goal ("-" without one)."""
        if self.goal is None or self.per_core_ratio is None:
            return "-"
        ok = self.per_core_ratio >= self.goal.per_core
        if self.goal.p99 is not None:
            ok = ok and self.p99_ratio is not None and self.p99_ratio <= self.goal.p99
        return "met" if ok else "missed"


def _noisy(s: Sample) -> bool:
    return s.others_on_proxy_cpu is not None and s.others_on_proxy_cpu >= OTHERS_NOISY


_TICK_FIELDS = 8  # user nice system idle iowait irq softirq steal


def _cpu_times() -> dict[str, tuple[float, float]]:
    """(busy, total) seconds so far per line of /proc/stat: "cpu" (all) and "cpuN"."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            ticks = [int(v) for v in values[:_TICK_FIELDS]]
            idle = ticks[3] + ticks[4]
            out[name] = ((sum(ticks) - idle) / tick, sum(ticks) / tick)
    return out


def _busy(before: dict, after: dict, cpu: str) -> float:
    return after[cpu][0] - before[cpu][0]


def run_side(side: Side, *, seconds: int, connections: int, upstream_pid: int,
             client_cpu: int | None, proxy_cpu: int | None) -> Sample:
    """One wrk run on ``side``; its rotation continues where the previous run stopped."""
    proxy_before = cpu_seconds(side.target.proxy_pids)
    upstream_before = cpu_seconds([upstream_pid])
    stat_before = _cpu_times()
    wall_before = time.monotonic()
    report = run_wrk(
        side.target.url + side.path, connections=connections, duration=seconds, threads=1,
        headers=side.headers, header_file=side.header_file, header_name=side.header_name,
        start=side.next_start, spread=side.spread, timeout=5.0,
    )
    wall = time.monotonic() - wall_before
    stat_after = _cpu_times()
    proxy = cpu_seconds(side.target.proxy_pids) - proxy_before
    upstream = cpu_seconds([upstream_pid]) - upstream_before
    side.next_start = report["next_start"]
    load_s = report["duration_s"]
    generator = report["generator_cpu_s"] + report["generator_init_cpu_s"]
    others = _busy(stat_before, stat_after, "cpu") - proxy - upstream - generator
    client_busy = others_client = others_proxy = None
    if client_cpu is not None and proxy_cpu is not None:
        # the file loading happens before the load: leave it out of the client's busy share
        client = _busy(stat_before, stat_after, f"cpu{client_cpu}")
        client_busy = min(1.0, max(0.0, (client - report["generator_init_cpu_s"]) / load_s))
        others_client = max(0.0, client - generator - upstream) / wall
        others_proxy = max(0.0, _busy(stat_before, stat_after, f"cpu{proxy_cpu}") - proxy) / wall
    lat = report["latency_us"]
    return Sample(
        label=side.label, seconds=load_s, requests=report["requests"], rps=report["rps"],
        p50_us=lat["p50"], p99_us=lat["p99"],
        errors={k: v for k, v in report["errors"].items() if v},
        # the proxy is idle while wrk loads its file and exits: its CPU is all load time
        proxy_cores=proxy / load_s, generator_cores=report["generator_cores"],
        client_busy=client_busy, others_on_client_cpu=others_client,
        others_on_proxy_cpu=others_proxy,
        others_cores=max(0.0, others) / wall,
        generator_reads_per_request=report.get("generator_reads_per_request"),
    )


def run_comparison(cmp: Comparison, *, upstream_pid: int, client_cpu: int | None,
                   proxy_cpu: int | None, rounds: int = ROUNDS, seconds: int = ROUND_SECONDS,
                   warmup: int = WARMUP_SECONDS, connections: int = CONNECTIONS) -> Comparison:
    """Warm both sides up, then ``rounds`` rounds in the order A B, B A, A B, …"""
    kw = dict(connections=connections, upstream_pid=upstream_pid, client_cpu=client_cpu,
              proxy_cpu=proxy_cpu)
    cmp.warmups += [run_side(cmp.ours, seconds=warmup, **kw), run_side(cmp.peer, seconds=warmup, **kw)]
    for r in range(rounds):
        if r % 2 == 0:
            ours = run_side(cmp.ours, seconds=seconds, **kw)
            peer = run_side(cmp.peer, seconds=seconds, **kw)
        else:
            peer = run_side(cmp.peer, seconds=seconds, **kw)
            ours = run_side(cmp.ours, seconds=seconds, **kw)
        cmp.rounds.append((ours, peer))
    return cmp


def run_direct(url: str, *, upstream_pid: int, client_cpu: int | None, proxy_cpu: int | None,
               seconds: int = ROUND_SECONDS, connections: int = CONNECTIONS) -> Sample:
    """wrk → the upstream with no proxy: what the client side alone can do (the ceiling every
    proxy row is under), and the generator's CPU at that rate."""
    side = Side("direct", Target("direct", url), "/bench/direct")
    return run_side(side, seconds=seconds, connections=connections, upstream_pid=upstream_pid,
                    client_cpu=client_cpu, proxy_cpu=proxy_cpu)
