"""A fast RFC 7662 introspection endpoint for end-to-end benchmarks, and its bearer tokens.

``POST /introspect`` (form body ``token=...``, client credentials in HTTP Basic) answers
``{"active": true, "scope": "read", "sub": "user-<n>", "client_id": "bench", "exp": <now +
3600>, "token_type": "Bearer"}`` for a token made by ``token_lines`` (it starts with
``TOKEN_PREFIX``) and ``{"active": false}`` for any other; a request without a Basic
``Authorization`` header that decodes to ``id:secret`` is a 401 ``invalid_client``, as an
authorization server answers a client it cannot identify. ``GET /stats`` returns the
counters as JSON: ``calls`` (introspection requests answered, any outcome), ``active``,
``inactive``, ``unauthenticated``, ``connections`` (accepted so far).

Built to cost the gateway's introspection-miss benchmark as little CPU as possible, like
the fixed-response upstream (bench/support/upstream.py): uvloop, a raw ``asyncio.Protocol``
per connection, llhttp framing through httptools with only the callbacks it needs (URL,
headers, body, end of message), the answer formatted as bytes rather than serialized, one
write per read. Keep-alive unless the client asks to close; pipelining works.

Run as its own process, so its CPU time is its own and can be read from /proc:
``python -m bench.support.authserver [--port N]`` prints ``listening 127.0.0.1:PORT`` once
ready; ``start_authserver()`` does that and returns a handle (the child inherits the
caller's CPU affinity, as the upstream does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import http.client
import json
import os
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

import httptools

from .upstream import UpstreamProcess, start_child

REPO = Path(__file__).resolve().parents[2]

TOKEN_PREFIX = b"fgbench."  # tokens the server says are active
CLIENT_ID = "bench"
LIFETIME = 3600  # seconds from the call to the `exp` of an active answer

_ACTIVE = (b'{"active":true,"scope":"read","sub":"user-%s","client_id":"' + CLIENT_ID.encode()
           + b'","exp":%d,"token_type":"Bearer"}')
_INACTIVE = b'{"active":false}'
_HEAD = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
         b"Cache-Control: no-store\r\n%s\r\n")
_INVALID_CLIENT = b'{"error":"invalid_client"}'
_UNAUTHORIZED_EXTRA = b'WWW-Authenticate: Basic realm="bench"\r\n'
_CLOSE = b"Connection: close\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_REASONS = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed"}


class Counters:
    """What the server has answered since it started (one process, one loop: plain ints)."""

    __slots__ = ("calls", "active", "inactive", "unauthenticated", "connections")

    def __init__(self) -> None:
        self.calls = self.active = self.inactive = self.unauthenticated = self.connections = 0

    def as_json(self) -> bytes:
        return json.dumps({name: getattr(self, name) for name in self.__slots__}).encode()


COUNTERS = Counters()


def client_of(authorization: bytes | None) -> bytes | None:
    """The client id of an RFC 6749 §2.3.1 Basic header (form-decoded), None when the header
    is missing or is not ``Basic base64(id:secret)``. The secret is not checked: the bench
    measures the gateway's cost of asking, not the server's of authenticating."""
    if authorization is None or authorization[:6].lower() != b"basic ":
        return None
    try:
        pair = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    client, sep, secret = pair.partition(b":")
    if not sep or not client or not secret:
        return None
    return unquote_to_bytes(client.replace(b"+", b" "))


def form_token(body: bytes) -> bytes | None:
    """The ``token`` member of an x-www-form-urlencoded body (None when absent or empty)."""
    for pair in body.split(b"&"):
        if pair[:6] == b"token=":
            value = pair[6:]
            if b"%" in value or b"+" in value:  # the bench's tokens never need decoding
                value = unquote_to_bytes(value.replace(b"+", b" "))
            return value or None
    return None


def introspect(token: bytes | None, now: int) -> bytes:
    """The JSON answer for ``token``: active for the bench's own tokens, else inactive."""
    counters = COUNTERS
    if token is not None and token.startswith(TOKEN_PREFIX):
        # fgbench.<set>.<n>.<nonce>: the subject is the token's number within its set
        parts = token.split(b".", 3)
        if len(parts) == 4 and parts[2].isdigit():
            counters.active += 1
            return _ACTIVE % (parts[2], now + LIFETIME)
    counters.inactive += 1
    return _INACTIVE


