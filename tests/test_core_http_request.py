"""fluxgate._core.parse_request_head: the Cython fast path for a simple request head.

The contract (fluxgate/_reqhead.pxi): a RequestState comes back only when llhttp would
report exactly the same single message for the same bytes; anything else is None and
goes to httptools. The differential tests feed every accepted input to the real
httptools parser, with the real ClientConnection.on_url/on_header doing the slow path's
bookkeeping, and compare field by field.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxgate._core import (
    CHUNK_LINE_TOO_LONG,
    CHUNK_TRAILERS_TOO_LARGE,
    HEADER_KINDS_CACHE_MAX,
    ChunkedBody,
    RequestState,
    normalize_path,
    parse_request_head,
    valid_host,
)
from fluxgate.proxy import headers as hdr
from fluxgate.proxy.protocol import ClientConnection
from tests.support.headers import forwardable_headers, header_kind
from tests.support.mutations import random_case

SPECIAL = {**hdr.REQUEST_SPECIAL, b"x-api-key": hdr.H_DROP}  # as fluxgate/proxy/app.py builds it
MAX_HEADER = 16384  # fluxgate/config/schema.py defaults
MAX_BODY = 10 * 1024 * 1024
MAX_COUNT = 100
INVALID = Path(__file__).parent / "data" / "http" / "invalid"


def parse(
    data: bytes,
    kinds: dict | None = None,
    max_header: int = MAX_HEADER,
    max_body: int = MAX_BODY,
    max_count: int = MAX_COUNT,
    allow_underscores: bool = False,
):
    return parse_request_head(
        data, {} if kinds is None else kinds, SPECIAL, max_header, max_body, 12.5, max_count,
        allow_underscores,
    )


# ---- the slow path, for reference ---------------------------------------------------------


class SlowPath:
    """httptools plus the protocol's own on_url/on_header: what the gateway sees today."""

    def __init__(
        self, kinds: dict, max_header: int, max_body: int, max_count: int = MAX_COUNT,
        allow_underscores: bool = False,
    ) -> None:
        self.conn = SimpleNamespace(
            parsing=RequestState(0.0),
            header_kinds=kinds,
            special=SPECIAL,
            max_header_bytes=max_header,
            max_header_count=max_count,
            allow_underscores=allow_underscores,
        )
        self.max_body = max_body
        self.parser = httptools.HttpRequestParser(self)
        self.begun = self.complete = 0
        self.body = b""
        self.version = self.method = None
        self.keep_alive = self.upgrade = None

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, piece: bytes) -> None:
        ClientConnection.on_url(self.conn, piece)  # type: ignore[arg-type]

    def on_header(self, name: bytes, value: bytes) -> None:
        ClientConnection.on_header(self.conn, name, value)  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        self.version = self.parser.get_http_version()
        self.method = self.parser.get_method()
        self.keep_alive = self.parser.should_keep_alive()
        self.upgrade = self.parser.should_upgrade()

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk

    def on_message_complete(self) -> None:
        self.complete += 1


