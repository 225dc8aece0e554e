"""fluxgate.master.admin and sockets: the admin HTTP/1.1 listener, its token, its sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading

import pytest
import uvloop

from fluxgate.config.loader import load_config_text
from fluxgate.errors import ConfigError
from fluxgate.master import admin as admin_mod
from fluxgate.master.admin import AdminServer, ReloadResult, build_router, resolve_admin_token
from fluxgate.master.sockets import bind_admin, bind_listen, bind_tcp, sock_address

TOKEN = "s3cret-admin-token-for-tests"


ROUTES_CONFIG = """
routes:
  - route: /pub
    upstream: http://127.0.0.1:9
    strip_prefix: true
    public: true
  - route: /api
    upstream: http://127.0.0.1:9
    methods: [GET, POST]
    middleware:
      - jwt: {secret: jwt-shared-secret-value-0123456789abcdef, algorithms: [HS256]}
"""


class FakeBackend:
    def __init__(self) -> None:
        self.ready = True
        self.reloads = 0
        self.reload_ok = True
        self.reload_error: BaseException | None = None
        self.config = load_config_text(ROUTES_CONFIG)

    def readiness(self):
        return self.ready, {"workers": 2, "ready": 2 if self.ready else 1}

    def metrics_text(self) -> str:
        return 'fluxgate_requests_total{route="/a",status="200"} 7\n'

    async def reload(self) -> ReloadResult:
        self.reloads += 1
        await asyncio.sleep(0.01)
        if self.reload_ok:
            return ReloadResult(True, 2, 2, 3)
        if self.reload_error is not None:
            return ReloadResult(False, 1, 2, 3, str(self.reload_error), self.reload_error)
        return ReloadResult(False, 1, 2, 3, "routes[0].upstream: bad")


class AdminHarness:
    """An AdminServer on its own uvloop loop in a thread, like the master runs it."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.sock = bind_admin("127.0.0.1:0")
        self.port = sock_address(self.sock)[1]
        self.loop = uvloop.new_event_loop()
        self.errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        self.server = AdminServer(build_router(self.backend), TOKEN)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start(self.sock))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=3)


@pytest.fixture
def admin():
    h = AdminHarness()
    try:
        yield h
    finally:
        h.close()
    assert not h.errors, h.errors  # no unexpected exception on the loop


def read_response(sock: socket.socket, buf: bytearray | None = None):
    """Read one response (Content-Length framed); returns (status, headers, body)."""
    buf = bytearray() if buf is None else buf
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed, got {bytes(buf)!r}"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    del buf[:]
    buf += body[length:]
    return status, headers, bytes(body[:length])