def response(status: int, body: bytes, close: bool, extra: bytes = b"") -> bytes:
    return _HEAD % (status, _REASONS[status], len(body), extra + (_CLOSE if close else b"")) + body


class Introspection(asyncio.Protocol):
    """One connection: requests framed by llhttp, answers written once per read."""

    __slots__ = ("transport", "parser", "url", "authorization", "body", "out", "close")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.authorization: bytes | None = None
        self.body: list[bytes] = []
        self.out: list[bytes] = []
        self.close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        COUNTERS.connections += 1

    # llhttp callbacks ------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools joins a header split across reads before this call
        if len(name) == 13 and name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        if not keep_alive:
            self.close = True
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if path == b"/introspect":
            if method != b"POST":
                out = response(405, b"", self.close)
            else:
                out = self.answer()
        elif path == b"/stats" and method == b"GET":
            out = response(200, COUNTERS.as_json(), self.close)
        else:
            out = response(404, b"", self.close)
        self.out.append(out)
        self.url, self.authorization, self.body = b"", None, []

    def answer(self) -> bytes:
        COUNTERS.calls += 1
        if client_of(self.authorization) is None:
            COUNTERS.unauthenticated += 1
            return response(401, _INVALID_CLIENT, self.close, _UNAUTHORIZED_EXTRA)
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        return response(200, introspect(form_token(body), int(time.time())), self.close)

    # transport ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            transport.write(BAD_REQUEST)
            transport.close()
            return
        out = self.out
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.close:
            transport.close()


def serve(port: int) -> None:
    import uvloop

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Introspection, sock=sock)
        host, bound = sock.getsockname()[:2]
        print(f"listening {host}:{bound}", flush=True)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# ---- the handle the bench uses ----------------------------------------------------------


class AuthServerProcess(UpstreamProcess):
    """The introspection server as a child process; ``stop()`` ends it by pid."""

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.url}/introspect"

    def stats(self, timeout: float = 5.0) -> dict[str, int]:
        """The server's counters (``GET /stats`` on a connection of its own)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", "/stats", headers={"Connection": "close"})
            reply = conn.getresponse()
            body = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"auth server /stats answered {reply.status}")
            return json.loads(body)
        finally:
            conn.close()


def start_authserver(timeout: float = 10.0) -> AuthServerProcess:
    """Start ``python -m bench.support.authserver`` on 127.0.0.1:0 and wait for its port."""
    return start_child("bench.support.authserver", AuthServerProcess, "auth server", timeout)


# ---- tokens -------------------------------------------------------------------------------


def token(set_name: str, n: int, nonce: str) -> str:
    """The ``n``-th active token of a set: ``fgbench.<set>.<n>.<nonce>`` (URL-safe)."""
    return f"{TOKEN_PREFIX.decode()}{set_name}.{n}.{nonce}"


def token_file(path: Path, set_name: str, count: int) -> Path:
    """``Authorization`` header values (``Bearer <token>``), one per line, for loadgen's
    ``--header-file``: ``count`` distinct active tokens of the set, with a random nonce so
    no two files (nor two runs) share a token. Opaque tokens cost nothing to make, so unlike
    the JWT bench's they are not cached between runs."""
    nonce = secrets.token_urlsafe(12).replace(".", "_")
    prefix = f"Bearer {TOKEN_PREFIX.decode()}{set_name}."
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as out:
        out.writelines(f"{prefix}{n}.{nonce}\n" for n in range(count))
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    serve(parser.parse_args().port)
