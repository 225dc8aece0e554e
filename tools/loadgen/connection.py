"""One client connection: an asyncio.Protocol that sends a prepared request and parses the reply.

At most one request is in flight per connection (keep-alive, no pipelining).  Responses are parsed
by llhttp through ``httptools.HttpResponseParser``, which handles Content-Length, chunked bodies
and ``Connection: close``; the body itself is never copied into Python (no ``on_body`` callback).

The connection reports to its owner (``engine.Engine``) through three calls:
``on_response(conn, status, keep_alive)``, ``on_failure(conn, kind, in_flight)`` and ``on_closed(conn)``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpResponseParser

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Connection"]

_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


class Connection(asyncio.Protocol):
    __slots__ = (
        "engine",
        "transport",
        "parser",
        "busy",
        "started",
        "dead",
        "head_only",
        "framed",
        "headers_done",
    )

    def __init__(self, engine: Engine, head_only: bool) -> None:
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.busy = False  # a request is in flight
        self.started = 0.0  # latency origin of the request in flight (time.monotonic())
        self.dead = False  # closed, aborted or about to be; owner already told
        self.head_only = head_only  # responses to HEAD carry no body (RFC 9110 §9.3.2)
        self.framed = False  # the response has Content-Length or Transfer-Encoding
        self.headers_done = False

    # -- owner side ---------------------------------------------------------------------------

    def send(self, payload: bytes, started: float) -> None:
        self.busy = True
        self.started = started
        self.framed = False
        self.headers_done = False
        if self.head_only:
            # llhttp cannot be told that a response has no body, so each HEAD gets a new parser.
            self.parser = HttpResponseParser(self)
        self.transport.write(payload)

    def close(self) -> None:
        """Close without reporting: the owner already knows."""
        self.dead = True
        self.busy = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (RST), without reporting."""
        self.dead = True
        self.busy = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, kind: str) -> None:
        in_flight = self.busy
        self.abort()
        self.engine.on_failure(self, kind, in_flight)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            if self.dead:
                return
            # Bytes nobody asked for (RFC 9112 §9.3: a client must not expect a response without
            # a request) would be parsed as the next response; the connection is unusable.
            self._fail("parse")
            return
        self.engine.bytes_received += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            if not self.dead:
                self._fail("parse")

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.dead:
            return
        self.dead = True
        if not self.busy:
            self.engine.on_closed(self)
            return
        self.busy = False
        if self.headers_done and not self.framed:
            # RFC 9112 §6.3 item 8: no Content-Length nor Transfer-Encoding means the body ends
            # when the server closes the connection.
            self.engine.on_response(self, self.parser.get_status_code(), False)
        else:
            self.engine.on_failure(self, "connection", True)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if (len(name) == 14 or len(name) == 17) and name.lower() in _FRAMING_HEADERS:
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # 1xx interim response: the final one follows (RFC 9110 §15.2)
        self.headers_done = True
        if self.head_only or status == 204 or status == 304:
            self.framed = True
            if self.head_only:
                self.busy = False
                self.engine.on_response(self, status, self.parser.should_keep_alive())

    def on_message_complete(self) -> None:
        if not self.busy or self.dead or self.head_only:
            return  # a HEAD exchange completes at its headers
        status = self.parser.get_status_code()
        if status < 200:
            return
        self.busy = False
        self.engine.on_response(self, status, self.parser.should_keep_alive())