def assert_same_as_httptools(
    data: bytes, state: RequestState, max_header: int, max_body: int
) -> None:
    slow = SlowPath({}, max_header, max_body)
    # All but the last byte: the message must not be complete yet; with the last, it is.
    # So llhttp's message ends exactly where the data does, and nothing follows it.
    slow.parser.feed_data(data[:-1])
    assert slow.complete == 0
    slow.parser.feed_data(data[-1:])
    assert (slow.begun, slow.complete) == (1, 1)
    ref = slow.conn.parsing

    # What llhttp reports.
    assert state.method == slow.method
    assert state.url == ref.url
    assert ("1.%d" % state.http_minor) == slow.version
    assert state.headers == ref.headers
    assert state.keep_alive == slow.keep_alive
    assert not slow.upgrade
    assert b"".join(state.body_buffer) == slow.body
    assert state.content_length == len(slow.body) == state.body_bytes
    assert state.has_body == bool(slow.body)
    assert state.message_complete

    # What the protocol's callbacks make of it (and its on_headers_complete would accept).
    for field in (
        "header_bytes",
        "forward_headers",
        "host",
        "hosts",
        "content_length",
        "forwarded_for",
        "forwarded_proto",
        "client_request_id",
        "connection",
    ):
        assert getattr(state, field) == getattr(ref, field), field
    assert ref.transfer_encoding is None and ref.upgrade_token is None and not ref.expect_continue
    assert ref.hosts == 1 if state.http_minor == 1 else ref.hosts <= 1
    assert ref.host is None or valid_host(ref.host)
    assert ref.content_length <= max_body and ref.header_bytes <= max_header
    assert state.method != b"CONNECT"

    # Forwarded lines are the hygiene module's, minus the API key header.
    assert state.forward_headers == forwardable_headers(
        [(n, v) for n, v in state.headers if n.lower() != b"x-api-key"]
    )

    # The path and query split and normalized as the protocol's _route does for llhttp's path.
    raw_path, _, query = state.url.partition(b"?")
    assert state.path == normalize_path(raw_path)
    assert state.query == query

    # Everything else stays at its default: the caller routes and names the request.
    fresh = RequestState(12.5)
    for field in (
        "started",
        "upgrade",
        "reparse",
        "chunked",
        "response_done",
        "exchange",
        "close_after",
        "status",
        "request_id",
        "route",
        "client_ip",
        "peer_trusted",
        "principal",
        "expect_continue",
        "transfer_encoding",
        "upgrade_token",
        "finished",
        "response_headers",
    ):
        assert getattr(state, field) == getattr(fresh, field), field


def check(
    data: bytes, max_header: int = MAX_HEADER, max_body: int = MAX_BODY
) -> RequestState | None:
    state = parse(data, max_header=max_header, max_body=max_body)
    if state is not None:
        assert_same_as_httptools(data, state, max_header, max_body)
    return state


# ---- unit cases: accepted ---------------------------------------------------------------


def test_plain_get():
    data = b"GET /api/a?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\nAccept: */*\r\n\r\n"
    state = check(data)
    assert state is not None
    assert (state.method, state.url, state.http_minor, state.keep_alive) == (
        b"GET",
        b"/api/a?x=1",
        1,
        True,
    )
    assert state.started == 12.5
    assert state.headers == [
        (b"Host", b"example.com"),
        (b"User-Agent", b"t/1"),
        (b"Accept", b"*/*"),
    ]
    assert state.forward_headers == [
        (b"Host", b"example.com"), (b"User-Agent", b"t/1"), (b"Accept", b"*/*"),
    ]
    assert (state.host, state.hosts, state.content_length, state.has_body) == (
        b"example.com",
        1,
        0,
        False,
    )
    assert state.body_buffer == [] and state.message_complete
    assert state.header_bytes == len(b"/api/a?x=1") + sum(
        len(n) + len(v) + 4 for n, v in state.headers
    )


