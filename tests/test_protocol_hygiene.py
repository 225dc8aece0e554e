"""Request hygiene through a real `fluxgate run`: header names with `_`, Host values, header
field counts, whitespace around values, path overrides and identity headers, chunk-size
lines, and routes that buffer the request body. Malformed shapes are wire fixtures
(tests/data/http/invalid/, test_protocol.py); these tests look at what the upstream sees."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.gateway import raw_request
from tests.support.idp import AUDIENCE, IdentityProvider
from tests.test_protocol import routes, split_responses, status_of

# Routes on top of test_protocol's: one with a strip list of its own, one that buffers bodies.
ROUTES = """
  - route: /strict
    upstream: app
    public: true
    strip_request_headers: [X-Debug, X_Trace]
  - route: /buffered
    upstream: app
    public: true
    buffer_request_body: true
"""


def config(upstream_url: str, extra: str = "", limits: str = "") -> str:
    return routes(upstream_url, ROUTES + extra).replace(
        "max_body_bytes: 1MiB", "max_body_bytes: 64KiB" + limits
    )


@pytest.fixture
def gw(gateway_factory, upstream):
    return gateway_factory(config(upstream.url))


def send_split(port: int, head: bytes, rest: bytes) -> bytes:
    """Two writes with a pause between: the gateway's llhttp path, not the one-read parser."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(head)
        time.sleep(0.05)
        sock.sendall(rest)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


BOTH_PATHS = pytest.mark.parametrize("split", [False, True], ids=["one-read", "llhttp"])


def request(port: int, data: bytes, split: bool) -> bytes:
    if not split:
        return raw_request(port, data)
    cut = data.index(b"\r\n") + 2
    return send_split(port, data[:cut], data[cut:])


# ---- header names with "_" -------------------------------------------------------------------


@BOTH_PATHS
def test_underscore_names_are_dropped_by_default(gw, upstream, split):
    data = (
        b"GET /api/a HTTP/1.1\r\nHost: a\r\nX_User_Id: admin\r\nX_Custom: 1\r\n"
        b"X-Custom: 2\r\nConnection: close\r\n\r\n"
    )
    assert status_of(request(gw.port, data, split)) == 200
    [seen] = upstream.requests
    assert seen.header("X-Custom") == "2"
    assert not any("_" in name for name, _ in seen.headers), seen.headers


@BOTH_PATHS
def test_framing_aliases_are_refused_even_when_underscores_are_allowed(
    gateway_factory, upstream, split
):
    gw = gateway_factory(config(upstream.url, limits=", allow_underscores_in_headers: true"))
    for name in (b"Content_Length", b"TRANSFER_ENCODING"):
        data = b"POST /api/a HTTP/1.1\r\nHost: a\r\n" + name + b": 0\r\nContent-Length: 2\r\n\r\nok"
        response = request(gw.port, data, split)
        assert status_of(response) == 400, response
        assert b"aliases" in response
    assert upstream.requests == []


def test_underscore_names_forwarded_when_allowed(gateway_factory, upstream):
    gw = gateway_factory(config(upstream.url, limits=", allow_underscores_in_headers: true"))
    data = (
        b"GET /strict/a HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"X_FluxGate_Auth: forged\r\nX_Debug: 1\r\nx_trace: 2\r\nX_User_Id: root\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert status_of(raw_request(gw.port, data)) == 200
    [seen] = upstream.requests
    # Forwarded, unless it reads as a header the gateway sets or a strip list names.
    assert [name for name, _ in seen.headers if "_" in name] == ["X_Custom"]
    assert seen.header("X-Forwarded-For") == "127.0.0.1"


# ---- Host, header counts, whitespace -------------------------------------------------------


@BOTH_PATHS
def test_valid_hosts_pass(gw, upstream, split):
    for host in (b"shop.test:8080", b"[::1]:8080", b"10.0.0.1"):
        data = b"GET /api/a HTTP/1.1\r\nHost: " + host + b" \r\nConnection: close\r\n\r\n"
        assert status_of(request(gw.port, data, split)) == 200, host
    assert [r.header("Host") for r in upstream.requests] == ["shop.test:8080", "[::1]:8080", "10.0.0.1"]


@BOTH_PATHS
def test_bad_host_is_400(gw, upstream, split):
    for host in (b"a b", b"u@a", b"a/b", b"a:8o", b"[::1"):
        data = b"GET /api/a HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        response = request(gw.port, data, split)
        assert status_of(response) == 400, host
        assert b"invalid Host" in response
    assert upstream.requests == []


@BOTH_PATHS
def test_header_field_count(gateway_factory, upstream, split):
    gw = gateway_factory(config(upstream.url, limits=", max_header_count: 20"))
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(18))
    ok = b"GET /api/a HTTP/1.1\r\nHost: a\r\n" + fields + b"Connection: close\r\n\r\n"
    assert status_of(request(gw.port, ok, split)) == 200
    over = b"GET /api/a HTTP/1.1\r\nHost: a\r\nX-More: 1\r\n" + fields + b"Connection: close\r\n\r\n"
    response = request(gw.port, over, split)
    assert status_of(response) == 431
    assert json.loads(response.partition(b"\r\n\r\n")[2])["error"] == "headers_too_large"
    assert len(upstream.requests) == 1