def request(admin, method, path, headers=(), body=b"", version="1.1"):
    with admin.connect() as s:
        lines = [f"{method} {path} HTTP/{version}", "Host: admin", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return read_response(s)


def assert_closed(sock: socket.socket) -> None:
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


AUTH = (("Authorization", f"Bearer {TOKEN}"),)


def test_healthz_and_readyz_need_no_token(admin):
    status, headers, body = request(admin, "GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["content-type"] == "application/json"
    status, _, body = request(admin, "GET", "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    admin.backend.ready = False
    status, _, body = request(admin, "GET", "/readyz")
    assert status == 503 and json.loads(body) == {"status": "not_ready", "workers": 2, "ready": 1}


def test_metrics_requires_the_token(admin):
    status, headers, body = request(admin, "GET", "/metrics")
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="fluxgate"'
    err = json.loads(body)
    assert err["error"] == "missing_credentials" and err["request_id"]
    for value in (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
        status, headers, body = request(admin, "GET", "/metrics", [("Authorization", value)])
        assert status == 401, value
        assert json.loads(body)["error"] == "invalid_token"
        assert 'error="invalid_token"' in headers["www-authenticate"]
        assert TOKEN not in body.decode()
    status, headers, body = request(admin, "GET", "/metrics", AUTH)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4"
    assert body == b'fluxgate_requests_total{route="/a",status="200"} 7\n'
    # The scheme is case-insensitive (RFC 9110 §11.1).
    status, _, _ = request(admin, "GET", "/metrics", [("authorization", f"bearer {TOKEN}")])
    assert status == 200


def test_404_and_405_are_json_errors(admin):
    status, _, body = request(admin, "GET", "/nope", AUTH)
    assert status == 404 and json.loads(body)["error"] == "no_route"
    status, headers, body = request(admin, "POST", "/healthz")
    assert status == 405 and json.loads(body)["error"] == "method_not_allowed"
    assert headers["allow"] == "GET, HEAD"
    status, headers, _ = request(admin, "DELETE", "/metrics", AUTH)
    assert status == 405
    # Without the token a protected path says 401, not which methods it has.
    status, headers, _ = request(admin, "DELETE", "/metrics")
    assert status == 401 and "allow" not in headers
    status, _, _ = request(admin, "GET", "/admin/reload", AUTH)
    assert status == 405


def test_head_has_no_body(admin):
    with admin.connect() as s:
        s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 15" in head
    assert body == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost a\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
    ],
)
def test_malformed_request_is_400_and_closes(admin, raw):
    with admin.connect() as s:
        s.sendall(raw)
        status, headers, body = read_response(s)
        assert status == 400
        assert headers["connection"] == "close"
        assert json.loads(body)["error"] == "bad_request"
        assert_closed(s)


def test_header_size_is_bounded(admin):
    with admin.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (admin_mod.MAX_HEADER_BYTES + 1))
        status, _, body = read_response(s)
        assert status == 431 and json.loads(body)["error"] == "headers_too_large"
        assert_closed(s)


def test_body_size_is_bounded(admin):
    with admin.connect() as s:
        n = admin_mod.MAX_BODY_BYTES + 1
        s.sendall(b"POST /admin/reload HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % n + b"x" * n)
        status, _, _ = read_response(s)
        assert status == 413
    assert admin.backend.reloads == 0


def test_keep_alive_and_pipelining(admin):
    with admin.connect() as s:
        buf = bytearray()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, _ = read_response(s, buf)
        assert status == 200 and "connection" not in headers
        # Two pipelined requests in one write: answered in order on the same connection.
        s.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        status1, _, body1 = read_response(s, buf)
        status2, _, body2 = read_response(s, buf)
        assert (status1, status2) == (200, 200)
        assert body1.startswith(b"fluxgate_requests_total") and b"ready" in body2
        # A client error that keeps the framing intact keeps the connection too.
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(s, buf)[0] == 401
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(s, buf)
        assert status == 200 and headers["connection"] == "close"
        assert_closed(s)


def test_http10_closes(admin):
    with admin.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(s)
        assert status == 200 and headers["connection"] == "close"
        assert_closed(s)


def test_slow_and_idle_connections_are_closed(admin, monkeypatch):
    monkeypatch.setattr(admin_mod, "REQUEST_TIMEOUT", 0.2)
    monkeypatch.setattr(admin_mod, "IDLE_TIMEOUT", 0.2)
    with admin.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")  # never finished
        assert_closed(s)
    with admin.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(s)[0] == 200
        assert_closed(s)  # keep-alive, then idle


def test_post_reload(admin):
    status, _, body = request(admin, "POST", "/admin/reload")
    assert status == 401 and admin.backend.reloads == 0
    status, _, body = request(admin, "POST", "/admin/reload", AUTH)
    assert status == 200
    assert json.loads(body) == {"status": "reloaded", "generation": 2, "workers": 2, "routes": 3}
    admin.backend.reload_ok = False
    status, _, body = request(admin, "POST", "/admin/reload", AUTH)
    assert status == 409
    assert json.loads(body)["error"] == "reload_failed"
    assert "routes[0].upstream" in json.loads(body)["error_description"]


def test_token_rotation(admin):
    admin.server.set_token("another-token-of-enough-length")
    assert request(admin, "GET", "/metrics", AUTH)[0] == 401
    auth = [("Authorization", "Bearer another-token-of-enough-length")]
    assert request(admin, "GET", "/metrics", auth)[0] == 200


def test_resolve_admin_token_file(tmp_path):
    assert resolve_admin_token("from-config", str(tmp_path)) == ("from-config", None)
    assert not (tmp_path / "admin.token").exists()
    token, path = resolve_admin_token(None, str(tmp_path))
    assert path == str(tmp_path / "admin.token") and len(token) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert resolve_admin_token("", str(tmp_path)) == (token, path)  # reused, not regenerated
    os.chmod(path, 0o644)
    assert resolve_admin_token(None, str(tmp_path))[0] == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (tmp_path / "admin.token").write_text("short\n")
    with pytest.raises(OSError):
        resolve_admin_token(None, str(tmp_path))


def test_admin_refuses_non_loopback():
    with pytest.raises(ConfigError) as exc:
        bind_admin("0.0.0.0:0")
    assert "loopback" in str(exc.value)
    with pytest.raises(ConfigError):
        bind_admin("not a listen value")


def test_bind_listen_socket_properties():
    sock = bind_listen("127.0.0.1:0")
    try:
        host, port = sock_address(sock)
        assert host == "127.0.0.1" and port > 0
        assert not sock.getblocking()
        assert sock.get_inheritable()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        with socket.create_connection((host, port), timeout=2):
            pass
        with pytest.raises(OSError):
            bind_tcp("127.0.0.1", port, backlog=1)  # taken (and listening): refused
    finally:
        sock.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_bind_ipv6_loopback():
    try:
        sock = bind_listen("[::1]:0")
    except OSError as exc:  # IPv6 disabled in this sandbox
        pytest.skip(f"::1 not bindable: {exc}")
    try:
        assert sock.family == socket.AF_INET6
        with socket.create_connection(("::1", sock_address(sock)[1]), timeout=2):
            pass
    finally:
        sock.close()


def test_routes_document(admin):
    assert request(admin, "GET", "/admin/routes")[0] == 401
    status, headers, body = request(admin, "GET", "/admin/routes", AUTH)
    assert status == 200 and headers["cache-control"] == "no-store"
    pub, api = json.loads(body)["routes"]
    assert pub == {
        "index": 0, "prefix": "/pub", "upstream": "http://127.0.0.1:9", "methods": None,
        "public": True, "websocket": True, "strip_prefix": True,
        "buffer_request_body": False, "chain": [],
    }
    assert api["methods"] == ["GET", "HEAD", "POST"]
    assert [entry["kind"] for entry in api["chain"]] == ["jwt"]
    assert "secret=(set)" in api["chain"][0]["summary"]
    for secret in (b"jwt-shared-secret", TOKEN.encode()):
        assert secret not in body


def test_every_error_is_the_same_json_shape(admin):
    cases = [
        ("GET", "/admin/routes", [], b"", 401, "missing_credentials"),
        ("GET", "/admin/routes", [("Authorization", "Bearer wrong-token-value")], b"", 401,
         "invalid_token"),
        ("GET", "/nope", [], b"", 401, "missing_credentials"),  # no map of paths for free
        ("GET", "/nope", AUTH, b"", 404, "no_route"),
        ("PUT", "/admin/routes", AUTH, b"", 405, "method_not_allowed"),
        ("POST", "/admin/reload", AUTH, b"{not json", 400, "bad_request"),
        ("POST", "/admin/reload", AUTH, b"[1, 2]", 400, "bad_request"),
        ("POST", "/admin/reload", AUTH, b'{"force": true}', 400, "bad_request"),
    ]
    for method, path, headers, body, status, code in cases:
        got, reply_headers, reply = request(admin, method, path, headers, body)
        assert got == status, (method, path, body)
        doc = json.loads(reply)
        assert set(doc) == {"error", "error_description", "request_id"}, doc
        assert doc["error"] == code and doc["request_id"] == reply_headers["x-request-id"]
        if status == 405:
            assert reply_headers["allow"] == "GET, HEAD"
    assert admin.backend.reloads == 0  # no bad request reached the reload


def test_reload_of_an_invalid_config_names_path_and_line(admin):
    admin.backend.reload_ok = False
    admin.backend.reload_error = ConfigError("unknown upstream 'nope'", "routes[1].upstream", 7)
    status, headers, body = request(admin, "POST", "/admin/reload", AUTH)
    assert status == 422
    assert json.loads(body) == {
        "error": "invalid_config",
        "error_description": "routes[1].upstream (line 7): unknown upstream 'nope'",
        "path": "routes[1].upstream", "line": 7, "message": "unknown upstream 'nope'",
        "errors": [{"path": "routes[1].upstream", "line": 7,
                    "message": "unknown upstream 'nope'"}],
        "generation": 1, "request_id": headers["x-request-id"],
    }
