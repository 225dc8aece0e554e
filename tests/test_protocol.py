"""The data plane through a real `fluxgate run` process: framing, hygiene, streaming, limits."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.support.gateway import child_pids, free_port, raw_request
from tests.support.websocket import OP_BINARY, OP_TEXT, WsClient

INVALID = Path(__file__).parent / "data" / "http" / "invalid"
INVALID_CASES = sorted(p.stem for p in INVALID.glob("*.http"))


def routes(upstream_url: str, extra: str = "") -> str:
    return f"""
limits: {{max_header_bytes: 16384, max_body_bytes: 1MiB, header_timeout: 1s, idle_timeout: 2s}}
upstreams:
  app: {{targets: ["{upstream_url}"], connect_timeout: 1s, read_timeout: 1s, pool_size: 8}}
routes:
  - route: /api
    upstream: app
    public: true
  - route: /api/admin
    upstream: app
    methods: [GET]
    public: true
  - route: /ws
    upstream: app
    public: true
  - route: /private
    upstream: app
    public: true
    middleware:
      - ip_allow: [10.0.0.0/8]
  - route: /strip
    upstream: app
    public: true
    strip_prefix: true
{extra}
"""


@pytest.fixture
def gw(gateway_factory, upstream):
    return gateway_factory(routes(upstream.url))


def read_response(sock: socket.socket) -> bytes:
    """Read one Content-Length response from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response[9:12])


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse a stream of Content-Length / chunked responses (enough for these tests)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.decode().lower()] = v.decode().strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body += rest[:size]
                rest = rest[size + 2:]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        out.append((status, headers, body))
    return out


@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_request_is_refused_and_never_reaches_upstream(case, gw, upstream):
    raw = (INVALID / f"{case}.http").read_bytes()
    expected = int((INVALID / f"{case}.expect").read_text())
    response = raw_request(gw.port, raw, timeout=3)
    assert status_of(response) == expected, response[:300]
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    error = json.loads(body)
    assert set(error) == {"error", "error_description", "request_id"}
    time.sleep(0.05)
    assert upstream.requests == [], f"{case} reached the upstream: {upstream.requests}"
    assert upstream.raw_bytes == 0


def test_get_proxied_with_forwarding_headers_and_hygiene(gw, upstream):
    response = raw_request(
        gw.port,
        b"GET /api/items?x=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: close, X-Secret\r\n"
        b"X-Secret: drop-me\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
        b"X-FluxGate-Auth: forged\r\nx-fluxgate-subject: admin\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Request-Id: abc-123\r\nX-Custom: kept\r\n\r\n",
    )
    assert status_of(response) == 200
    assert b"X-Request-Id: abc-123" in response
    [received] = upstream.requests
    names = received.header_names()
    assert received.target == "/api/items?x=1"
    for dropped in ("x-secret", "keep-alive", "te", "proxy-connection", "connection",
                    "x-fluxgate-auth", "x-fluxgate-subject"):
        assert dropped not in names, dropped
    assert received.header("X-Forwarded-For") == "127.0.0.1"  # untrusted peer: replaced
    assert received.header("X-Forwarded-Proto") == "http"
    assert received.header("X-Forwarded-Host") == "shop.test"
    assert received.header("Host") == "shop.test"
    assert received.header("X-Request-Id") == "abc-123"
    assert received.header("X-Custom") == "kept"


def test_request_id_generated_when_missing_or_hostile(gw, upstream):
    response = raw_request(
        gw.port, b"GET /api/a HTTP/1.1\r\nHost: a\r\nX-Request-Id: <script>\r\nConnection: close\r\n\r\n"
    )
    [received] = upstream.requests
    rid = received.header("X-Request-Id")
    assert rid and rid != "<script>"
    assert f"X-Request-Id: {rid}".encode() in response