@BOTH_PATHS
def test_trailing_whitespace_is_not_forwarded(gw, upstream, split):
    data = b"GET /api/a HTTP/1.1\r\nHost: a\r\nX-Trail: v \t \r\nConnection: close\r\n\r\n"
    assert status_of(request(gw.port, data, split)) == 200
    assert upstream.requests[0].header("X-Trail") == "v"


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider().start()
    try:
        yield provider
    finally:
        provider.stop()


def jwt_route(idp: IdentityProvider, forward: str = "") -> str:
    return f"""
  - route: /jwt
    upstream: app
    middleware:
      - jwt:
          issuer: "{idp.issuer}"
          audience: "{AUDIENCE}"
          jwks_uri: "{idp.jwks_uri}"
          forward_claims: {{{forward}}}
"""


@BOTH_PATHS
def test_bearer_token_with_trailing_whitespace(gateway_factory, upstream, idp, split):
    """RFC 9110 §5.5: the spaces and tabs after the token are not part of the field value."""
    gw = gateway_factory(config(upstream.url, jwt_route(idp)))
    token = idp.mint().encode()
    for tail in (b"   ", b"\t", b" \t "):
        data = (
            b"GET /jwt/a HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + token + tail
            + b"\r\nConnection: close\r\n\r\n"
        )
        response = request(gw.port, data, split)
        assert status_of(response) == 200, (tail, response[:200])
    assert len(upstream.requests) == 3


# ---- path overrides and identity headers ----------------------------------------------------


@BOTH_PATHS
def test_path_overrides_and_identity_headers_are_stripped(gateway_factory, upstream, idp, split):
    gw = gateway_factory(config(upstream.url, jwt_route(idp, "sub: X-User-Id")))
    identity = (
        b"X-Original-URL: /admin\r\nx-rewrite-url: /admin\r\nX-User-Id: root\r\n"
        b"X-Remote-User: root\r\nX-Forwarded-User: root\r\nX-Auth-User: root\r\n"
        b"Remote-User: root\r\nX-Authenticated-User: root\r\nX-HTTP-Method-Override: DELETE\r\n"
    )
    for path, auth in ((b"/api/a", b""), (b"/strict/a", b"X-Debug: 1\r\nX-Kept: 1\r\n"),
                       (b"/jwt/a", b"Authorization: Bearer %s\r\n" % idp.mint(sub="ann").encode())):
        data = (b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n" + identity + auth
                + b"Connection: close\r\n\r\n")
        assert status_of(request(gw.port, data, split)) == 200, path
    public, strict, jwt = upstream.requests
    for seen in (public, strict, jwt):
        names = seen.header_names()
        for stripped in ("x-original-url", "x-rewrite-url", "x-remote-user", "x-forwarded-user",
                         "x-auth-user", "remote-user", "x-authenticated-user",
                         "x-http-method-override"):
            assert stripped not in names, (seen.target, stripped)
    assert public.header("X-User-Id") is None and strict.header("X-User-Id") is None
    assert strict.header("X-Debug") is None and strict.header("X-Kept") == "1"
    # The route's forward_claims header is the gateway's own: written from the token once.
    assert [v for k, v in jwt.headers if k.lower() == "x-user-id"] == ["ann"]


def test_strip_list_replaced_at_top_level(gateway_factory, upstream):
    gw = gateway_factory("strip_request_headers: [X-Secret]\n" + config(upstream.url))
    data = (b"GET /api/a HTTP/1.1\r\nHost: a\r\nX-Secret: s\r\nX-Remote-User: r\r\n"
            b"X-Original-URL: /x\r\nConnection: close\r\n\r\n")
    assert status_of(raw_request(gw.port, data)) == 200
    names = upstream.requests[0].header_names()
    assert "x-secret" not in names and "x-original-url" not in names
    assert upstream.requests[0].header("X-Remote-User") == "r"  # no longer in the list


# ---- chunk-size lines -----------------------------------------------------------------------

