"""End to end, oauth2 (RFC 7662 introspection): loadgen → FluxGate (1 worker) oauth2 route
with opaque bearer tokens, against FluxGate's public route and against the same middleware
configured to ask the authorization server on every request.

``pytest bench/ -k e2e_oauth2`` runs it (``-m "not e2e"`` skips it). Method as
bench_e2e_jwt.py: the fixed-response upstream (bench/support/upstream.py) and the
introspection server (bench/support/authserver.py) each in their own process; closed loop,
50 connections, one loadgen process; the proxy (master and worker: the master makes the
introspection calls, so its CPU is the proxy's) pinned to the last CPU, loadgen, upstream
and introspection server to the first; a 1 s warm-up per row, then the measured time in
four slices interleaved A B C D D C B A A B C D D C B A (``bench.support.measure.SLICES``).

Rows:

* ``fluxgate public``: the public route, no authentication.
* ``fluxgate oauth2, 1 token (cached)``: one valid token on every request; after the first
  request every one is a hit in the shared result table (``cache_ttl`` 60 s, the default).
* ``fluxgate oauth2, 100k tokens (misses)``: 100,000 distinct valid tokens rotating through
  loadgen's ``--header-file``. Loadgen starts every run at the first line of its file, and
  a token once introspected stays cached for 60 s, so a file used twice would measure hits
  the second time: every slice (and the warm-up) gets a file of tokens never seen before.
  A slice sends far fewer than 100,000 requests at the rates measured, so every request is
  a miss that costs one call through the side pool; the fraction actually missed is read
  from the gateway's ``fluxgate_oauth2_cache_{hits,misses}_total`` around every slice and
  reported, not assumed.
* ``fluxgate oauth2 no cache, 100k tokens``: the "one authorization-server call per
  request" baseline (an introspection plugin without a cache): a second route whose
  provider (another ``client_id``, so another provider and table) keeps answers 1 ms
  (``cache_ttl: 0.001s``, the least the config accepts), fed distinct tokens so that
  single-flight cannot merge concurrent requests either.

Each row reports, besides the usual table: the proxy's CPU per request (worker + master, and
the master alone), authorization-server calls per request and their CPU (from /proc, as for
the upstream), the cache-miss fraction, and the CPU of the loadgen and of the whole client
core (loadgen + upstream + introspection server); a loadgen near one core is flagged, since
req/s then measures the client, and only the per-proxy-core figures compare rows.

Per-slice sampling (the server's call counter, the gateway's metrics, the loadgen's CPU)
and a fresh token file per slice need a step between slices, which
``bench.support.measure.interleaved`` does not offer; ``interleaved`` below keeps its
order and reuses its ``measure`` and ``combine``.

Results go to an untracked file (``FLUXGATE_BENCH_OAUTH2_RESULTS``, default
bench/results-oauth2.md) and to the terminal summary. Asserted: no transport error and only
200s in every run (every token is valid), the introspection server saw no call without
client credentials and no inactive token, and the cached row made at most one call per
``cache_ttl`` it spanned (two in a normal run). The ratios are reported, not asserted.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.support import cpu
from bench.support.authserver import AuthServerProcess, start_authserver, token, token_file
from bench.support.measure import SLICES, Measurement, Target, combine, measure, proxy_target
from bench.support.results import run_text, update_results
from bench.support.upstream import start_upstream
from tests.support.gateway import REPO, GatewayProcess

pytestmark = pytest.mark.e2e

BENCH_DIR = Path(__file__).resolve().parent
# Untracked by default (.gitignore): FLUXGATE_BENCH_OAUTH2_RESULTS=/tmp/r.md for elsewhere.
RESULTS = Path(os.environ.get("FLUXGATE_BENCH_OAUTH2_RESULTS", BENCH_DIR / "results-oauth2.md"))
SECONDS = float(os.environ.get("FLUXGATE_BENCH_E2E_SECONDS", "8"))  # measured, per row
WARMUP_SECONDS = 1.0
CONNECTIONS = 50
DISTINCT = 100_000
CACHE_TTL = 60.0  # the default cache_ttl, which the cached route keeps
ADMIN_TOKEN = "test-admin-token"  # what tests/support/gateway.py writes into the config
LOADGEN_SATURATED = 0.9  # cores: above this the loadgen, not the proxy, sets the pace
BEGIN = "<!-- oauth2-e2e-runs:begin (written by bench/bench_e2e_oauth2.py; newest first) -->"
END = "<!-- oauth2-e2e-runs:end -->"
KEEP_RUNS = 6

CACHED_ID, NOCACHE_ID = "gw", "gw-nocache"  # client ids: one provider each
PUBLIC = "fluxgate public"
CACHED = "fluxgate oauth2, 1 token (cached)"
MISSES = "fluxgate oauth2, 100k tokens (misses)"
NOCACHE = "fluxgate oauth2 no cache, 100k tokens (1 AS call/request)"
PROVIDER_OF = {CACHED: CACHED_ID, MISSES: CACHED_ID, NOCACHE: NOCACHE_ID}

FLUXGATE_CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /public
    upstream: http://127.0.0.1:{port}
    public: true
  - route: /oauth2
    upstream: http://127.0.0.1:{port}
    middleware:
      - oauth2:
          client_id: {cached_id}
          client_secret: s3cret
          issuer: {issuer}
          introspection_endpoint: {endpoint}
          cache_size: 262144          # shared result slots (~2x the distinct tokens)
          max_connections: 16
          max_pending: 100000
  - route: /oauth2-nocache
    upstream: http://127.0.0.1:{port}
    middleware:
      - oauth2:
          client_id: {nocache_id}
          client_secret: s3cret
          issuer: {issuer}
          introspection_endpoint: {endpoint}
          cache_ttl: 0.001s           # the least accepted: every request asks the server
          negative_cache_ttl: 0.001s  # may not exceed cache_ttl
          cache_size: 65536
          max_connections: 16
          max_pending: 100000
"""

