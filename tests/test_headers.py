"""Header hygiene helpers."""

from hypothesis import given
from hypothesis import strategies as st

from fluxgate._core import RequestIds
from fluxgate.proxy.headers import (
    acceptable_request_id,
    build_request_head,
    connection_tokens,
    forwardable_lines,
)


def test_connection_tokens():
    assert connection_tokens(b"keep-alive, X-Secret ,Upgrade") == {b"keep-alive", b"x-secret", b"upgrade"}
    assert connection_tokens(None) == frozenset()
    assert connection_tokens(b" , ") == frozenset()


def test_request_id_acceptance():
    assert acceptable_request_id(b"abc-123_x.y:z")
    assert not acceptable_request_id(b"")
    assert not acceptable_request_id(b"a b")
    assert not acceptable_request_id(b"<script>")
    assert not acceptable_request_id(b"a" * 129)


def test_forwardable_lines_drop_owned_and_hop_by_hop():
    headers = [
        (b"Host", b"a"), (b"Connection", b"close"), (b"TE", b"trailers"), (b"X-FluxGate-Auth", b"x"),
        (b"Content-Length", b"3"), (b"X-Forwarded-For", b"1.1.1.1"), (b"Accept", b"*/*"),
    ]
    assert forwardable_lines(headers) == [b"Host: a\r\n", b"Accept: */*\r\n"]


def test_build_request_head_drops_named_and_adds_ours():
    head = build_request_head(
        b"POST", b"/x?y=1", [b"Host: a\r\n", b"X-Secret: s\r\n", b"Accept: */*\r\n"],
        drop=frozenset({b"x-secret"}), forwarded_for=b"127.0.0.1", forwarded_proto=b"http",
        forwarded_host=b"a", request_id=b"rid", framing=b"Content-Length: 3\r\n",
        extra=b"X-FluxGate-Auth: jwt\r\n",
    )
    assert head == (
        b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\nX-Request-Id: rid\r\n"
        b"X-FluxGate-Auth: jwt\r\nContent-Length: 3\r\n\r\n"
    )


@given(st.binary(max_size=140) | st.text(alphabet="aZ09-_.: <>\x00é", max_size=140).map(str.encode))
def test_request_ids_keep_exactly_the_acceptable_client_ids(value):
    ids = RequestIds(b"p-")
    taken = ids.take(value)
    if acceptable_request_id(value):
        assert taken is value
    else:
        assert taken == b"p-1"  # minted instead
    assert ids.take(None) == (b"p-1" if acceptable_request_id(value) else b"p-2")
