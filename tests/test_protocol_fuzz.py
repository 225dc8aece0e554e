"""Hostile bytes against the client protocol, in-process: never a 500, never an exception
escaping into the event loop, and a request reaches the upstream only when it was valid.

The worker's real objects are driven with transports that only collect bytes
(tests/support/inprocess.py, shared with bench/bench_pipeline.py); hypothesis mutates well-formed requests (byte flips, stray CR/LF,
spaces and colons, duplicated framing headers, truncation) and also throws raw noise.
"""

from __future__ import annotations

import logging

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxgate._core import HEADER_KINDS_CACHE_MAX
from tests.support.inprocess import wire_gateway
from tests.support.mutations import mutated

SEEDS = [
    b"GET /api/a?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    b"POST /api/b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /api/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /api/%7Ed/./e//f HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]
NASTY = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"%", b"%2e", b"%2F", b"\\", b"..",
         b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: b\r\n", b"\xff"]


class UpstreamRecorder:
    """Parses what the gateway sent upstream: every message must be well-formed HTTP."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.messages = 0

    def on_message_complete(self) -> None:
        self.messages += 1

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def run(loop, chunks: list[bytes]) -> tuple[bytes, bytes]:
    wired = wire_gateway(
        loop,
        "access_log: null\nlimits: {max_header_bytes: 2048, max_body_bytes: 64KiB}\n"
        "routes:\n  - route: /api\n    upstream: http://127.0.0.1:9\n    public: true\n"
        "  - route: /ws\n    upstream: http://127.0.0.1:9\n    public: true\n",
    )
    upstream, upstream_transport = wired.upstream, wired.upstream_transport
    for chunk in chunks:
        wired.client.data_received(chunk)
        if upstream.owner is not None and upstream_transport.writes:
            upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return wired.client_transport.out, upstream_transport.out


@st.composite
def mutated_request(draw):
    data = mutated(draw, SEEDS, NASTY, most=4, max_delete=8)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(bytes(data[start:cut]))
        start = cut
    pieces.append(bytes(data[start:]))
    return [p for p in pieces if p]


def check(out: bytes, upstream_out: bytes, caplog) -> None:
    assert b"HTTP/1.1 500 " not in out, out[:300]
    for line in out.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert line[9:12].isdigit()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    # What went upstream is well-formed HTTP that llhttp accepts as requests.
    if upstream_out:
        recorder = UpstreamRecorder()
        try:
            recorder.feed(upstream_out)
        except httptools.HttpParserUpgrade:
            pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated_request())
def test_mutated_requests_never_500(loop, caplog, chunks):
    caplog.clear()
    out, upstream_out = run(loop, chunks)
    check(out, upstream_out, caplog)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4))
def test_noise_never_500(loop, caplog, chunks):
    caplog.clear()
    out, upstream_out = run(loop, chunks)
    check(out, upstream_out, caplog)
    assert upstream_out == b"" or upstream_out[:1].isalpha()


def test_harness_proxies_the_seeds(loop, caplog):
    """The fuzz harness is live: unmutated seeds reach the upstream and get its 200."""
    for seed in SEEDS[:4]:
        out, upstream_out = run(loop, [seed])
        assert out.startswith(b"HTTP/1.1 200 OK\r\n"), (seed, out[:200])
        assert upstream_out.startswith(seed.split(b" ", 1)[0] + b" /api/")
    out, _ = run(loop, [b"GET /api/%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n"])
    assert out.startswith(b"HTTP/1.1 400 ")
    check(out, b"", caplog)


RESPONSE_SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close",
]


@st.composite
def mutated_response(draw):
    data = bytearray(draw(st.sampled_from(RESPONSE_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        if draw(st.booleans()) and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.sampled_from(NASTY))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated_response())
def test_hostile_upstream_responses(loop, caplog, response):
    """A broken upstream gives the client a 502 or a cut connection, never a 500 or a crash."""
    caplog.clear()
    wired = wire_gateway(
        loop, "access_log: null\nroutes:\n  - route: /\n    upstream: http://127.0.0.1:9\n    public: true\n"
    )
    upstream, transport = wired.upstream, wired.client_transport
    wired.client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream.data_received(response)
    if upstream.owner is not None:  # the response is incomplete: the upstream hangs up
        upstream.connection_lost(None)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert b"HTTP/1.1 500 " not in transport.out
    if transport.out:
        assert transport.out.startswith(b"HTTP/1.1 ")


def test_header_spellings_classified_once_and_cache_bounded(loop):
    """Every spelling of a special header is recognised, and random names cannot grow the
    per-worker classification cache past its bound."""
    head = b"GET /api/a HTTP/1.1\r\nhOsT: a\r\nX-FLUXGATE-AUTH: forged\r\nKEEP-ALIVE: 5\r\n"
    head += b"".join(b"X-Random-%d: v\r\n" % i for i in range(50)) + b"\r\n"
    out, upstream_out = run(loop, [head])
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"hOsT: a\r\n" in upstream_out
    assert b"forged" not in upstream_out
    assert b"KEEP-ALIVE" not in upstream_out.upper()

    wired = wire_gateway(loop, "routes:\n  - route: /api\n    upstream: http://127.0.0.1:9\n    public: true\n")
    gateway, client = wired.gateway, wired.client
    for batch in range(0, HEADER_KINDS_CACHE_MAX + 200, 100):
        names = b"".join(b"X-N%d: v\r\n" % i for i in range(batch, batch + 100))
        client.data_received(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n" + names + b"\r\n")
    assert len(gateway.header_kinds) <= HEADER_KINDS_CACHE_MAX