SECTION_HEADER = """\
## End-to-end: oauth2 route (RFC 7662 introspection) — cached, misses, one call per request (bench/bench_e2e_oauth2.py)

Closed loop, 1 FluxGate worker, the fixed-response upstream and a local introspection server
(bench/support/authserver.py, uvloop + httptools); method in the docstring of
bench/bench_e2e_oauth2.py. `1 token (cached)`: one opaque token on every request (hits in
the shared table). `100k tokens (misses)`: tokens never seen before, a fresh set per slice
(each a miss and one call through the master's side pool). `no cache`: a route whose answers
are kept 1 ms, fed distinct tokens: one call per request, as an introspection plugin without
a cache. The second table: proxy CPU per request (worker + master), calls to the
authorization server (AS) per request and their CPU, the share of cache misses, and the
client core (loadgen + upstream + AS). Targets: cached oauth2 route ≥ 0.9× the public route
per proxy core.
"""


# ---- what is sampled around each run -------------------------------------------------------


def oauth2_counters(admin_port: int) -> dict[tuple[str, str], float]:
    """``fluxgate_oauth2_*`` and ``fluxgate_auth_failures_total`` from the admin /metrics,
    by (metric name, client id of the provider, or the labels for other metrics)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        reply = conn.getresponse()
        text = reply.read().decode()
        if reply.status != 200:
            raise RuntimeError(f"/metrics answered {reply.status}: {text[:200]}")
    finally:
        conn.close()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith(("fluxgate_oauth2_", "fluxgate_auth_failures_total")):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        provider = re.search(r'provider="[^"]*#([^"]*)"', labels)
        key = provider.group(1) if provider else labels.rstrip("}")
        if name == "fluxgate_oauth2_introspection_total":
            continue  # by result: the _count below is their sum
        out[(name, key)] = out.get((name, key), 0.0) + float(value)
    return out


@dataclass
class Snapshot:
    """Counters read between runs (outside the measured time)."""

    at: float
    as_calls: int
    as_cpu: float
    upstream_cpu: float
    master_cpu: float
    metrics: dict[tuple[str, str], float]

    @classmethod
    def take(cls, authserver: AuthServerProcess, upstream_pid: int, master: int,
             admin_port: int, *, before: bool) -> Snapshot:
        """Before a run the two HTTP questions (the server's /stats, the gateway's /metrics)
        are asked first and after it last, so their own CPU stays outside the window."""

        def counters() -> tuple[int, dict[tuple[str, str], float]]:
            return authserver.stats()["calls"], oauth2_counters(admin_port)

        if before:
            calls, metrics = counters()
        times = (cpu.cpu_seconds([authserver.pid]), cpu.cpu_seconds([upstream_pid]),
                 cpu.cpu_seconds([master]))
        if not before:
            calls, metrics = counters()
        return cls(time.monotonic(), calls, *times, metrics)


class LoadgenWatch:
    """Samples the CPU time of the loadgen process ``run_load`` starts (a spawned child of
    this process), so its load can be told apart from its start-up: the figure is its CPU
    over the last ``duration`` seconds it lived, which is the measured run."""

    INTERVAL = 0.02  # s; /proc counts in 10 ms ticks

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = set(exclude)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadgen-watch", daemon=True)
        self._seen: dict[int, bool] = {}

    def __enter__(self) -> LoadgenWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _is_loadgen(self, pid: int) -> bool:
        known = self._seen.get(pid)
        if known is None:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    # multiprocessing's spawned worker, not its resource tracker
                    known = b"spawn_main" in f.read()
            except OSError:
                known = False
            self._seen[pid] = known
        return known

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.INTERVAL):
            pids = [p for p in cpu.children(me) if p not in self.exclude and self._is_loadgen(p)]
            if pids:
                self.samples.append((time.monotonic(), cpu.cpu_seconds(pids)))

    def cores(self, duration: float) -> float | None:
        """CPU seconds per second over the last ``duration`` s of samples (None: too few)."""
        if len(self.samples) < 3 or duration <= 0:
            return None
        end_t, end_cpu = self.samples[-1]
        start = end_t - duration
        prev = self.samples[0]
        for t, c in self.samples:
            if t >= start:
                if t == prev[0]:
                    return None  # the process was first seen after the run began
                at_start = prev[1] + (c - prev[1]) * (start - prev[0]) / (t - prev[0])
                return (end_cpu - at_start) / duration
            prev = (t, c)
        return None


@dataclass
class Extra:
    """What a row cost besides the proxy, summed over its slices."""

    requests: int = 0
    seconds: float = 0.0
    master_cpu: float = 0.0
    as_calls: int = 0
    as_cpu: float = 0.0
    upstream_cpu: float = 0.0
    loadgen_cpu: float = 0.0  # over the measured time, from LoadgenWatch
    loadgen_seconds: float = 0.0  # the part of `seconds` LoadgenWatch could measure
    loadgen_peak: float = 0.0  # the busiest slice, cores
    hits: float = 0.0
    misses: float = 0.0
    sidepool_rejected: float = 0.0
    failures: dict[str, float] = field(default_factory=dict)

    def per_request_us(self, seconds: float) -> float:
        return seconds / max(self.requests, 1) * 1e6

    @property
    def loadgen_cores(self) -> float | None:
        return self.loadgen_cpu / self.loadgen_seconds if self.loadgen_seconds else None

    @property
    def client_cores(self) -> float | None:
        """The client core's load: loadgen + upstream + introspection server."""
        lg = self.loadgen_cores
        if lg is None:
            return None
        return lg + (self.upstream_cpu + self.as_cpu) / max(self.seconds, 1e-9)

    @property
    def miss_fraction(self) -> float | None:
        looked = self.hits + self.misses
        return self.misses / looked if looked else None