CHUNKED = b"POST /api/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_chunk_extensions_up_to_the_bound_pass(gw, upstream):
    line = b"5;e=" + b"x" * (4096 - 4)  # 4096 bytes before its CRLF
    data = CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    response = raw_request(gw.port, data + line + b"\r\nhello\r\n0\r\n\r\n")
    assert status_of(response) == 200
    assert upstream.requests[0].body_bytes == 5 and upstream.requests[0].complete


def test_endless_chunk_extension_is_400_across_reads(gw, upstream):
    """One byte of data behind an extension that keeps coming, a read at a time."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(CHUNKED)
        time.sleep(0.05)
        sock.sendall(b"1;ext=")
        response = b""
        try:
            for _ in range(50):
                sock.sendall(b"y" * 200)
                time.sleep(0.002)
        except OSError:
            pass
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert status_of(response) == 400
    assert b"chunk-size line" in response
    assert all(not r.complete for r in upstream.requests)


def test_chunked_trailers_count_against_max_header_bytes(gw, upstream):
    data = CHUNKED + b"5\r\nhello\r\n0\r\nX-T: " + b"t" * 17000 + b"\r\n\r\n"
    response = raw_request(gw.port, data)
    assert status_of(response) == 431
    assert all(not r.complete for r in upstream.requests)


def test_pipelined_after_chunked_keeps_working(gw, upstream):
    data = (
        b"POST /api/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n0\r\nTrailer-A: 1\r\n\r\n"
        b"GET /api/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    responses = split_responses(raw_request(gw.port, data))
    assert [r[0] for r in responses] == [200, 200]
    assert [r.target for r in upstream.requests] == ["/api/a", "/api/b"]
    assert upstream.requests[0].body_bytes == 5


# ---- buffer_request_body ---------------------------------------------------------------------


def chunked_to(path: bytes) -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_streamed_route_forwards_the_head_before_a_bad_body(gw, upstream):
    """The trade-off buffer_request_body removes: without it the head (and the good chunks)
    are already upstream when a bad chunk arrives; the upstream sees a truncated message."""
    response = send_split(gw.port, chunked_to(b"/api/a") + b"5\r\nhello\r\n",
                          b"zz\r\nbad\r\n0\r\n\r\n")
    assert status_of(response) == 400
    time.sleep(0.1)
    assert len(upstream.requests) == 1 and not upstream.requests[0].complete


def test_buffered_route_sends_nothing_for_a_bad_body(gw, upstream):
    for bad in (b"zz\r\nbad\r\n0\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n",
                b"1;" + b"e" * 5000 + b"\r\nx\r\n0\r\n\r\n"):
        response = send_split(gw.port, chunked_to(b"/buffered/a") + b"5\r\nhello\r\n", bad)
        assert status_of(response) == 400, bad[:20]
    time.sleep(0.1)
    assert upstream.requests == [] and upstream.raw_bytes == 0


def test_buffered_route_sends_a_good_body_with_content_length(gw, upstream):
    body = [b"%x\r\n%s\r\n" % (len(p), p) for p in (b"hello", b" ", b"world" * 1000)]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(chunked_to(b"/buffered/a"))
        for piece in body:
            time.sleep(0.02)
            sock.sendall(piece)
        time.sleep(0.05)
        assert upstream.requests == []  # nothing before the whole body is in
        sock.sendall(b"0\r\nX-Trailer: t\r\n\r\nGET /buffered/b HTTP/1.1\r\nHost: a\r\n"
                     b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert [r[0] for r in split_responses(data)] == [200, 200]
    posted, got = upstream.requests
    assert posted.complete and posted.body_bytes == 5006
    assert posted.header("Content-Length") == "5006"
    assert posted.header("Transfer-Encoding") is None
    assert got.target == "/buffered/b"


def test_buffered_route_limits_and_expect(gw, upstream):
    too_big = b"%x\r\n%s\r\n" % (40000, b"z" * 40000)
    response = send_split(gw.port, chunked_to(b"/buffered/a"), too_big * 2 + b"0\r\n\r\n")
    assert status_of(response) == 413
    assert upstream.requests == []
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"PUT /buffered/e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert upstream.requests == []
        sock.sendall(b"data")
        assert status_of(sock.recv(65536)) == 200
    assert upstream.requests[0].body_bytes == 4
    assert upstream.requests[0].header("Content-Length") == "4"


def test_held_body_that_stops_coming_is_closed(gateway_factory, upstream):
    gw = gateway_factory(config(upstream.url).replace("idle_timeout: 2s", "idle_timeout: 1s"))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(chunked_to(b"/buffered/a") + b"5\r\nhello\r\n")
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.8 < time.monotonic() - started < 4
    assert upstream.requests == []

