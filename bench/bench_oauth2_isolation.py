"""A slow authorization server does not slow a worker's other requests.

One FluxGate worker; tokens wait 2 s on a slow introspection endpoint
(tests/support/bad_authserver.py in "slow" mode) while the same worker serves 200 public
requests, each on a new connection, one after another. The public route's latency is
measured before and during the wait, and printed; asserted: the wait does not show in it
(p99 during the wait under 50 ms) and the waiting requests still get their 200.

    .venv/bin/python -m pytest bench/bench_oauth2_isolation.py -s
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from tests.e2e.test_oauth2 import oauth2_routes, request
from tests.support.bad_authserver import BadAuthServer
from tests.support.gateway import GatewayProcess
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.e2e

SAMPLES = 200
SLOW_TOKENS = 3
DELAY = 2.0


def _public_latencies(port: int) -> list[float]:
    out = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        assert request(port, "/public")[0] == 200
        out.append((time.perf_counter() - started) * 1000.0)
    return out


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"p50 {statistics.median(values):.2f} ms, p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms"


def test_slow_authorization_server_does_not_delay_public_route(benchmark, tmp_path):
    benchmark.group = "oauth2: side pool isolation"
    upstream = RecordingUpstream().start()
    try:
        with BadAuthServer(client_id="gw", client_secret="s3cret", delay=DELAY) as server:
            tokens = [server.add_token(scope="read") for _ in range(SLOW_TOKENS)]
            gw = GatewayProcess(tmp_path, oauth2_routes(upstream.url, server, timeout="5s"),
                                workers=1).start()
            try:
                def run() -> tuple[list[float], list[float], list[int], float]:
                    baseline = _public_latencies(gw.port)
                    server.mode = "slow"
                    statuses: list[int] = []
                    waiting = [threading.Thread(
                        target=lambda t=t: statuses.append(request(gw.port, "/orders", t)[0]))
                        for t in tokens]
                    started = time.monotonic()
                    for thread in waiting:
                        thread.start()
                    time.sleep(0.1)  # the tokens' requests now wait on the server
                    during = _public_latencies(gw.port)
                    measured_within = time.monotonic() - started
                    for thread in waiting:
                        thread.join(DELAY + 5)
                    return baseline, during, statuses, measured_within

                baseline, during, statuses, within = benchmark.pedantic(run, rounds=1,
                                                                         iterations=1)
            finally:
                gw.stop()
    finally:
        upstream.stop()
    lines = [
        f"public route, {SAMPLES} requests (new connection each), one worker:",
        f"  before: {_summary(baseline)}",
        f"  while {SLOW_TOKENS} tokens wait {DELAY:g} s on the authorization server: "
        f"{_summary(during)} (all {SAMPLES} within {within:.2f} s of the wait's start)",
        f"  the waiting requests: {sorted(statuses)}",
    ]
    print("\n" + "\n".join(lines))
    benchmark.extra_info["summary"] = lines
    assert statuses == [200] * SLOW_TOKENS
    assert within < DELAY  # every public sample was taken while the tokens waited
    assert sorted(during)[int(SAMPLES * 0.99) - 1] < 50.0
