"""One request proxied to one upstream connection, streaming both ways.

The exchange is the terminal stage of the chain (Envoy's router filter): it takes a pooled
connection, sends the rewritten head and then the body as the client sends it, and streams
the response back as it arrives. Neither body is ever buffered whole: when one side's write
buffer is full, reading from the other side pauses (back-pressure, as aiohttp does).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fluxgate._core import response_head
from fluxgate.errors import ClientError, UpstreamTimeout, UpstreamUnavailable
from fluxgate.proxy.responses import status_line

if TYPE_CHECKING:
    from fluxgate._core import ResponseHead
    from fluxgate.proxy.protocol import ClientConnection, RequestState
    from fluxgate.proxy.upstream import UpstreamConnection, UpstreamGroup

log = logging.getLogger("fluxgate.proxy")

# RFC 9110 §9.2.2: a request may be retried on a fresh connection only if idempotent.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Bytes of request body kept while no upstream connection is writable yet.
PENDING_BODY_LIMIT = 256 * 1024

_FRAME_NONE, _FRAME_LENGTH, _FRAME_CHUNKED, _FRAME_CLOSE = 0, 1, 2, 3
# A deadline that never passes (float("inf") parses a string on every call).
_NO_DEADLINE = float("inf")


class Exchange:
    """Proxies `req` from `client` through `group`."""

    # Every field is set in __init__, none is a class-level default: CPython 3.11 reads a
    # slot at a fixed offset, but an attribute that falls through to the class takes the
    # generic lookup, and these are read several times per request.
    __slots__ = (
        "client", "req", "group", "head", "conn", "pending", "pending_bytes", "body_done",
        "response_started", "response_frame", "client_chunked", "finished", "attempts",
        "deadline",
    )  # fmt: skip

    def __init__(
        self, client: ClientConnection, req: RequestState, group: UpstreamGroup, head: bytes
    ):
        self.client = client
        self.req = req
        self.group = group
        self.head = head
        self.conn: UpstreamConnection | None = None
        self.pending: list[bytes] | None = None  # body bytes while no connection is writable
        self.pending_bytes = 0
        self.body_done = False
        self.response_started = False
        self.response_frame = _FRAME_NONE
        self.client_chunked = False
        self.finished = False
        self.attempts = 0
        self.deadline = _NO_DEADLINE  # set by start(), before anything can time out

    # -- start / body from the client ---------------------------------------------------
    def start(self) -> None:
        """Acquire a connection (possibly at once) and send the head."""
        self.attempts += 1
        group = self.group
        pool = next(group.targets)  # round-robin
        conn = pool.take_idle()  # under load, a warm pooled connection: no callback needed
        if conn is not None:
            self._on_connection(conn, None)
            return
        self.deadline = self.client.loop.time() + group.connect_timeout + group.read_timeout
        pool.acquire(self._on_connection)

    def _on_connection(self, conn: UpstreamConnection | None, exc: BaseException | None) -> None:
        if self.finished:
            if conn is not None:
                conn.pool.release(conn)
            return
        if conn is None:
            if self.attempts < len(self.group.pools):
                # Another target may be up: try each once before answering 502.
                self.start()
                return
            self.finish_with_error(UpstreamUnavailable(f"upstream {self.group.name} unreachable"))
            return
        self.conn = conn
        conn.begin(self, self.req.method == b"HEAD")
        self.touch()
        conn.write(self.head)
        if self.pending:
            conn.write(b"".join(self.pending))
            self.pending = None
            self.pending_bytes = 0
            self.client.resume_reading(self.client.PAUSE_CONNECTING)
        if self.body_done and self.req.chunked:
            conn.write(b"0\r\n\r\n")

    def send_body(self, chunk: bytes) -> None:
        """A piece of the request body arrived from the client."""
        if self.finished:
            return  # the upstream already answered; the rest of the body is discarded
        if self.req.chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        conn = self.conn
        if conn is not None:
            self.touch()
            conn.write(chunk)
            return
        if self.pending is None:
            self.pending = []
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.pending_bytes > PENDING_BODY_LIMIT:
            self.client.pause_reading(self.client.PAUSE_CONNECTING)

    def end_body(self) -> None:
        """The client's request message is complete."""
        self.body_done = True
        if self.req.chunked and self.conn is not None and not self.finished:
            self.conn.write(b"0\r\n\r\n")

    # -- flow control ---------------------------------------------------------------------
    def upstream_pause_writing(self) -> None:
        self.client.pause_reading(self.client.PAUSE_UPSTREAM_FULL)

    def upstream_resume_writing(self) -> None:
        self.client.resume_reading(self.client.PAUSE_UPSTREAM_FULL)

    def client_pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def client_resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def touch(self) -> None:
        """Progress was made: push the read deadline out."""
        self.deadline = self.client.loop.time() + self.group.read_timeout

    # -- response from the upstream -------------------------------------------------------
    def upstream_headers(
        self,
        conn: UpstreamConnection,
        status: int,
        header_lines: list[bytes],
        content_length: bytes | None,
        upstream_chunked: bool,
    ) -> None:
        """The response head arrived: frame it for the client and send it on."""
        req = self.req
        client = self.client
        no_body = req.method == b"HEAD" or status in (204, 304) or status == 101
        keep_alive = client.can_keep_alive(req)
        extra = req.response_headers
        length = None
        chunked = False
        if status == 101:
            self.response_frame = _FRAME_NONE
            extra = [*extra, (b"Connection", b"Upgrade"), (b"Upgrade", req.upgrade or b"websocket")]
        elif no_body:
            self.response_frame = _FRAME_NONE
            if status != 204:
                length = content_length
        elif upstream_chunked:
            self.response_frame = _FRAME_CHUNKED
        elif content_length is not None:
            self.response_frame = _FRAME_LENGTH
            length = content_length
        else:
            self.response_frame = _FRAME_CLOSE
        if self.response_frame in (_FRAME_CHUNKED, _FRAME_CLOSE):
            if req.http_minor >= 1 and keep_alive:
                self.client_chunked = chunked = True
            else:
                keep_alive = False
        self._send_head(
            status, b"".join(header_lines), extra, length, chunked, not keep_alive and status != 101
        )

    def upstream_response(self, conn: UpstreamConnection, head: ResponseHead, data: bytes) -> None:
        """A whole response arrived in one read (parsed in _core): relay it in one write."""
        status = head.status
        self._send_head(
            status,
            head.lines,
            self.req.response_headers,
            None if status == 204 else head.content_length,
            False,
            not self.client.can_keep_alive(self.req),
            data,
            head.body_start,
            head.body_length,
        )
        self.upstream_complete(conn, head.keep_alive)

    def _send_head(
        self,
        status: int,
        lines: bytes,
        extra: list[tuple[bytes, bytes]],
        length: bytes | None,
        chunked: bool,
        close: bool,
        data: bytes | None = None,
        body_start: int = 0,
        body_length: int = 0,
    ) -> None:
        """Write the client's response head (and a body already at hand) in one write."""
        req = self.req
        if close:
            req.close_after = True
        self.response_started = True
        req.status = status
        self.client.write(
            response_head(
                status_line(status), lines, req, extra, length, chunked, close,
                data, body_start, body_length,
            )  # fmt: skip
        )

    def upstream_body(self, chunk: bytes) -> None:
        if self.client_chunked:
            self.client.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.client.write(chunk)

    def upstream_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        if self.client_chunked:
            self.client.write(b"0\r\n\r\n")
        self.conn = None
        if conn.paused_by_owner:
            conn.resume_reading()
        if reusable and self.body_done and not self.finished:
            conn.pool.release(conn)
        else:
            # The upstream answered before reading the whole request body (or asked to
            # close): the connection is not at a message boundary, so it cannot be reused.
            conn.close()
        self._finish()

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """101 Switching Protocols: from now on bytes flow unchanged both ways."""
        self.conn = conn
        conn.pool.forget(conn)  # a tunnel never returns to the pool
        self.client.start_tunnel(self, rest)

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.client.write(data)

    def tunnel_from_client(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.write(data)

    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        self.conn = None
        if self.finished:
            return
        if conn.tunnel:
            self.finished = True
            self.client.abort()
            return
        if not self.response_started:
            retriable = (
                conn.requests_served > 0
                and not conn.got_bytes
                and self.attempts < 2
                and self.req.method in IDEMPOTENT
                and not self.req.has_body
            )
            if retriable:
                # A pooled connection the upstream closed while idle (RFC 9112 §9.3.1):
                # safe to replay once because nothing was consumed.
                self.start()
                return
            self.finish_with_error(
                UpstreamUnavailable(f"upstream {self.group.name} closed the connection")
            )
            return
        if self.response_frame == _FRAME_CLOSE:
            # A close-delimited response ends when the upstream closes (RFC 9112 §6.3).
            if self.client_chunked:
                self.client.write(b"0\r\n\r\n")
            self._finish()
            return
        # The response was cut short: the client must see the cut, not a short body.
        self.finished = True
        self.client.abort()

    # -- endings ----------------------------------------------------------------------------
    def check_timeout(self, now: float) -> None:
        """Called by the worker's timer sweep."""
        if self.finished or now < self.deadline:
            return
        if not self.response_started:
            self.finish_with_error(
                UpstreamTimeout(f"upstream {self.group.name} did not answer in time")
            )
        else:
            self.cancel()
            self.client.abort()

    def finish_with_error(self, error: ClientError) -> None:
        """End before any response byte was sent: the client gets a local reply."""
        if self.finished:
            return
        self.cancel()
        self.client.exchange_failed(self.req, error)

    def cancel(self) -> None:
        """Drop the upstream side (mid-message, so never back to the pool)."""
        if self.finished:
            return
        self.finished = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.owner = None
            conn.abort()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.client.exchange_done(self.req)