def test_routing_longest_prefix_and_normalization(gw, upstream):
    data = (
        b"GET /api/admin/users HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /api/admin/users HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        b"GET /api/./x//y/../z HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /apix HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /%61pi/%7Euser HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    responses = split_responses(raw_request(gw.port, data))
    assert [r[0] for r in responses] == [200, 405, 200, 404, 200]
    assert responses[1][1]["allow"] == "GET, HEAD"
    assert json.loads(responses[3][2])["error"] == "no_route"
    targets = [r.target for r in upstream.requests]
    assert targets == ["/api/admin/users", "/api/x/z", "/api/~user"]


def test_strip_prefix(gw, upstream):
    raw_request(gw.port, b"GET /strip/a/b?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert upstream.requests[0].target == "/a/b?q=1"


def test_pipelined_requests_answered_in_order(gw, upstream):
    data = b"".join(
        b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n" % p
        for p in (b"api/slow/150", b"api/one", b"nothing", b"api/slow/50", b"api/two")
    ) + b"GET /api/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    responses = split_responses(raw_request(gw.port, data, timeout=5))
    assert [r[0] for r in responses] == [200, 200, 404, 200, 200, 200]
    echoed = [json.loads(body)["target"] for status, _, body in responses if status == 200]
    assert echoed == ["/api/slow/150", "/api/one", "/api/slow/50", "/api/two", "/api/last"]


def test_head_204_304_have_no_body(gw, upstream):
    data = (
        b"HEAD /api/big/5000 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /api/status/204 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /api/status/304 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /api/one HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    response = raw_request(gw.port, data)
    head_resp, rest = response.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 5000" in head_resp
    assert rest.startswith(b"HTTP/1.1 204 ")
    r204, rest = rest.split(b"\r\n\r\n", 1)
    assert rest.startswith(b"HTTP/1.1 304 ")
    r304, rest = rest.split(b"\r\n\r\n", 1)
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in r204.lower()


def test_chunked_both_ways_and_close_delimited(gw, upstream):
    data = (
        b"POST /api/chunked/4 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        b"GET /api/close/300 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /api/one HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    responses = split_responses(raw_request(gw.port, data))
    assert [r[0] for r in responses] == [200, 200, 200]
    assert responses[0][2] == b"chunk-0;chunk-1;chunk-2;chunk-3;"
    # close-delimited upstream response becomes chunked so the client connection survives
    assert responses[1][1]["transfer-encoding"] == "chunked"
    assert responses[1][2] == b"x" * 300
    assert upstream.requests[0].body_bytes == 11
    assert upstream.requests[0].header("Transfer-Encoding") == "chunked"


def test_expect_100_continue(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"POST /api/e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        response = read_response(sock)
    assert status_of(response) == 200
    assert upstream.requests[0].body_bytes == 4
    assert upstream.requests[0].header("Expect") is None


def test_expect_100_not_sent_when_refused(gw, upstream):
    response = raw_request(
        gw.port, b"POST /private HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert status_of(response) == 403
    assert b"100 Continue" not in response
    assert upstream.requests == []


def test_keepalive_reuses_upstream_connection(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        for _ in range(20):
            sock.sendall(b"GET /api/k HTTP/1.1\r\nHost: a\r\n\r\n")
            assert status_of(read_response(sock)) == 200
    assert len(upstream.requests) == 20
    assert upstream.connections == 1


def test_ip_allow_and_spoofed_forwarded_for(gw, upstream):
    response = raw_request(
        gw.port, b"GET /private HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 403
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] == "ip_not_allowed"
    assert upstream.requests == []


def test_ip_allow_believes_trusted_proxy(gateway_factory, upstream):
    gw = gateway_factory("trusted_proxies: [127.0.0.0/8]\n" + routes(upstream.url))
    ok = raw_request(
        gw.port,
        b"GET /private HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: close\r\n\r\n",
    )
    assert status_of(ok) == 200
    assert upstream.requests[0].header("X-Forwarded-For") == "10.1.2.3, 127.0.0.1"
    # a client in the allowed network cannot be faked by prepending when the last hop is outside
    refused = raw_request(
        gw.port,
        b"GET /private HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.2.3, 8.8.8.8\r\nConnection: close\r\n\r\n",
    )
    assert status_of(refused) == 403


def test_upstream_down_is_502(gateway_factory):
    port = free_port()  # nothing listens there
    gw = gateway_factory(routes(f"http://127.0.0.1:{port}"))
    response = raw_request(gw.port, b"GET /api/a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 502
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] == "upstream_unavailable"


def test_upstream_read_timeout_is_504(gw, upstream):
    response = raw_request(gw.port, b"GET /api/slow/3000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout=5)
    assert status_of(response) == 504
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] == "upstream_timeout"


def test_upstream_dropping_connection_is_502(gw, upstream):
    response = raw_request(gw.port, b"GET /api/drop HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 502


def test_slowloris_header_timeout_closes(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /api/a HTTP/1.1\r\nHost: a\r\n")
        started = time.monotonic()
        for _ in range(20):  # keeps trickling for ~6 s unless the gateway cuts it
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.3)
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                pass
        elapsed = time.monotonic() - started
    assert elapsed < 3.0  # header_timeout is 1s, checked every 0.25s; headroom for a busy CI
    assert upstream.requests == []


def test_idle_keepalive_timeout_closes(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(read_response(sock)) == 200
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the gateway
        assert 1.5 < time.monotonic() - started < 4


def test_chunked_body_over_limit_is_413(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /api/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
        try:
            for _ in range(20):  # 1.25 MiB > 1 MiB
                sock.sendall(block)
        except OSError:
            pass
        response = b""
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    if response:
        assert status_of(response) in (413, 200) or response == b""
    # the upstream may have seen part of the stream, never a complete request
    assert all(not r.complete for r in upstream.requests)


def test_websocket_upgrade_tunnelled(gw, upstream):
    client = WsClient.connect(gw.port, "/ws/chat")
    try:
        assert b"Upgrade: websocket" in client.response_head
        for opcode, message in ((OP_TEXT, b"ping-1"), (OP_TEXT, b"hello"), (OP_BINARY, b"x" * 100000)):
            client.send(opcode, message)
            echoed = client.recv_frame()
            assert echoed is not None and (echoed.opcode, echoed.payload) == (opcode, message)
    finally:
        client.close()
    assert upstream.requests[0].header("Upgrade") == "websocket"


def test_h2c_upgrade_is_not_tunnelled(gw, upstream):
    data = (
        b"GET /api/a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        b"GET /api/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    responses = split_responses(raw_request(gw.port, data))
    assert [r[0] for r in responses] == [200, 200]
    assert [r.target for r in upstream.requests] == ["/api/a", "/api/b"]
    assert upstream.requests[0].header("Upgrade") is None


def test_large_upload_streams_without_buffering(gateway_factory, upstream):
    config = routes(upstream.url).replace("max_body_bytes: 1MiB", "max_body_bytes: 2GiB")
    gw = gateway_factory(config)
    worker_pid = min(child_pids(gw.proc.pid))
    rss_before = _rss_kib(worker_pid)
    size = 300 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(b"POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"u" * (1 << 20)
        for _ in range(size // len(block)):
            sock.sendall(block)
        response = read_response(sock)
    assert status_of(response) == 200
    assert upstream.requests[0].body_bytes == size
    grown_mib = (_peak_kib(worker_pid) - rss_before) / 1024
    assert grown_mib < 32, f"worker grew by {grown_mib:.0f} MiB while streaming {size >> 20} MiB"


def test_large_download_streams(gw, upstream):
    size = 50 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(b"GET /api/big/%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % size)
        total = 0
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    assert total > size


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_stale_pooled_connection_retried_once_for_idempotent(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"GET /api/dropreused HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(read_response(sock)) == 200
        sock.sendall(b"GET /api/dropreused HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(read_response(sock)) == 200  # replayed on a fresh connection
        sock.sendall(b"POST /api/dropreused HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        assert status_of(read_response(sock)) == 502  # never replayed: not idempotent
    assert upstream.connections == 2  # the replay and the POST shared the fresh one
    assert [r.method for r in upstream.requests] == ["GET", "GET", "GET", "POST"]


def test_round_robin_over_targets(gateway_factory):
    from tests.support.upstream import RecordingUpstream

    first, second = RecordingUpstream().start(), RecordingUpstream().start()
    try:
        gw = gateway_factory(
            f"""
upstreams:
  app: {{targets: ["{first.url}", "{second.url}"]}}
routes:
  - route: /
    upstream: app
    public: true
"""
        )
        with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
            for _ in range(10):
                sock.sendall(b"GET /rr HTTP/1.1\r\nHost: a\r\n\r\n")
                assert status_of(read_response(sock)) == 200
        assert len(first.requests) == 5 and len(second.requests) == 5
    finally:
        first.stop()
        second.stop()


def test_pool_size_bounds_upstream_connections(gateway_factory, upstream):
    gw = gateway_factory(routes(upstream.url).replace("pool_size: 8", "pool_size: 2"))
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(6)]
    try:
        for sock in socks:
            sock.sendall(b"GET /api/slow/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        statuses = [status_of(read_response(sock)) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [200] * 6
    assert upstream.connections == 2


def test_crashing_middleware_fails_closed(monkeypatch, upstream):
    """A bug in a chain stage answers 500, never forwards the request, never hangs."""
    import asyncio

    import uvloop

    from fluxgate.config.loader import load_config_text
    from fluxgate.proxy.app import Gateway
    from fluxgate.proxy.protocol import ClientConnection

    loop = uvloop.new_event_loop()
    config = load_config_text(
        f"access_log: null\nroutes:\n  - route: /\n    upstream: {upstream.url}\n    public: true\n"
    )
    gateway = Gateway(loop, config)

    def broken(req):
        raise RuntimeError("boom")

    gateway.routes[0].chain = gateway.routes[0].steps = (broken,)  # steps: what runs

    class Transport(asyncio.Transport):
        def __init__(self):
            super().__init__()
            self.out = b""

        def write(self, data):
            self.out += data

        def get_extra_info(self, name, default=None):
            return ("127.0.0.1", 1) if name == "peername" else default

        def close(self):
            pass

    transport = Transport()
    conn = ClientConnection(gateway)
    conn.connection_made(transport)
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    loop.close()
    assert transport.out.startswith(b"HTTP/1.1 500 ")
    assert b'"error":"internal_error"' in transport.out
    assert upstream.requests == []
