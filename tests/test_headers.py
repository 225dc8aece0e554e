"""Header hygiene helpers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxgate._core import RequestIds, RequestState, merge_ratelimit, response_head, upstream_head
from fluxgate.proxy.headers import connection_tokens
from tests.support.headers import forwardable_headers

_REQUEST_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def acceptable_request_id(value: bytes | None) -> bool:
    """The rule, spelled out: a client's X-Request-Id is kept when short and plainly spelled."""
    return bool(value) and len(value) <= 128 and all(c in _REQUEST_ID_CHARS for c in value)


def kept(value: bytes) -> bool:
    """Does the gateway keep this client X-Request-Id (RequestIds, in _core)?"""
    return RequestIds(b"minted-").take(value) is value


def test_connection_tokens():
    assert connection_tokens(b"keep-alive, X-Secret ,Upgrade") == {b"keep-alive", b"x-secret", b"upgrade"}
    assert connection_tokens(None) == frozenset()
    assert connection_tokens(b" , ") == frozenset()


def test_request_id_acceptance():
    assert kept(b"abc-123_x.y:z")
    assert not kept(b"")
    assert not kept(b"a b")
    assert not kept(b"<script>")
    assert not kept(b"a" * 129)


def test_forwardable_headers_drop_owned_and_hop_by_hop():
    headers = [
        (b"Host", b"a"), (b"Connection", b"close"), (b"TE", b"trailers"), (b"X-FluxGate-Auth", b"x"),
        (b"Content-Length", b"3"), (b"X-Forwarded-For", b"1.1.1.1"), (b"Accept", b"*/*"),
    ]
    assert forwardable_headers(headers) == [(b"Host", b"a"), (b"Accept", b"*/*")]


def _request(**fields) -> RequestState:
    req = RequestState(0.0)
    req.method, req.path, req.request_id, req.host = b"POST", b"/api/x", b"rid", b"a"
    req.forward_headers = [(b"Host", b"a"), (b"X-Secret", b"s"), (b"Accept", b"*/*")]
    req.has_body, req.content_length = True, 3
    for name, value in fields.items():
        setattr(req, name, value)
    return req


def test_upstream_head_drops_named_and_adds_ours():
    head = upstream_head(_request(query=b"y=1"), frozenset({b"x-secret"}), -1, b"127.0.0.1", b"api_key")
    assert head == (
        b"POST /api/x?y=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\nX-Request-Id: rid\r\n"
        b"Content-Length: 3\r\n\r\n"
    )


def test_upstream_head_target_strip_prefix_and_api_key_query():
    req = _request(query=b"api_key=fg_secret&b=2&api_key=again")
    assert upstream_head(req, frozenset(), 4, b"p", b"api_key").startswith(b"POST /x?b=2 HTTP/1.1\r\n")
    req = _request(path=b"/api", query=b"api_key=fg_secret")
    assert upstream_head(req, frozenset(), 4, b"p", b"api_key").startswith(b"POST / HTTP/1.1\r\n")


def test_upstream_head_forwarded_chain_only_from_a_trusted_peer():
    chain = {"forwarded_for": b"1.2.3.4", "forwarded_proto": b"https"}
    untrusted = upstream_head(_request(**chain), frozenset(), -1, b"10.0.0.1", b"k")
    assert b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n" in untrusted
    trusted = upstream_head(_request(peer_trusted=True, **chain), frozenset(), -1, b"10.0.0.1", b"k")
    assert b"X-Forwarded-For: 1.2.3.4, 10.0.0.1\r\nX-Forwarded-Proto: https\r\n" in trusted


def test_upstream_head_principal_websocket_and_framing():
    class Principal:
        upstream_lines = b"X-FluxGate-Auth: jwt\r\n"

    req = _request(method=b"GET", has_body=False, content_length=0, principal=Principal(),
                   upgrade=b"websocket")
    head = upstream_head(req, frozenset(), -1, b"p", b"k")
    assert head.endswith(b"X-Request-Id: rid\r\nX-FluxGate-Auth: jwt\r\n"
                         b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    chunked = upstream_head(_request(chunked=True), frozenset(), -1, b"p", b"k")
    assert chunked.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    empty_post = upstream_head(_request(has_body=False, content_length=0), frozenset(), -1, b"p", b"k")
    assert empty_post.endswith(b"Content-Length: 0\r\n\r\n")  # RFC 9110 §8.6


def test_response_head_frames_and_appends_body():
    req = RequestState()
    req.request_id = b"rid"
    head = response_head(b"HTTP/1.1 200 OK\r\n", b"A: 1\r\n", req, [(b"Deprecation", b"@5")],
                         b"5", False, True, b"xxhello", 2, 5)
    assert head == (b"HTTP/1.1 200 OK\r\nA: 1\r\nX-Request-Id: rid\r\nDeprecation: @5\r\n"
                    b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    merge_ratelimit(req, 5, 4, 30)  # RateLimit-* come from the request, before the extras
    assert response_head(b"HTTP/1.1 200 OK\r\n", b"", req, [(b"Sunset", b"x")], None, True,
                         False) == (
        b"HTTP/1.1 200 OK\r\nX-Request-Id: rid\r\nRateLimit-Limit: 5\r\n"
        b"RateLimit-Remaining: 4\r\nRateLimit-Reset: 30\r\nSunset: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ValueError):
        response_head(b"HTTP/1.1 200 OK\r\n", b"", req, [], None, False, False, b"abc", 2, 5)
    with pytest.raises(TypeError):
        response_head(b"HTTP/1.1 200 OK\r\n", b"", req, [("str", b"v")], None, False, False)
    with pytest.raises(TypeError):
        response_head(b"HTTP/1.1 200 OK\r\n", b"", b"rid", [], None, False, False)


@given(st.binary(max_size=140) | st.text(alphabet="aZ09-_.: <>\x00é", max_size=140).map(str.encode))
def test_request_ids_keep_exactly_the_acceptable_client_ids(value):
    ids = RequestIds(b"p-")
    taken = ids.take(value)
    if acceptable_request_id(value):
        assert taken is value
    else:
        assert taken == b"p-1"  # minted instead
    assert ids.take(None) == (b"p-1" if acceptable_request_id(value) else b"p-2")