def test_post_with_body_and_every_method():
    state = check(b"POST /api/b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert state is not None
    assert (state.content_length, state.has_body, state.body_bytes, state.body_buffer) == (
        5,
        True,
        5,
        [b"hello"],
    )
    assert state.forward_headers == [(b"Host", b"a")]  # framing is re-created, never copied
    assert type(state.content_length) is int
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
        state = check(method + b" / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n")
        assert state is not None and state.method is not None and state.method == method


def test_http10_keep_alive_and_connection():
    state = check(b"GET / HTTP/1.0\r\n\r\n")
    assert state is not None and (state.http_minor, state.keep_alive, state.hosts) == (0, False, 0)
    state = check(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: a\r\n\r\n")
    assert state is not None and (state.keep_alive, state.connection) == (True, b"Keep-Alive")
    assert state.forward_headers == [(b"Host", b"a")]  # Connection is hop-by-hop
    assert check(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n").keep_alive is False
    assert check(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE \t\r\n\r\n").keep_alive is False
    assert check(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").keep_alive is True


def test_forwarded_headers_request_id_and_whitespace():
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for:\t2.2.2.2 \r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Proto: https\r\nX-Request-Id: r1\r\nx-request-id: r2\r\n"
        b"X-Empty:\r\nX-Blank:   \r\nX-Trail: v \t\r\nX-Inner: a \t b\r\n\r\n"
    )
    state = check(data)
    assert state is not None
    # RFC 9110 §5.5: OWS around a value is not part of it (llhttp keeps the trailing one;
    # on_header and the fast path strip it), inner whitespace is.
    assert state.forwarded_for == b"1.1.1.1, 2.2.2.2"
    assert (state.forwarded_proto, state.client_request_id) == (b"https", b"r2")
    assert state.forward_headers == [
        (b"Host", b"a"), (b"X-Empty", b""), (b"X-Blank", b""), (b"X-Trail", b"v"),
        (b"X-Inner", b"a \t b"),
    ]
    # Header bytes are counted as they came, whitespace included.
    assert state.header_bytes == len(b"/") + sum(
        len(line.partition(b":")[0]) + len(line.partition(b":")[2].lstrip(b" \t")) + 4
        for line in data.split(b"\r\n")[1:-2]
    )


def test_api_key_and_fluxgate_headers_not_forwarded_but_kept_in_headers():
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: fgk_secret\r\nX-FluxGate-Principal: forged\r\n"
        b"x-fluxgate-scopes: admin\r\nKeep-Alive: 5\r\nX-Forwarded-Host: evil\r\nAccept: */*\r\n\r\n"
    )
    state = check(data)
    assert state is not None
    assert [n for n, _ in state.headers] == [
        b"Host",
        b"X-API-Key",
        b"X-FluxGate-Principal",
        b"x-fluxgate-scopes",
        b"Keep-Alive",
        b"X-Forwarded-Host",
        b"Accept",
    ]
    assert state.forward_headers == [(b"Host", b"a"), (b"Accept", b"*/*")]


def test_kinds_cache_filled_as_the_protocol_fills_it_and_bounded():
    kinds: dict[bytes, int] = {}
    data = b"GET / HTTP/1.1\r\nhOsT: a\r\nX-Fluxgate-A: 1\r\nX-Api-Key: k\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    assert parse(data, kinds) is not None
    assert kinds == {
        name: header_kind(name.lower(), SPECIAL)
        for name in (b"hOsT", b"X-Fluxgate-A", b"X-Api-Key", b"Accept", b"Connection")
    }
    assert kinds[b"hOsT"] == hdr.H_HOST and kinds[b"X-Fluxgate-A"] == hdr.H_FLUXGATE
    # Cache hits agree.
    assert parse(data, kinds).forward_headers == [(b"hOsT", b"a"), (b"Accept", b"*/*")]
    full = {b"X-N%d" % i: 0 for i in range(HEADER_KINDS_CACHE_MAX - 1)}
    names = b"".join(b"X-New-%d: v\r\n" % i for i in range(5))
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\n" + names + b"\r\n", full) is not None
    # One more name fitted; the rest were classified without being cached.
    assert len(full) == HEADER_KINDS_CACHE_MAX
    # A stale or odd cache cannot make llhttp's framing headers mean something else.
    assert (
        parse(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", {b"Content-Length": 0})
        is None
    )


# ---- unit cases: declined --------------------------------------------------------------

GOOD = b"GET /a HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
POST = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"

DECLINED = {
    "partial head": GOOD[:-2],
    "partial request line": b"GET /a HTTP/1.1\r\n",
    "empty": b"",
    "pipelined second request": GOOD + GOOD,
    "stray CRLF after": GOOD + b"\r\n",
    "body shorter": POST[:-1],
    "body longer": POST + b"d",
    "no body": POST[:-3],
    "transfer-encoding": b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "expect": b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "upgrade": b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "upgrade alone": b"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
    "duplicate CL same": b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "duplicate CL zero": b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n",
    "CL trailing space": b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3 \r\n\r\nabc",
    "CL 19 digits": b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000003\r\n\r\nabc",
    "CL empty": b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
    "no Host on 1.1": b"GET /a HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two Hosts": b"GET /a HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "two Hosts on 1.0": b"GET /a HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    "obs-fold": b"GET /a HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
    "obs-fold tab": b"GET /a HTTP/1.1\r\nHost: a\r\nX: y\r\n\tz\r\n\r\n",
    "bare LF end": b"GET /a HTTP/1.1\r\nHost: a\r\n\n",
    "bare LF line": b"GET /a HTTP/1.1\nHost: a\r\n\r\n",
    "bare CR": b"GET /a HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "NUL in value": b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "NUL in target": b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    "0x80 in value": b"GET /a HTTP/1.1\r\nHost: a\r\nX: \x80\r\n\r\n",
    "0x80 in name": b"GET /a HTTP/1.1\r\nHost: a\r\nX\x80: v\r\n\r\n",
    "0x80 in target": b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
    "DEL in value": b"GET /a HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n",
    "control in value": b"GET /a HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
    "CONNECT": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "absolute-form": b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case method": b"get /a HTTP/1.1\r\nHost: a\r\n\r\n",
    "other method": b"PROPFIND /a HTTP/1.1\r\nHost: a\r\n\r\n",
    "two spaces": b"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
    "HTTP/1.2": b"GET /a HTTP/1.2\r\nHost: a\r\n\r\n",
    "lower-case version": b"GET /a http/1.1\r\nHost: a\r\n\r\n",
    "space before colon": b"GET /a HTTP/1.1\r\nHost : a\r\n\r\n",
    "empty name": b"GET /a HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
    "Proxy-Connection": b"GET /a HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n",
    "two Connection headers": b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: close\r\n\r\n",
    "Connection list": b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\n\r\n",
    "Connection other": b"GET /a HTTP/1.0\r\nConnection: keep-alivex\r\n\r\n",
    "bad path": b"GET /a/%2e%2e/b HTTP/1.1\r\nHost: a\r\n\r\n",
    "double-encoded path": b"GET /a/%252e%252e/b HTTP/1.1\r\nHost: a\r\n\r\n",
    "Host with a space": b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
    "Host with userinfo": b"GET /a HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "Host with a path": b"GET /a HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "Host bad port": b"GET /a HTTP/1.1\r\nHost: a:8o\r\n\r\n",
    "Host port only": b"GET /a HTTP/1.1\r\nHost: :80\r\n\r\n",
    "Host zone id": b"GET /a HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n",
    "bad Host on 1.0": b"GET /a HTTP/1.0\r\nHost: a:b\r\n\r\n",
    "Content_Length": b"POST /a HTTP/1.1\r\nHost: a\r\nContent_Length: 3\r\n\r\n",
    "transfer_encoding": b"GET /a HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n",
}


@pytest.mark.parametrize("data", DECLINED.values(), ids=DECLINED.keys())
def test_declined(data):
    assert parse(data) is None


def test_trailing_whitespace_is_not_part_of_a_value():
    """RFC 9110 §5.5, on both paths: a bearer token followed by spaces or tabs is the token."""
    state = check(b"GET / HTTP/1.1\r\nHost: a \t\r\nAuthorization: Bearer t.o.k \t \r\n\r\n")
    assert state is not None
    assert state.headers == [(b"Host", b"a"), (b"Authorization", b"Bearer t.o.k")]
    assert state.host == b"a"
    slow = SlowPath({}, MAX_HEADER, MAX_BODY)
    slow.parser.feed_data(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t.o.k\t\t\r\n\r\n")
    assert slow.conn.parsing.headers[1] == (b"Authorization", b"Bearer t.o.k")


HOSTS_OK = [
    b"", b"a", b"example.com", b"EXAMPLE.com.", b"a:80", b"a:", b"a:65535", b"1.2.3.4:8080",
    b"[::1]", b"[::1]:8080", b"[2001:db8::ffff:1.2.3.4]", b"xn--bcher-kva.example",
    b"a_b~c-d", b"%41b", b"a!$&'()*+,;=b",
]
HOSTS_BAD = [
    b"a b", b"u@a", b"u:p@a", b"a/b", b"a?b", b"a#b", b"a:8o", b"a:123456", b":80",
    b"[::1", b"::1", b"[::1]x", b"[x::1]", b"[]", b"[fe80::1%25eth0]", b"[v1.x]",
    b"a\\b", b'a"b', b"a<b>", b"%4", b"%zz", b"a:80:80", b"a\tb",
]


def test_host_values():
    """RFC 9110 §7.2: uri-host [":" port]; the fast path declines what the slow path refuses."""
    for host in HOSTS_OK:
        assert valid_host(host), host
        if host:
            state = check(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert state is not None and state.host == host, host
    for host in HOSTS_BAD:
        assert not valid_host(host), host
        if b"\t" not in host:
            assert parse(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") is None, host


def test_header_field_count():
    """limits.max_header_count: the fast path declines beyond it, the slow path says 431."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-N%d: v\r\n" % i for i in range(9))
    assert check(head + b"\r\n") is not None
    assert parse(head + b"\r\n", max_count=10) is not None
    assert parse(head + b"X-More: 1\r\n\r\n", max_count=10) is None
    slow = SlowPath({}, MAX_HEADER, MAX_BODY, max_count=10)
    with pytest.raises(httptools.HttpParserCallbackError) as exc:
        slow.parser.feed_data(head + b"X-More: 1\r\n\r\n")
    assert type(exc.value.__context__).__name__ == "HeadersTooLarge"


def test_header_names_with_underscores():
    """Dropped by default; with allow_underscores forwarded, unless the name reads as one
    the gateway reads or sets; Content_Length / Transfer_Encoding never pass."""
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"x_fluxgate_auth: forged\r\nX-Plain: 2\r\n\r\n"
    )
    state = check(data)
    assert state is not None
    assert state.forward_headers == [(b"Host", b"a"), (b"X-Plain", b"2")]
    assert state.forwarded_for is None and len(state.headers) == 5
    allowed = parse(data, allow_underscores=True)
    assert allowed.forward_headers == [(b"Host", b"a"), (b"X_Custom", b"1"), (b"X-Plain", b"2")]
    for name in (b"Content_Length", b"transfer_encoding", b"CONTENT_length"):
        bad = b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": 0\r\n\r\n"
        assert parse(bad) is None and parse(bad, allow_underscores=True) is None
        for allow in (False, True):
            slow = SlowPath({}, MAX_HEADER, MAX_BODY, allow_underscores=allow)
            with pytest.raises(httptools.HttpParserCallbackError) as exc:
                slow.parser.feed_data(bad)
            assert "aliases" in str(exc.value.__context__)


def test_limits():
    head = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 100 + b"\r\n\r\n"
    used = len(b"/a") + (4 + 1 + 4) + (5 + 100 + 4)
    assert check(head, max_header=used).header_bytes == used
    assert parse(head, max_header=used - 1) is None
    assert parse(b"GET /" + b"a" * 99 + b" HTTP/1.1\r\nHost: a\r\n\r\n", max_header=99) is None
    assert check(POST, max_body=3) is not None
    assert parse(POST, max_body=2) is None


def test_header_line_count_bound():
    """Header spans live in a fixed C array (100): more lines decline, they are not lost."""
    lines = [b"X-N%d: v\r\n" % i for i in range(99)]
    state = check(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(lines) + b"\r\n")
    assert state is not None and len(state.headers) == 100
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-More: 1\r\n" + b"".join(lines) + b"\r\n") is None


INVALID_FIXTURES = sorted(INVALID.glob("*.http"))


def test_invalid_fixtures_found():
    assert len(INVALID_FIXTURES) >= 50


@pytest.mark.parametrize("path", INVALID_FIXTURES, ids=[p.stem for p in INVALID_FIXTURES])
def test_invalid_fixture_declined(path):
    """Requests the gateway answers 400/413/417/431 and never forwards: always the slow path."""
    assert parse(path.read_bytes()) is None


# ---- differential fuzzing against httptools ----------------------------------------------

SEEDS = [
    b"GET /api/a?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    b"POST /api/b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /api/%7Ed/./e//f HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nhost: b\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: abc\r\nContent-Length: 2\r\n\r\nok",
    b"DELETE /q?a=%20&b=[]! HTTP/1.1\r\nHost: c\r\nConnection: close\r\nX-Api-Key: k\r\nX-FluxGate-X: y\r\n\r\n",
]
NASTY = [
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\xff",
    b"\x7f",
    b"#",
    b"?",
    b"%",
    b"%2e",
    b"Content-Length: 3\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: b\r\n",
    b"Connection: close\r\n",
    b"Proxy-Connection: keep-alive\r\n",
    b"\r\n\r\n",
]
LINES = [
    b"Content-Length: 0\r\n",
    b"Host: b\r\n",
    b"X-Forwarded-For: 9.9.9.9\r\n",
    b"Connection: close\r\n",
    b"X-Request-Id: again\r\n",
    b"x-api-key: k2\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"X-B:\t \r\n",
]
LIMITS = st.sampled_from([(MAX_HEADER, MAX_BODY)] * 4 + [(60, MAX_BODY), (MAX_HEADER, 3)])


@st.composite
def mutated_request(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, len(data)))
        if op == 5:  # a whole header line after a line end: duplicated framing, repeated X-F-F...
            ends = [i + 2 for i in range(len(data)) if data[i : i + 2] == b"\r\n"]
            pos = draw(st.sampled_from(ends)) if ends else pos
            data[pos:pos] = draw(st.sampled_from(LINES))
        elif op == 0 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == 1 and pos < len(data):
            data[pos] = draw(st.sampled_from(b'\r\n \t:\x00\x7f\x80AZaz09-,;=/#?"\\'))
        elif op == 2:
            data[pos:pos] = draw(st.sampled_from(NASTY))
        elif op == 3 and pos < len(data):
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            data = data[: pos or len(data)]
    return bytes(data)


TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SPECIAL_NAMES = [
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"connection",
    b"upgrade",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"x-api-key",
    b"x-fluxgate-auth",
]
VALUE_BYTES = bytes(range(0x21, 0x7F)) + b" \t"
PATH_BYTES = b"abcxyzABC019-._~/?=&!$'()*+,;:@[]{}|^`<>\"%"  # '%' rarely makes a good escape
CLEAN_SPECIAL_NAMES = [
    n
    for n in SPECIAL_NAMES
    if n not in (b"transfer-encoding", b"expect", b"upgrade", b"proxy-connection")
]


@st.composite
def generated_request(draw):
    """A request from the grammar: half of them clean (the fast path's language, so its
    acceptance is exercised), half with anything the grammar knows, plus the odd byte."""
    clean = draw(st.booleans())
    methods = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]
    method = draw(st.sampled_from(methods if clean else [*methods, b"CONNECT", b"get", b"TRACE"]))
    if clean or draw(st.booleans()):
        target = b"/" + draw(
            st.binary(max_size=20).map(lambda b: bytes(PATH_BYTES[c % len(PATH_BYTES)] for c in b))
        )
    else:  # any printable byte: '#', '%zz', '\\', dot segments
        target = b"/" + draw(st.binary(max_size=20).map(lambda b: bytes(0x21 + c % 94 for c in b)))
    if not clean:
        target = draw(st.sampled_from([target, b"/a?" + target[1:], b"http://a" + target]))
    versions = [b"HTTP/1.1", b"HTTP/1.0"]
    version = draw(st.sampled_from(versions if clean else [*versions, b"HTTP/1.2"]))
    special_names = CLEAN_SPECIAL_NAMES if clean else SPECIAL_NAMES
    lines = []
    body = draw(st.binary(max_size=8)) if draw(st.booleans()) else b""
    if clean or draw(st.integers(0, 5)):
        hosts = HOSTS_OK[1:] if clean else HOSTS_OK[1:] + HOSTS_BAD
        lines.append((random_case(draw, b"host"), draw(st.sampled_from(hosts))))
    for _ in range(draw(st.integers(0, 6))):
        if not draw(st.integers(0, 2)):
            name = random_case(draw, draw(st.sampled_from(special_names)))
        else:
            name = draw(
                st.binary(min_size=1, max_size=8).map(
                    lambda b: bytes(TCHAR[c % len(TCHAR)] for c in b)
                )
            )
        if name.lower() in (b"content-length", b"connection", b"host") and clean:
            continue  # at most once, added below
        if name.lower() == b"content-length":
            value = draw(
                st.sampled_from(
                    [b"%d" % len(body), b"0%d" % len(body), b"%d" % (len(body) + 1), b"x"]
                )
            )
        elif name.lower() == b"connection":
            value = draw(
                st.sampled_from([b"close", b"Keep-Alive", b"keep-alive ", b"upgrade", b"x, close"])
            )
        else:
            value = draw(
                st.binary(max_size=12).map(
                    lambda b: bytes(VALUE_BYTES[c % len(VALUE_BYTES)] for c in b)
                )
            )
        lines.append((name, value))
    if body and (clean or draw(st.integers(0, 3))):
        lines.append((random_case(draw, b"content-length"), b"%d" % len(body)))
    if draw(st.booleans()):
        lines.append(
            (
                random_case(draw, b"connection"),
                draw(st.sampled_from([b"close", b"keep-alive", b"CLOSE \t"])),
            )
        )
    draw(st.randoms()).shuffle(lines)
    head = method + b" " + target + b" " + version + b"\r\n"
    for name, value in lines:
        head += (
            name + b":" + draw(st.sampled_from([b" ", b"", b"  ", b"\t", b" \t"])) + value + b"\r\n"
        )
    data = head + b"\r\n" + body
    if not clean and draw(st.booleans()):  # the odd byte
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + draw(st.sampled_from(NASTY)) + data[pos:]
    return data


def run_differential(strategy, examples: int, min_share: float) -> None:
    counts = {"total": 0, "fast": 0}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(strategy, LIMITS)
    def differential(data, limits):
        counts["total"] += 1
        if check(data, *limits) is not None:
            counts["fast"] += 1

    differential()
    # The property is not vacuous: a good share of inputs really took the fast path.
    assert counts["fast"] >= min_share * counts["total"], counts


def test_differential_generated_requests():
    run_differential(generated_request(), 1200, 0.25)  # ~42% hit in practice: a wide margin


def test_differential_mutated_requests():
    # Mutations mostly break the request (what this one is for: declining); some survive.
    run_differential(mutated_request(), 1200, 0.02)  # ~6% hit in practice


def test_seeds_take_the_fast_path():
    for seed in SEEDS:
        assert check(seed) is not None, seed


def test_every_single_byte_substitution_and_insertion():
    """Exhaustive, deterministic: every byte value at every offset of two seeds."""
    hits = 0
    for seed in (SEEDS[1], SEEDS[3]):
        for pos in range(len(seed)):
            for byte in range(256):
                b = bytes((byte,))
                for data in (seed[:pos] + b + seed[pos + 1 :], seed[:pos] + b + seed[pos:]):
                    hits += check(data) is not None
    assert hits > 1000, hits


def test_every_byte_at_every_offset_of_a_long_value():
    """A value long enough for the 16-byte and 8-byte scans and the byte loop after them:
    each byte value at each offset is decided as httptools decides it."""
    head, tail = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ", b"\r\n\r\n"
    value = bytes(0x21 + i % 94 for i in range(70))
    accepted = 0
    for pos in range(len(value)):
        for byte in range(256):
            state = check(head + value[:pos] + bytes((byte,)) + value[pos + 1 :] + tail)
            accepted += state is not None
    # Every byte 0x20..0x7E, tab and the obs-text bytes llhttp takes (>= 0x80) do not
    # end the simple case by themselves; controls do.
    assert accepted >= len(value) * (0x7F - 0x20), accepted


def test_header_names_are_reused_across_requests_and_never_confused():
    # The parser hands out one bytes object per name spelling (its hash is then cached);
    # spellings that differ, even only in case, stay distinct objects with their bytes.
    names = [b"Accept", b"accept", b"ACCEPT", b"X-A", b"X-B", b"x-a"]
    names += [b"X-%d" % i for i in range(2000)]  # more than the table's slots: collisions
    for _ in range(2):
        for name in names:
            state = check(b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": v\r\n\r\n")
            assert state is not None and state.headers[1] == (name, b"v")
    first = check(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    second = check(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    assert first.headers[1][0] is second.headers[1][0]


def test_request_state_fields_are_member_slots_with_their_defaults():
    # Python reads and writes every field through a member descriptor on the C slot (the
    # fast path CPython specializes); each field holds what it is given, independently.
    slots = {n for n, v in vars(RequestState).items() if type(v).__name__ == "member_descriptor"}
    fresh = RequestState(1.5)
    methods = {"ratelimit_headers"}  # the RateLimit-* integers are C fields, not slots
    assert {n for n in dir(fresh) if not n.startswith("_")} - methods <= slots
    assert len(slots) == 39
    assert (fresh.started, fresh.method, fresh.http_minor, fresh.keep_alive) == (1.5, b"", 1, True)
    assert (fresh.status, fresh.finished, fresh.route, fresh.headers) == (0, False, None, [])
    assert fresh.refusal is None  # the access log's reason code, set only by a refusal
    assert fresh.headers is not fresh.forward_headers is not fresh.response_headers
    for i, name in enumerate(sorted(slots)):
        setattr(fresh, name, ("value", i))
    for i, name in enumerate(sorted(slots)):
        assert getattr(fresh, name) == ("value", i), name



# ---- ChunkedBody: a chunked body's framing, followed beside llhttp --------------------------


class BodyEnd:
    """httptools as the reference: where a chunked message ends, fed byte by byte."""

    def __init__(self) -> None:
        self.complete = False
        self.parser = httptools.HttpRequestParser(self)

    def on_message_complete(self) -> None:
        self.complete = True

    def end_of(self, head: bytes, body: bytes) -> int | None:
        self.parser.feed_data(head)
        for i in range(len(body)):
            self.parser.feed_data(body[i : i + 1])
            if self.complete:
                return i + 1
        return None


CHUNKED_HEAD = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@st.composite
def chunked_body(draw):
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(min_size=1, max_size=40))
        size = draw(st.sampled_from([b"%x" % len(data), b"%X" % len(data), b"000%x" % len(data)]))
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b';a="q;\\"x"', b";a=b;c=d"]))
        out += size + ext + b"\r\n" + data + b"\r\n"
    out += draw(st.sampled_from([b"0", b"00", b"0;last"])) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"T: v", b"Trailer-X: 1 2", b"x:"])) + b"\r\n"
    return out + b"\r\n"


@settings(max_examples=300, deadline=None, database=None)
@given(chunked_body(), st.lists(st.integers(1, 30), max_size=8), st.binary(max_size=10))
def test_chunked_body_ends_where_llhttp_ends_it(body, cuts, after):
    """Whatever the reads, ChunkedBody finds the end llhttp finds, and the bytes after it
    (the next request's) are left alone."""
    assert BodyEnd().end_of(CHUNKED_HEAD, body) == len(body)
    data = body + after
    scanner, start, ends = ChunkedBody(4096, 16384), 0, []
    for size in [*cuts, len(data)]:
        piece = data[start : start + size]
        if not piece:
            break
        at = scanner.scan(piece)
        ends.append(start + at)
        start += at if scanner.done else len(piece)
        if scanner.done:
            break
    assert scanner.done and ends[-1] == len(body)


def test_chunk_size_lines_and_trailers_are_bounded():
    ok = b"5;" + b"e" * 4094 + b"\r\nhello\r\n0\r\n\r\n"
    assert ChunkedBody(4096, 100).scan(ok) == len(ok)
    assert ChunkedBody(4096, 100).scan(b"5;" + b"e" * 4095 + b"\r\n") == CHUNK_LINE_TOO_LONG
    scanner = ChunkedBody(4096, 100)  # a line that never ends, a byte at a time
    results = [scanner.scan(b"5;"), *(scanner.scan(b"e") for _ in range(5000))]
    assert results[:4096] == [2] + [1] * 4095 and results[4096] == CHUNK_LINE_TOO_LONG
    # Many chunks each under the bound pass, however many there are.
    many = (b"1;" + b"e" * 4000 + b"\r\nx\r\n") * 50 + b"0\r\n\r\n"
    assert ChunkedBody(4096, 100).scan(many) == len(many)
    trailers = b"0\r\n" + b"T: " + b"v" * 200 + b"\r\n\r\n"
    assert ChunkedBody(4096, 100).scan(trailers) == CHUNK_TRAILERS_TOO_LARGE
    assert ChunkedBody(4096, 300).scan(trailers) == len(trailers)
    # A huge chunk is skipped by its size, not read byte by byte.
    big = ChunkedBody(16, 16)
    assert big.scan(b"10000000\r\n") == 10 and not big.done
    assert big.scan(b"y" * 1000) == 1000
