"""fluxgate/master/fetch.py: the key-document client, against canned servers on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from fluxgate.master.fetch import FetchError, fetch
from tests.support.gateway import free_port


def run_with_server(reply: bytes | None, coro_factory, *, close: bool = True, read: bool = True):
    """Serve ``reply`` to every connection (None: accept and stay silent), run the client."""

    async def main():
        seen: list[bytes] = []

        async def handle(reader, writer):
            if read:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
            if reply is None:
                await asyncio.sleep(30)
                return
            writer.write(reply)
            await writer.drain()
            if close:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await coro_factory(f"http://127.0.0.1:{port}"), seen
        finally:
            server.close()

    return asyncio.run(main())


def test_plain_response_and_request_shape():
    body = b'{"keys": []}'
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: \"v1\"\r\n\r\n%s" % (len(body), body)
    response, seen = run_with_server(
        reply, lambda base: fetch(base + "/jwks?x=1", headers={"If-None-Match": '"v0"'})
    )
    assert response.status == 200 and response.body == body
    assert response.headers["etag"] == '"v1"'
    head = seen[0].decode()
    assert head.startswith("GET /jwks?x=1 HTTP/1.1\r\n")
    assert "Connection: close" in head and 'If-None-Match: "v0"' in head


def test_chunked_and_close_delimited_bodies():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert run_with_server(chunked, lambda b: fetch(b + "/"))[0].body == b"abcde"
    delimited = b"HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\nuntil-close"
    assert run_with_server(delimited, lambda b: fetch(b + "/"))[0].body == b"until-close"


def test_redirects_are_not_followed():
    reply = b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/jwks\r\nContent-Length: 0\r\n\r\n"
    response, seen = run_with_server(reply, lambda b: fetch(b + "/"))
    assert response.status == 302 and len(seen) == 1


@pytest.mark.parametrize(
    "reply,message",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "before the response was complete"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, "larger than 1000"),
        (b"not http at all\r\n\r\n", "malformed HTTP response"),
        (b"", "before a complete response head"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", "too large"),
    ],
)
def test_bad_responses(reply, message):
    with pytest.raises(FetchError, match=message):
        run_with_server(reply, lambda b: fetch(b + "/", max_bytes=1000))


def test_timeout_is_bounded():
    started = time.monotonic()
    with pytest.raises(FetchError, match="within 0.5s"):
        run_with_server(None, lambda b: fetch(b + "/", timeout=0.5))
    assert time.monotonic() - started < 3


def test_connection_refused_and_tls_to_plain_server():
    port = free_port()  # nothing listens there
    with pytest.raises(FetchError, match="cannot connect"):
        asyncio.run(fetch(f"http://127.0.0.1:{port}/"))
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(FetchError, match="TLS"):
        run_with_server(reply, lambda b: fetch(b.replace("http:", "https:") + "/", timeout=3),
                        read=False)


def test_unsupported_url():
    with pytest.raises(FetchError):
        asyncio.run(fetch("ftp://127.0.0.1/jwks"))
