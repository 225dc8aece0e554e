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

from fluxgate.config.loader import load_config_text
from fluxgate.proxy.app import Gateway
from fluxgate.proxy.protocol import ClientConnection
from fluxgate.proxy.upstream import UpstreamConnection

REQUEST = b"GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: loadgen\r\nAccept: */*\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n"


class CollectingTransport:
    """Enough of asyncio.Transport for the protocols: keeps what is written."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.fixture(scope="module")
def pipeline():
    loop = uvloop.new_event_loop()
    config = load_config_text(
        "access_log: null\nroutes:\n  - route: /api\n    upstream: http://127.0.0.1:9\n    public: true\n"
    )
    gateway = Gateway(loop, config)
    pool = gateway.routes[0].group.pools[0]
    upstream = UpstreamConnection(pool)
    upstream.connection_made(CollectingTransport())
    pool._members.add(upstream)
    pool.open_count = 1
    pool.idle.append(upstream)  # a warm pooled connection, as under load
    client = ClientConnection(gateway)
    client_transport = CollectingTransport()
    client.connection_made(client_transport)

    def one_request() -> None:
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)

    yield one_request, client_transport, upstream.transport
    loop.close()


@pytest.mark.benchmark(group="pipeline: one proxied GET, in-process")
def test_pipeline_one_request(benchmark, pipeline, record_impl):
    one_request, client_out, upstream_out = pipeline
    benchmark(one_request)
    assert upstream_out.out[-1].startswith(b"GET /api/items HTTP/1.1\r\n")
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in upstream_out.out[-1]
    last = client_out.out[-1]
    assert last.startswith(b"HTTP/1.1 200 OK\r\n") and last.endswith(b"hello, world\n")
    record_impl("fluxgate")
