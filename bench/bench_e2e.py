"""End to end, one run, same machine, same load: loadgen → upstream directly, → FluxGate
(1 worker, public route, no access log), → HAProxy (``nbthread 1``), → nginx
(``worker_processes 1``, when it can be installed).

``pytest bench/`` runs it; ``pytest bench/ -m "not e2e"`` skips it. HAProxy and nginx are
installed with apt when missing (the test skips if HAProxy cannot be). Method:

* The upstream is bench/support/upstream.py (a fixed ~110-byte 200, keep-alive) in its own
  process. tools.loadgen drives a closed loop: 50 connections, one loadgen process.
* On a machine with 2+ usable CPUs the proxy under test is pinned to the last CPU, loadgen and
  upstream to the first (so a proxy gets one core, as the target is per core).
* Every target first gets a 1 s warm-up, then its measured time in four slices, interleaved
  A B C D D C B A A B C D D C B A, so slow drifts of a shared machine hit every target
  alike.
* Besides req/s and latency, each row reports the proxy's CPU use (cores) and req/s per proxy
  core; when the client core saturates first (a fast proxy), only the per-core figure
  compares proxies. "others' CPU" is what processes outside the run used meanwhile.

The table goes to the terminal summary and, newest first, to bench/RESULTS.md. The test
asserts that every run (warm-ups included) had no error and only 200s; the ratios are
reported, not asserted (see RESULTS.md for the target).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from bench.support import cpu, peers
from bench.support.measure import Measurement, Target, interleaved, proxy_target
from bench.support.results import ratios, run_text, update_results
from bench.support.upstream import start_upstream
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"

SECONDS = float(os.environ.get("FLUXGATE_BENCH_E2E_SECONDS", "8"))  # measured, per target
WARMUP_SECONDS = 1.0
CONNECTIONS = 50
PATH = "/bench/hello"

FLUXGATE_CONFIG = """\
workers: 1
access_log: null
routes:
  - route: /bench
    upstream: http://127.0.0.1:{port}
    public: true
"""

SECTION_HEADER = """\
## End-to-end: public route — FluxGate vs HAProxy vs nginx (bench/bench_e2e.py)

Closed loop through each target to the same fixed-response upstream
(bench/support/upstream.py); see the docstring of bench/bench_e2e.py for the method.
Columns: req/s over the measured time; p50 is the request-weighted mean of the slices'
p50, p99 the worse half's; proxy CPU in cores (CPU seconds per second, master + workers);
req/s per proxy core = req/s ÷ proxy CPU; others' CPU = cores used meanwhile by processes
outside the run (other users of the machine).
"""


def test_e2e_public_route(benchmark, tmp_path, request, e2e_summary):
    benchmark.group = "e2e: public route"
    try:
        haproxy_bin = peers.ensure_installed("haproxy")
    except peers.PeerUnavailable as exc:
        pytest.skip(f"HAProxy peer unavailable: {exc}")
    skipped: list[str] = []
    try:
        nginx_bin: str | None = peers.ensure_installed("nginx")
    except peers.PeerUnavailable as exc:
        nginx_bin = None
        skipped.append(f"nginx not measured: {exc}")
    versions = [peers.version(haproxy_bin)] + ([peers.version(nginx_bin)] if nginx_bin else [])
    client_cpus, proxy_cpus, plan = cpu.plan()

    with contextlib.ExitStack() as stack:
        stack.enter_context(cpu.pinned(client_cpus))  # the upstream and loadgen inherit it
        upstream = start_upstream()
        stack.callback(upstream.stop)

        targets = [Target("direct", upstream.url)]
        (tmp_path / "fluxgate").mkdir()
        gateway = GatewayProcess(
            tmp_path / "fluxgate", FLUXGATE_CONFIG.format(port=upstream.port), workers=1
        )
        stack.callback(gateway.stop)
        gateway.start()
        assert gateway.proc is not None
        fluxgate = proxy_target("fluxgate", gateway.proc.pid, gateway.url, proxy_cpus)
        assert len(fluxgate.proxy_pids) == 2, f"expected master + 1 worker: {fluxgate.proxy_pids}"
        targets.append(fluxgate)
        haproxy = peers.haproxy(haproxy_bin, tmp_path / "haproxy", upstream.port)
        stack.callback(haproxy.stop)
        targets.append(proxy_target("haproxy", haproxy.start().pid, haproxy.url, proxy_cpus))
        if nginx_bin:
            nginx = peers.nginx(nginx_bin, tmp_path / "nginx", upstream.port)
            stack.callback(nginx.stop)
            nginx.start()
            targets.append(proxy_target("nginx", nginx.pid, nginx.url, proxy_cpus))

        def run() -> tuple[list[Measurement], dict[str, Measurement]]:
            return interleaved([(t.name, t, PATH, None) for t in targets],
                               warmup=WARMUP_SECONDS, seconds=SECONDS,
                               connections=CONNECTIONS, upstream_pid=upstream.pid)

        warmups, rows = benchmark.pedantic(run, rounds=1, iterations=1)

    ratio_lines = ratios(rows)
    text = run_text(
        request.config, versions=versions, plan=plan, connections=CONNECTIONS,
        warmup=WARMUP_SECONDS, seconds=SECONDS, rows=rows, notes=ratio_lines + skipped,
    )
    update_results(RESULTS, text, SECTION_HEADER)
    e2e_summary(text)
    benchmark.extra_info.update(
        {
            "plan": plan,
            "rows": {
                name: {
                    "rps": round(m.rps), "p50_us": m.p50_us, "p99_us": m.p99_us,
                    "errors": m.error_count, "non_200": m.non_200,
                    "proxy_cores": round(m.proxy_cores, 3), "others_cores": round(m.others_cores, 3),
                }
                for name, m in rows.items()
            },
            "ratios": ratio_lines,
        }
    )

    for m in warmups + list(rows.values()):
        assert m.requests > 0, f"{m.target}: no response at all"
        assert m.error_count == 0, f"{m.target}: errors {m.errors}"
        assert set(m.status) == {"200"}, f"{m.target}: statuses {m.status}"