def interleaved(
    runs: list[tuple[str, Target, str, Callable[[str], dict | None]]], *, warmup: float,
    seconds: float, connections: int, upstream_pid: int,
    sample: Callable[[bool], Snapshot], exclude: set[int],
) -> tuple[list[Measurement], dict[str, Measurement], dict[str, Extra], dict[str, Extra]]:
    """``bench.support.measure.interleaved`` with a step between runs: each run ``(row
    name, target, path, load)`` where ``load(slice name)`` gives the run's ``run_load``
    options; a warm-up of ``warmup`` s each, then ``SLICES`` slices of ``seconds`` in the
    order A B C C B A A B C C B A. (warm-ups, rows by name, extras of the rows by name,
    extras of the warm-ups by name.)"""
    extras = {r[0]: Extra() for r in runs}
    warm_extras = {r[0]: Extra() for r in runs}

    def one(name: str, target: Target, path: str, load: Callable[[str], dict | None],
            t: float, slice_name: str, extra: Extra) -> Measurement:
        options = load(slice_name)
        before = sample(True)
        with LoadgenWatch(exclude) as watch:
            wall = time.monotonic()
            m = measure(target, path=path, seconds=t, connections=connections,
                        upstream_pid=upstream_pid, load=options)
            wall = time.monotonic() - wall
        after = sample(False)
        m.target = name
        as_cpu = after.as_cpu - before.as_cpu
        # measure() counts the introspection server among "others": it belongs to the run
        m.others_cores = max(0.0, m.others_cores - as_cpu / wall)
        extra.requests += m.requests
        extra.seconds += m.seconds
        extra.master_cpu += after.master_cpu - before.master_cpu
        extra.as_calls += after.as_calls - before.as_calls
        extra.as_cpu += as_cpu
        extra.upstream_cpu += after.upstream_cpu - before.upstream_cpu
        lg = watch.cores(m.seconds)
        if lg is not None:
            extra.loadgen_cpu += lg * m.seconds
            extra.loadgen_seconds += m.seconds
            extra.loadgen_peak = max(extra.loadgen_peak, lg)
        provider = PROVIDER_OF.get(name)

        if provider is not None:

            def delta(metric: str) -> float:
                key = (metric, provider)
                return after.metrics.get(key, 0.0) - before.metrics.get(key, 0.0)

            extra.hits += delta("fluxgate_oauth2_cache_hits_total")
            extra.misses += delta("fluxgate_oauth2_cache_misses_total")
            extra.sidepool_rejected += delta("fluxgate_oauth2_sidepool_rejected_total")
        for (metric, key), value in after.metrics.items():
            if metric == "fluxgate_auth_failures_total":
                d = value - before.metrics.get((metric, key), 0.0)
                if d:
                    extra.failures[key] = extra.failures.get(key, 0.0) + d
        return m

    warmups = [one(*r, warmup, "warmup", warm_extras[r[0]]) for r in runs]
    slices: dict[str, list[Measurement]] = {r[0]: [] for r in runs}
    order = (runs + runs[::-1]) * (SLICES // 2)
    for k, r in enumerate(order):
        slices[r[0]].append(one(*r, seconds / SLICES, f"s{k}", extras[r[0]]))
    return (warmups, {name: combine(parts) for name, parts in slices.items()}, extras,
            warm_extras)


# ---- the report ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def extra_table(rows: dict[str, Measurement], extras: dict[str, Extra]) -> list[str]:
    out = [
        "| target | proxy CPU µs/req (worker + master) | master µs/req | AS calls/req "
        "| AS CPU µs/call | AS CPU (cores) | cache misses | loadgen CPU (cores) "
        "| client core busy (loadgen + upstream + AS) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        e = extras[name]
        proxy_us = m.proxy_cores * m.seconds / max(m.requests, 1) * 1e6
        calls_per_req = e.as_calls / max(e.requests, 1)
        as_us = e.as_cpu / e.as_calls * 1e6 if e.as_calls else None
        misses = e.miss_fraction
        lg = e.loadgen_cores
        lg_text = _fmt(lg, ".2f")
        if lg is not None and max(lg, e.loadgen_peak) >= LOADGEN_SATURATED:
            lg_text += f" (saturated; peak {e.loadgen_peak:.2f})"
        out.append(
            f"| {name} | {proxy_us:,.1f} | {e.per_request_us(e.master_cpu):,.1f} "
            f"| {calls_per_req:.3f} | {_fmt(as_us, ',.1f')} "
            f"| {e.as_cpu / max(e.seconds, 1e-9):.2f} "
            f"| {'-' if misses is None else f'{misses:.1%} ({e.misses:,.0f})'} "
            f"| {lg_text} | {_fmt(e.client_cores, '.2f')} |"
        )
    return out


def _cpu_per_request_us(m: Measurement) -> float:
    return m.proxy_cores * m.seconds / max(m.requests, 1) * 1e6


def _per_core(a: Measurement, b: Measurement) -> str:
    if a.rps_per_proxy_core and b.rps_per_proxy_core:
        return f"{a.rps_per_proxy_core / b.rps_per_proxy_core:.2f}x req/s per proxy core"
    return "req/s per proxy core: - (proxy CPU too small to divide by)"


def ratio_lines(rows: dict[str, Measurement], extras: dict[str, Extra]) -> list[str]:
    public, cached, misses, nocache = rows[PUBLIC], rows[CACHED], rows[MISSES], rows[NOCACHE]
    miss_share = extras[MISSES].miss_fraction
    lines = [
        f"cached oauth2 / public route: {_per_core(cached, public)}, "
        f"{cached.rps / public.rps:.2f}x req/s (target >= 0.9x per proxy core)",
        f"misses: {misses.rps:,.0f} req/s, {misses.rps / cached.rps:.2f}x the cached route's; "
        f"{_cpu_per_request_us(misses):,.1f} µs proxy CPU per request against "
        f"{_cpu_per_request_us(cached):,.1f} µs cached "
        f"({_cpu_per_request_us(misses) / _cpu_per_request_us(cached):.1f}x); "
        f"{'-' if miss_share is None else f'{miss_share:.1%}'} of its lookups missed, "
        f"{extras[MISSES].as_calls / max(extras[MISSES].requests, 1):.3f} AS calls per request",
        f"cached oauth2 / one AS call per request: {_per_core(cached, nocache)}, "
        f"{cached.rps / nocache.rps:.2f}x req/s",
        f"one AS call per request: {nocache.rps:,.0f} req/s, "
        f"{_cpu_per_request_us(nocache):,.1f} µs proxy CPU per request "
        f"({extras[NOCACHE].per_request_us(extras[NOCACHE].master_cpu):,.1f} µs in the master)",
    ]
    for name, e in extras.items():
        lg = e.loadgen_cores
        if lg is not None and max(lg, e.loadgen_peak) >= LOADGEN_SATURATED:
            lines.append(f"{name}: the loadgen used {lg:.2f} cores (peak slice "
                         f"{e.loadgen_peak:.2f}): its core, not the proxy, set req/s; compare "
                         "the per-proxy-core figures")
        if e.failures:
            lines.append(f"{name}: auth failures counted meanwhile: {e.failures}")
        if e.sidepool_rejected:
            lines.append(f"{name}: side pool answered {e.sidepool_rejected:,.0f} questions "
                         "'unavailable' at once (queue full or breaker open)")
    others = max(m.others_cores for m in rows.values())
    lines.append(f"others' CPU (processes outside the run), worst row: {others:.2f} cores")
    return lines


def log_complaints(log: str) -> list[str]:
    """The gateway log's warning, error and traceback lines (none in a clean run)."""
    marks = ("WARNING", "ERROR", "CRITICAL", "Traceback")
    return [line for line in log.splitlines() if any(m in line for m in marks)]


# ---- the test -----------------------------------------------------------------------------


def _check_config(path: Path) -> None:
    """Skip when this version refuses the oauth2 kind; fail on any other config error."""
    proc = subprocess.run(
        [sys.executable, "-m", "fluxgate.cli.fluxgate", "check", "--config", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip()
        if "not available yet" in said:
            pytest.skip(f"the oauth2 middleware is not available in this version: {said}")
        pytest.fail(f"fluxgate check refused the bench config:\n{said}")


def test_e2e_oauth2(benchmark, tmp_path, request, e2e_summary):
    benchmark.group = "e2e: oauth2 route"
    client_cpus, proxy_cpus, plan = cpu.plan()
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()
    one_token = token("one", 0, "cached")
    nocache_tokens = token_file(tokens_dir / "nocache.txt", "nocache", DISTINCT)

    with contextlib.ExitStack() as stack:
        stack.enter_context(cpu.pinned(client_cpus))
        upstream = start_upstream()
        stack.callback(upstream.stop)
        authserver = start_authserver()
        stack.callback(authserver.stop)

        (tmp_path / "fluxgate").mkdir()
        gateway = GatewayProcess(tmp_path / "fluxgate", FLUXGATE_CONFIG.format(
            port=upstream.port, issuer=authserver.url, endpoint=authserver.introspection_endpoint,
            cached_id=CACHED_ID, nocache_id=NOCACHE_ID))
        _check_config(gateway.config_path)
        stack.callback(gateway.stop)
        gateway.start()
        assert gateway.proc is not None
        master = gateway.proc.pid
        fluxgate = proxy_target("fluxgate", master, gateway.url, proxy_cpus)
        # the master's CPU (the side pool) must count, and so must the worker's
        assert len(fluxgate.proxy_pids) >= 2, f"no worker under the master: {fluxgate.proxy_pids}"

        def misses_load(slice_name: str) -> dict:
            path = token_file(tokens_dir / f"misses-{slice_name}.txt", f"m{slice_name}", DISTINCT)
            return {"header_file": str(path), "header_name": "Authorization"}

        runs = [
            (PUBLIC, fluxgate, "/public/hello", lambda s: None),
            (CACHED, fluxgate, "/oauth2/hello",
             lambda s: {"headers": (f"Authorization: Bearer {one_token}",)}),
            (MISSES, fluxgate, "/oauth2/hello", misses_load),
            (NOCACHE, fluxgate, "/oauth2-nocache/hello",
             lambda s: {"header_file": str(nocache_tokens), "header_name": "Authorization"}),
        ]

        def sample(before: bool) -> Snapshot:
            return Snapshot.take(authserver, upstream.pid, master, gateway.admin_port,
                                 before=before)

        exclude = {upstream.pid, authserver.pid, master}
        started = time.monotonic()

        def run():
            return interleaved(runs, warmup=WARMUP_SECONDS, seconds=SECONDS,
                               connections=CONNECTIONS, upstream_pid=upstream.pid,
                               sample=sample, exclude=exclude)

        warmups, rows, extras, warm_extras = benchmark.pedantic(run, rounds=1, iterations=1)
        elapsed = time.monotonic() - started
        tree_after = cpu.tree(master)
        server = authserver.stats()
        log = gateway.log()
        log_tail = log[-4000:]

    lines = ratio_lines(rows, extras)
    complaints = log_complaints(log)
    if complaints:
        lines.append(f"the gateway logged {len(complaints)} warnings or errors, first: "
                     f"{complaints[0][:300]!r}")
        print("\ngateway warnings and errors (first 20):", *complaints[:20], sep="\n")
    if sorted(tree_after) != sorted(fluxgate.proxy_pids):
        lines.append(f"the gateway's process tree changed during the run: "
                     f"{sorted(fluxgate.proxy_pids)} -> {sorted(tree_after)}")
    text = run_text(
        request.config,
        versions=["introspection server bench/support/authserver.py (uvloop + httptools)"],
        plan=plan + "; the introspection server on the loadgen's CPU",
        connections=CONNECTIONS, warmup=WARMUP_SECONDS, seconds=SECONDS, rows=rows, notes=[],
    ).rstrip("\n")
    text += "\n\n" + "\n".join(extra_table(rows, extras)) + "\n\n"
    text += "\n".join(f"- {line}" for line in lines) + "\n"
    update_results(RESULTS, text, SECTION_HEADER, begin=BEGIN, end=END, keep=KEEP_RUNS)
    e2e_summary(text)
    benchmark.extra_info.update({
        "rows": {name: {"rps": round(m.rps), "p50_us": m.p50_us, "p99_us": m.p99_us,
                        "proxy_cores": round(m.proxy_cores, 3),
                        "as_calls_per_request": round(extras[name].as_calls
                                                      / max(extras[name].requests, 1), 4)}
                 for name, m in rows.items()},
        "ratios": lines,
    })

    for m in warmups + list(rows.values()):
        assert m.requests > 0, f"{m.target}: no response at all"
        assert m.error_count == 0, f"{m.target}: errors {m.errors}\n{log_tail}"
        assert set(m.status) == {"200"}, f"{m.target}: statuses {m.status}\n{log_tail}"
    assert server["unauthenticated"] == 0, f"calls without client credentials: {server}"
    assert server["inactive"] == 0, f"the server was asked about unknown tokens: {server}"
    # One call when the token is first seen, then one each time its answer expires.
    allowed = 1 + math.ceil(elapsed / CACHE_TTL)
    cached_calls = warm_extras[CACHED].as_calls + extras[CACHED].as_calls
    assert cached_calls <= max(2, allowed), (
        f"the cached row made {cached_calls} introspection calls in {elapsed:.0f} s")
