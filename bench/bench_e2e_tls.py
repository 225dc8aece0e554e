"""End to end, TLS termination: wrk → FluxGate (1 worker, a TLS listener) against wrk → HAProxy
(``nbthread 1``) terminating TLS, per proxy core, same machine, same plain-HTTP upstream.

``pytest bench/ -k e2e_tls`` runs it (``-m "not e2e"`` skips it). Needs haproxy, wrk and
nginx (``make bench-deps``); the method is in bench/support/rounds.py, the rig in
bench/support/e2e.py, the TLS side in bench/support/tls.py.

Both proxies present the same certificate and key and start with the same OpenSSL config
(``OPENSSL_CONF``): no session tickets and one list of TLS 1.3 suites. Before the load a probe
connects to each three times, offering the last session each time, and reports what was
negotiated (version, suite, group, signature) and how many connections were resumed; the
bench asserts that both negotiated the same and that none was resumed. The comparisons:

* ``tls 1.3 keep-alive`` (ECDSA P-256): wrk -c32 over https, keep-alive: the cost of TLS
  records on the request path (the 32 handshakes of a run are noise). Goal ≥ 0.9× HAProxy
  per core.
* ``tls new connection per request, <key>``: ``Connection: close`` on every request, so every
  request is a new TCP connection and a full TLS 1.3 handshake (ECDHE X25519 and the
  certificate's signature) on both sides. HAProxy's own counters (``show info``:
  CumSslConns) confirm one TLS connection per request on its side. Goal ≥ 0.8× HAProxy per
  core, for each key:

  - ``ECDSA P-256`` (``test_e2e_tls``, beside keep-alive): the server signs in ~20 µs and wrk
    verifies in ~60 µs (``openssl speed``), so the client side tends to set the pace;
  - ``RSA-2048`` (``test_e2e_tls_rsa``, its own proxies): the server's signature (~220 µs)
    dominates the handshake and wrk's verification is ~8 µs, so the proxy saturates first and
    the row measures the proxies' handshake paths.

  wrk 4.1 busy-polls its handshakes (bench/support/rounds.py; the bench counts its read()
  calls per request to tell): then its CPU fills what the client CPU has spare and the flags
  come from the proxies' CPU instead (a proxy below 0.9 core with its CPU otherwise quiet was
  held back by the client side). tools/loadgen/README.md says how to build a wrk that waits.

Results: bench/results/e2e-tls.md (untracked) or ``$FLUXGATE_BENCH_RESULTS``, and the goals
table at the end of the session. Asserted: every run answered, with no transport error and
no status ≥ 400; equal TLS parameters and no resumption on both sides; the ratios are
reported, not asserted.
"""

from __future__ import annotations

import pytest

from bench.support.e2e import PUBLIC_PATH, public_config, report, rig
from bench.support.rounds import GOAL_BY_NAME, Comparison, Side
from bench.support.tls import haproxy_info, haproxy_tls, probe, tls_files

pytestmark = pytest.mark.e2e

PATH = PUBLIC_PATH
KEEP_ALIVE = "tls 1.3 keep-alive"
ECDSA = "ECDSA P-256"
RSA = "RSA-2048"


def new_connections(key_type: str) -> str:
    """The comparison (and goal) name of a full handshake per request with ``key_type``."""
    return f"tls new connection per request, {key_type}"


HEADER = """\
## End-to-end: TLS termination — FluxGate vs HAProxy, per proxy core (bench/bench_e2e_tls.py)

wrk → proxy (TLS 1.3, the same certificate, suites and OpenSSL config on both; no session
tickets) → fixed-response upstream over plain HTTP; method in bench/support/rounds.py.
`keep-alive`: 32 connections kept open. `new connection per request`: `Connection: close` on
every request, a full handshake each, with an ECDSA P-256 certificate (the server's signature
is cheaper than wrk's verification) and with an RSA-2048 one (the server's private-key
operation dominates).
"""


def test_e2e_tls(benchmark, tmp_path, request, e2e_summary, e2e_comparisons):
    """ECDSA P-256: keep-alive, and a full handshake per request."""
    _run(benchmark, tmp_path, request, e2e_summary, e2e_comparisons, ECDSA, keep_alive=True)


def test_e2e_tls_rsa(benchmark, tmp_path, request, e2e_summary, e2e_comparisons):
    """RSA-2048: a full handshake per request (keep-alive does not depend on the key)."""
    _run(benchmark, tmp_path, request, e2e_summary, e2e_comparisons, RSA, keep_alive=False)


def _run(benchmark, tmp_path, request, e2e_summary, e2e_comparisons, key_type: str, *,
         keep_alive: bool) -> None:
    benchmark.group = f"e2e: tls, {key_type}"
    files = tls_files(tmp_path / "tls", key_type)
    with rig(tmp_path, public_config, haproxy_tls(files),
             listen=files.fluxgate_listen(), gateway_env=files.env) as r:
        stats = tmp_path / "haproxy" / "stats.sock"
        seen = {"fluxgate": probe(r.gateway.port, PATH), "haproxy": probe(_port(r.haproxy.url), PATH)}
        for label, handshakes in seen.items():
            assert handshakes.resumed == 0, f"{label} resumed a session: {handshakes.describe()}"
        ours, theirs = seen["fluxgate"], seen["haproxy"]
        assert (ours.connections[0][:2], ours.group, ours.signature) == \
            (theirs.connections[0][:2], theirs.group, theirs.signature), seen

        close = ("Connection: close",)
        comparisons = []
        if keep_alive:
            comparisons.append(Comparison(KEEP_ALIVE, Side("fluxgate", r.fluxgate, PATH),
                                          Side("haproxy", r.haproxy, PATH), GOAL_BY_NAME[KEEP_ALIVE]))
        name = new_connections(key_type)
        closing = Comparison(name, Side("fluxgate", r.fluxgate, PATH, close),
                             Side("haproxy", r.haproxy, PATH, close), GOAL_BY_NAME[name])
        comparisons.append(closing)
        before = haproxy_info(stats)

        def run():
            return [r.run(c) for c in comparisons]

        benchmark.pedantic(run, rounds=1, iterations=1)
        after = haproxy_info(stats)
        connections = int(after["CumSslConns"]) - int(before["CumSslConns"])
        close_requests = sum(s.requests for s in closing.samples() if s.label == "haproxy")
        kept_requests = sum(1 for c in comparisons if c is not closing
                            for s in c.samples() if s.label == "haproxy")
        notes = [
            f"certificate: {files.description}; OpenSSL config for both: no session tickets "
            "(NumTickets = 0), TLS 1.3 suites in OpenSSL's default order",
            *(f"probe of {label}: {h.describe()}" for label, h in seen.items()),
            f"HAProxy's TLS connections over the comparisons: {connections:,} for "
            f"{close_requests:,} requests with Connection: close and {kept_requests} keep-alive "
            "runs of 32 connections each",
        ]
        report(request, benchmark, r, name="e2e-tls", header=HEADER, comparisons=comparisons,
               notes=notes, e2e_summary=e2e_summary, e2e_comparisons=e2e_comparisons)
        # Every request with Connection: close was its own TLS connection on HAProxy's side
        # (the probe showed neither side resumes); the keep-alive runs add 32 each, more when
        # wrk reconnects after a timeout.
        assert connections >= close_requests + 32 * kept_requests


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
