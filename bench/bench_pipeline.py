"""The gateway's own CPU per proxied request, without the kernel.

One worker's real objects (Gateway, ClientConnection, UpstreamConnection, pool) are driven
in-process with transports that only collect bytes, so the figure is the Python + Cython cost
of parsing, routing, rewriting both heads, pooling and counting — the part FluxGate controls.
The e2e bench (bench_e2e.py) adds the two reads and two writes per request the kernel does
for any proxy (strace shows HAProxy makes the same four calls).
"""

from __future__ import annotations

import pytest
import uvloop

from tests.support.inprocess import wire_gateway

REQUEST = b"GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: loadgen\r\nAccept: */*\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n"


@pytest.fixture(scope="module")
def pipeline():
    loop = uvloop.new_event_loop()
    wired = wire_gateway(
        loop, "access_log: null\nroutes:\n  - route: /api\n    upstream: http://127.0.0.1:9\n    public: true\n"
    )
    client, upstream = wired.client, wired.upstream

    def one_request() -> None:
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)

    yield one_request, wired.client_transport, wired.upstream_transport
    loop.close()


@pytest.mark.benchmark(group="pipeline: one proxied GET, in-process")
def test_pipeline_one_request(benchmark, pipeline, record_impl):
    one_request, client_out, upstream_out = pipeline
    benchmark(one_request)
    assert upstream_out.writes[-1].startswith(b"GET /api/items HTTP/1.1\r\n")
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in upstream_out.writes[-1]
    last = client_out.writes[-1]
    assert last.startswith(b"HTTP/1.1 200 OK\r\n") and last.endswith(b"hello, world\n")
    record_impl("fluxgate")
