"""Cluster mode: OAuth sessions and introspection results shared by three nodes.

Three gateway nodes (two workers each, TLS), one redis-server, django-oauth-toolkit as the
OpenID Provider and one recording upstream, all on this machine (loopback). Measured:

* logout reach: a browser signs in through node A and uses its session on B and C; one
  WebSocket bound to the session is open on A and one on C; the browser signs out through
  B. Time from just before the logout request to each WebSocket's close frame (4403), over
  ``--logouts`` rounds;
* Redis commands per 1,000 requests on a session every node holds a copy of (INFO
  commandstats before and after; the nodes' 5 s sweeps included);
* introspection: ``--tokens`` opaque tokens, each presented to A, then B, then C: calls the
  authorization server answered (one per token when results are shared, three without);
* refresh: a second cluster with 3 s access tokens, requests on one session from all three
  nodes for 10 s: refreshes, and refresh tokens presented more than once (reuse).

    .venv/bin/python -m bench.bench_cluster_sessions [--logouts 20] [--tokens 100]
    .venv/bin/python -m pytest bench/bench_cluster_sessions.py     (the same, defaults)

Results also go to bench/results/cluster_sessions.md (or ``$FLUXGATE_BENCH_RESULTS``) under
pytest. Bounded: 8 s per WebSocket close, 10 s of refresh load; processes stopped by PID.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import trustme

from tests.support.authserver import DjangoAuthServer
from tests.support.browserless import Browserless
from tests.support.certs import write_pair
from tests.support.cluster_login import (
    SESSION_COOKIE,
    callback_url,
    echo,
    node_config,
    session_get,
    signed_out_url,
    tls_listen,
    ws_connect,
)
from tests.support.gateway import GatewayProcess, free_port
from tests.support.redis_server import RedisServer, redis_unavailable
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.e2e

NODES = 3
WORKERS = 2
REQUESTS = 1000
REFRESH_LOAD_S = 10.0
HEADER = "## Cluster mode: OAuth sessions and introspection (bench/bench_cluster_sessions.py)"


class Site:
    """Three nodes behind one login client (the callback is node A's)."""

    def __init__(self, directory: Path, redis: RedisServer, server: DjangoAuthServer,
                 upstream: RecordingUpstream, ca: trustme.CA, access_token_seconds: int,
                 **options: object) -> None:
        self.ca = ca
        self.server = server
        ports = [free_port() for _ in range(NODES)]
        self.client = server.register_client([callback_url(ports[0])],
                                             [signed_out_url(ports[0])],
                                             access_token_seconds=access_token_seconds)
        leaf = ca.issue_cert("127.0.0.1")
        self.nodes: list[GatewayProcess] = []
        for index, port in enumerate(ports):
            node_dir = directory / f"node{index}"
            node_dir.mkdir()
            cert, key = write_pair(leaf, directory, f"node{index}")
            text = node_config(redis.url, f"n{index}", server, self.client, ports[0],
                               upstream.url, **options)
            self.nodes.append(GatewayProcess(node_dir, text, workers=WORKERS,
                                             listen=tls_listen(port, cert, key)).start())

    def url(self, node: int) -> str:
        return f"https://127.0.0.1:{self.nodes[node].port}"

    def sign_in(self) -> Browserless:
        browser = Browserless(ca=self.ca)
        hops = browser.login(self.url(0) + "/app/page", "alice", self.server.password("alice"))
        assert hops[-1].status == 200, hops[-1].text
        return browser

    def get(self, node: int, cookie: str | None, path: str = "/app/api/x",
            bearer: str | None = None) -> int:
        return session_get(self.nodes[node].port, self.ca, cookie, path, bearer)[0]

    def stop(self) -> None:
        for gw in self.nodes:
            gw.stop()


def _close_time(ws, started: float, out: list, index: int) -> None:
    _before, close = ws.recv_until_close()
    out[index] = (time.perf_counter() - started, close.close_code if close else None)


def logout_reach(site: Site, rounds: int) -> tuple[list[float], Counter]:
    times, codes = [], Counter()
    for _ in range(rounds):
        browser = site.sign_in()
        cookie = browser.cookie(SESSION_COOKIE)
        assert site.get(1, cookie) == 200 and site.get(2, cookie) == 200
        sockets = [ws_connect(site.nodes[n].port, cookie, site.url(0), site.ca) for n in (0, 2)]
        for ws in sockets:
            assert echo(ws, b"hello")
        seen: list = [None] * len(sockets)
        started = time.perf_counter()
        waiters = [threading.Thread(target=_close_time, args=(ws, started, seen, i))
                   for i, ws in enumerate(sockets)]
        for t in waiters:
            t.start()
        assert browser.get(site.url(1) + "/.fluxgate/logout").status == 303
        for t in waiters:
            t.join(10)
        times.append(max(s[0] for s in seen))
        codes.update(s[1] for s in seen)
    return times, codes


def redis_calls(redis: RedisServer) -> int:
    stats = redis.client().info("commandstats")
    return sum(v["calls"] for v in stats.values())


def commands_per_requests(site: Site, redis: RedisServer) -> tuple[int, float, Counter]:
    cookie = site.sign_in().cookie(SESSION_COOKIE)
    for node in range(NODES):
        assert site.get(node, cookie) == 200  # every node holds a copy
    before = redis_calls(redis)
    started = time.perf_counter()
    statuses = Counter(site.get(i % NODES, cookie) for i in range(REQUESTS))
    elapsed = time.perf_counter() - started
    return redis_calls(redis) - before - 1, elapsed, statuses  # minus the INFO itself


def introspection_calls(site: Site, tokens: int) -> tuple[int, Counter]:
    issued = [site.server.issue_token(scope="read:inventory", user="alice")
              for _ in range(tokens)]
    before = site.server.introspection_calls()
    statuses = Counter(site.get(node, None, "/inventory/x", bearer=token)
                       for token in issued for node in range(NODES))
    return site.server.introspection_calls() - before, statuses


def refresh_load(site: Site) -> tuple[Counter, dict[str, int], bool]:
    cookie = site.sign_in().cookie(SESSION_COOKIE)
    statuses: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + REFRESH_LOAD_S

    def hammer(node: int) -> None:
        local: Counter = Counter()
        while time.monotonic() < deadline:
            local[site.get(node, cookie)] += 1
        with lock:
            statuses.update(local)

    threads = [threading.Thread(target=hammer, args=(n % NODES,)) for n in range(2 * NODES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REFRESH_LOAD_S + 30)
    uses = site.server.refresh_token_uses(site.client)
    return statuses, uses, site.server.refresh_reuse_detected(site.client)


def measure(directory: Path, logouts: int, tokens: int) -> dict:
    ca = trustme.CA()
    redis = RedisServer(directory).start()
    upstream = RecordingUpstream().start()
    server = DjangoAuthServer(directory).start()
    sites: list[Site] = []
    try:
        (directory / "site").mkdir()
        site = Site(directory / "site", redis, server, upstream, ca, 60)
        sites.append(site)
        times, codes = logout_reach(site, logouts)
        commands, elapsed, statuses = commands_per_requests(site, redis)
        calls, intro_statuses = introspection_calls(site, tokens)
        site.stop()
        (directory / "refresh").mkdir()
        fast = Site(directory / "refresh", redis, server, upstream, ca, 3, refresh_leeway="1s")
        sites.append(fast)
        refresh_statuses, uses, reuse = refresh_load(fast)
        return {"logouts": logouts, "times": times, "codes": codes, "commands": commands,
                "requests_seconds": elapsed, "statuses": statuses, "tokens": tokens,
                "introspection_calls": calls, "intro_statuses": intro_statuses,
                "refresh_statuses": refresh_statuses, "uses": uses, "reuse": reuse}
    finally:
        for s in sites:
            s.stop()
        server.stop()
        upstream.stop()
        redis.stop(save=False)


def summary(r: dict) -> list[str]:
    ordered = sorted(r["times"])
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    total = sum(r["refresh_statuses"].values())
    return [
        f"- {NODES} nodes x {WORKERS} workers, one redis-server, django-oauth-toolkit, all on "
        "this machine",
        f"- logout through node B to the 4403 close frame on A and C ({r['logouts']} logouts): "
        f"median {statistics.median(ordered) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms; close codes {dict(r['codes'])}",
        f"- Redis commands for {REQUESTS} session requests spread over the nodes (copies held, "
        f"{r['requests_seconds']:.1f} s, sweeps included): {r['commands']}; "
        f"statuses {dict(r['statuses'])}",
        f"- introspection: {r['tokens']} tokens x {NODES} nodes -> "
        f"{r['introspection_calls']} calls to the authorization server; "
        f"statuses {dict(r['intro_statuses'])}",
        f"- refresh: 3 s access tokens, {2 * NODES} clients on {NODES} nodes for "
        f"{REFRESH_LOAD_S:.0f} s: {total} requests, statuses {dict(r['refresh_statuses'])}, "
        f"{len(r['uses'])} refreshes, most uses of one refresh token "
        f"{max(r['uses'].values(), default=0)}, reuse detected: {r['reuse']}",
    ]


def check(r: dict) -> None:
    assert r["codes"] == Counter({4403: 2 * r["logouts"]}), r["codes"]
    assert max(r["times"]) < 1.0, r["times"]  # within a second of the logout
    assert r["introspection_calls"] == r["tokens"]
    assert set(r["statuses"]) == {200} and set(r["intro_statuses"]) == {200}
    assert not r["reuse"] and r["uses"] and set(r["refresh_statuses"]) == {200}


def test_cluster_sessions(tmp_path, request, e2e_summary):
    why = redis_unavailable()
    if why:
        pytest.skip(why)
    from bench.support.results import command, results_path, update_results

    result = measure(tmp_path, 20, 100)
    text = "\n".join([f"### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
                      f"- command: `{command(request.config)}` (from the repository root)",
                      *summary(result), ""])
    path = results_path("cluster_sessions")
    update_results(path, text, HEADER, begin="<!-- cluster-sessions-runs:begin -->",
                   end="<!-- cluster-sessions-runs:end -->", keep=6)
    e2e_summary(text + f"\n(written to {path})")
    check(result)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logouts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args(argv)
    why = redis_unavailable()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp), args.logouts, args.tokens)
    print("\n".join(summary(result)))
    check(result)


if __name__ == "__main__":
    main(sys.argv[1:])
