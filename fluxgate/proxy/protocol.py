"""The client side of the proxy: one asyncio protocol per accepted connection.

The request path itself is compiled (``fluxgate._proxy.ClientConnectionBase``, in
``fluxgate/_proxy.pyx``): a whole simple request in one read is parsed by one
``_core`` call, routed, authorized and forwarded without a Python frame. This subclass
keeps llhttp's side: it feeds httptools whatever the fast parser declines and never lets a
parse error escape: malformed input becomes a 400 and the connection is closed (aiohttp's
web_protocol does the same). It also keeps the error replies, suspension of a request by a
middleware, the WebSocket switch and the timeout sweep: rare events, written in Python.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from fluxgate._core import (
    CHUNK_TRAILERS_TOO_LARGE,
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_DROP,
    H_EXPECT,
    H_FLUXGATE,
    H_FORWARD,
    H_FORWARDED_FOR,
    H_FORWARDED_PROTO,
    H_FRAMING_ALIAS,
    H_HOST,
    H_REQUEST_ID,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    ChunkedBody,
    RequestState,
    classify_header,
    valid_host,
)
from fluxgate._proxy import (
    CLIENT_CLOSED,
    DEADLINE_BODY,
    DEADLINE_HEADERS,
    DEADLINE_IDLE,
    DEADLINE_NONE,
    MAX_CHUNK_LINE,
    PAUSE_AUTH,
    PAUSE_CONNECTING,
    PAUSE_PEER_FULL,
    PAUSE_PIPELINE,
    TUNNEL_CLOSE_GRACE,
    ClientConnectionBase,
    now,
)
from fluxgate.errors import (
    BadRequest,
    BodyTooLarge,
    ClientError,
    ExpectationFailed,
    HeadersTooLarge,
    HttpVersionNotSupported,
    InternalError,
)
from fluxgate.proxy.responses import error_response
from fluxgate.proxy.suspend import Suspended
from fluxgate.proxy.tunnel_credentials import bind_upgrade, unbind

if TYPE_CHECKING:
    from fluxgate.proxy.app import CompiledRoute, Gateway
    from fluxgate.proxy.exchange import Exchange

__all__ = ["CLIENT_CLOSED", "MAX_CHUNK_LINE", "ClientConnection", "RequestState",
           "TlsClientConnection"]

log = logging.getLogger("fluxgate.proxy")

GOING_AWAY = 1001  # RFC 6455 §7.4.1
# A draining worker closes its WebSockets this long before its drain deadline: a frame in
# flight ends and both Close answers come back (TUNNEL_CLOSE_GRACE each) before the rest
# is cut.
DRAIN_CLOSE_NOTICE = 2 * TUNNEL_CLOSE_GRACE

class ClientConnection(ClientConnectionBase, asyncio.Protocol):
    """One downstream HTTP/1.1 connection."""

    __slots__ = ()  # every field is the compiled base's

    PAUSE_CONNECTING = PAUSE_CONNECTING
    PAUSE_UPSTREAM_FULL = PAUSE_PEER_FULL
    PAUSE_PIPELINE = PAUSE_PIPELINE
    PAUSE_AUTH = PAUSE_AUTH  # a middleware waits for an answer (proxy/suspend.py)

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.parser = httptools.HttpRequestParser(self)

    # -- llhttp's path -----------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """Give `data` to llhttp in pieces that end where a head or a body ends, so that a
        chunked body is followed (ChunkedBody) from its first byte: llhttp bounds no chunk
        extension (RFC 9112 §7.1.1). A read inside one body is one piece."""
        self.corked += 1  # gather what this data makes us write (pipelined replies) into one send
        try:
            start, size = 0, len(data)
            while start < size and not self.closing:
                end = self._piece_end(data, start)
                if end < 0 or not self._feed_piece(data, start, end):
                    return
                start = end
        finally:
            self.uncork()

    def _piece_end(self, data: bytes, start: int) -> int:
        req, body = self.parsing, self.chunked_body
        if body is not None:
            end = body.scan(data, start)
            if end < 0:
                self._reject(
                    HeadersTooLarge("trailer section larger than limits.max_header_bytes")
                    if end == CHUNK_TRAILERS_TOO_LARGE
                    else BadRequest(f"chunk-size line over {MAX_CHUNK_LINE} bytes (chunk extensions)")
                )
            elif body.done:
                self.chunked_body = None
            return end
        if req is None or not req.method:  # between requests or in a head
            return _head_end(self.head_tail, data, start)
        size = len(data)
        if not req.chunked:  # a Content-Length body: the next request starts after it
            left = req.content_length - req.body_bytes
            return start + left if 0 < left < size - start else size
        return size

    def _feed_piece(self, data: bytes, start: int, end: int) -> bool:
        """Feed data[start:end] to llhttp; False when the connection stops being parsed."""
        piece = data if start == 0 and end == len(data) else data[start:end]
        parsing_before = self.parsing
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_parser_upgrade(data[start + upgrade.args[0] :])
            return False
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientError):
                self._reject(cause)
            else:
                log.error("request callback failed", exc_info=cause)
                self._reject(BadRequest("request could not be processed"))
            return False
        except httptools.HttpParserError as exc:
            self._reject(_parse_error(exc))
            return False
        req = self.parsing
        if req is not None and req.method:
            self.head_tail = b""
            return True
        # Still in a head: its last bytes, for a CRLF CRLF split across reads (_head_end).
        self.head_tail = (self.head_tail + piece[-3:])[-3:]
        # A piece that began and ended inside one request's header section is all header
        # bytes: count it, so a header that never ends cannot grow without bound.
        if req is not None and req is parsing_before:
            req.header_bytes += len(piece)
            if req.header_bytes > self.max_header_bytes * 2:
                self._reject(HeadersTooLarge())
                return False
        return True

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = RequestState(now())
        if self.active is None:
            self.deadline_kind = DEADLINE_HEADERS
            self.deadline = now() + self.header_timeout

    def on_url(self, piece: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.url += piece
        req.header_bytes += len(piece)
        if req.header_bytes > self.max_header_bytes:
            raise HeadersTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.header_bytes += len(name) + len(value) + 4
        if req.header_bytes > self.max_header_bytes:
            raise HeadersTooLarge()
        if len(req.headers) >= self.max_header_count:
            raise HeadersTooLarge("more header fields than limits.max_header_count")
        # RFC 9110 §5.5: whitespace around a field value is not part of it (llhttp has
        # removed the leading OWS, not the trailing one).
        value = value.rstrip(b" \t")
        pair = (name, value)
        req.headers.append(pair)
        # Header names repeat across requests in the spelling clients use: each spelling is
        # classified once per worker, as the fast head parser does (a bounded cache).
        kind = classify_header(name, self.header_kinds, self.special, self.allow_underscores)
        if kind == H_FORWARD:
            req.forward_headers.append(pair)
        elif kind == H_DROP or kind == H_FLUXGATE:  # hop-by-hop, API key, X-FluxGate-*
            return
        elif kind == H_HOST:
            req.hosts += 1
            req.host = value
            req.forward_headers.append(pair)
        elif kind == H_CONTENT_LENGTH:
            req.content_length = int(value)  # llhttp accepted only digits, at most once
        elif kind == H_TRANSFER_ENCODING:
            req.transfer_encoding = value
        elif kind == H_EXPECT:
            if value.lower() != b"100-continue":
                raise ExpectationFailed()
            req.expect_continue = True
        elif kind == H_FORWARDED_FOR:
            req.forwarded_for = (
                value if req.forwarded_for is None else req.forwarded_for + b", " + value
            )
        elif kind == H_FORWARDED_PROTO:
            req.forwarded_proto = value
        elif kind == H_REQUEST_ID:
            req.client_request_id = value
        elif kind == H_CONNECTION:
            req.connection = value if req.connection is None else req.connection + b", " + value
        elif kind == H_UPGRADE:
            req.upgrade_token = value
        elif kind == H_FRAMING_ALIAS:
            # Content_Length / Transfer_Encoding: a CGI-style upstream reads it as framing.
            raise BadRequest("header name aliases Content-Length or Transfer-Encoding")

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        parser = self.parser
        version = parser.get_http_version()
        if version == "1.1":
            req.http_minor = 1
        elif version == "1.0":
            req.http_minor = 0
        else:
            raise BadRequest("unsupported HTTP version")
        req.method = parser.get_method()
        if req.method == b"CONNECT":
            raise BadRequest("CONNECT is not supported")
        req.keep_alive = parser.should_keep_alive()
        # RFC 9112 §3.2: a 1.1 request without exactly one Host, or with several, is a 400.
        if req.hosts > 1 or (req.hosts == 0 and req.http_minor == 1):
            raise BadRequest("exactly one Host header is required")
        if req.host is not None and not valid_host(req.host):
            raise BadRequest("invalid Host header")  # RFC 9110 §7.2: uri-host [":" port]
        if req.transfer_encoding is not None:
            # RFC 9112 §6.1: TE in a 1.0 request is faulty framing; only plain "chunked" is
            # forwarded, so codings the upstream might read differently never pass.
            if req.http_minor == 0 or req.transfer_encoding.strip().lower() != b"chunked":
                raise BadRequest("unsupported Transfer-Encoding")
            req.chunked = True
            self.chunked_body = ChunkedBody(MAX_CHUNK_LINE, self.max_header_bytes)
        req.has_body = req.chunked or req.content_length > 0
        if req.content_length > self.max_body_bytes:
            raise BodyTooLarge()
        if parser.should_upgrade():
            token = req.upgrade_token
            if token is not None and token.strip().lower() == b"websocket":
                req.upgrade = b"websocket"
            else:
                # Only WebSocket is tunnelled: an h2c tunnel would carry later requests
                # past the gateway's checks. The request is served as plain HTTP/1.1.
                req.reparse = True
        self.deadline_kind = DEADLINE_NONE
        if self.active is None and not self.queue and not self.advancing:
            self._start(req)  # the common case: nothing in flight, nothing queued
        else:
            self.queue.append(req)
            if self.active is None:
                self._advance()
            else:
                self.pause_reading(self.PAUSE_PIPELINE)

    def on_body(self, chunk: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.body_bytes += len(chunk)
        if req.body_bytes > self.max_body_bytes:
            raise BodyTooLarge()
        if self.held is not None:  # the body is still coming: the held request waits on
            self.deadline = now() + self.idle_timeout
        exchange = req.exchange
        if exchange is not None:
            exchange.send_body(chunk)
        elif not req.response_done:
            req.body_buffer.append(chunk)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        self.parsing = None
        req.message_complete = True
        held = self.held
        if held is not None and held[0] is req:
            self.held = None
            self._clear_deadline()
            self._forward_buffered(req, held[1])
            return
        exchange = req.exchange
        if exchange is not None and not exchange.finished:
            exchange.end_body()
        if req.response_done and req is self.active:
            self._finish_request(req)

    def _on_parser_upgrade(self, rest: bytes) -> None:
        req = self.queue[-1] if self.queue else self.active
        if req is not None and req.reparse:
            # Not a tunnel: keep parsing what follows as ordinary requests.
            self.parser = httptools.HttpRequestParser(self)
            self.head_tail = b""
            if rest:
                self._feed(rest)
            return
        self.upgrading = True
        if rest:
            self.tunnel_pending.append(rest)

    def _forward_buffered(self, req: RequestState, route: CompiledRoute) -> None:
        """A held request's whole body is in: upstream it goes, unless the route is one the
        gateway answers itself with the body (``body_step``: the back-channel logout)."""
        step = route.body_step
        if step is None:
            super()._forward_buffered(req, route)
            return
        try:
            reply = step(req)
        except Suspended as wait:
            # Its answer resumes at the end of the route's steps with a local reply.
            self._suspend(req, route, len(route.steps), wait)
            return
        except Exception:
            log.exception("request %s: a gateway endpoint failed", req.request_id.decode())
            reply = InternalError()
        self._local_reply(req, reply if reply is not None else InternalError())

    # -- suspension (proxy/suspend.py) -------------------------------------------------------
    def _suspend(self, req: RequestState, route: CompiledRoute, resume_at: int,
                 wait: Suspended) -> None:
        """Wait for a stage's answer without blocking the loop; the client is not read
        meanwhile, so a body cannot pile up behind a request nobody has authorized."""
        self.pause_reading(self.PAUSE_AUTH)
        wait.future.add_done_callback(lambda _f: self._resume(req, route, resume_at, wait))

    def _resume(self, req: RequestState, route: CompiledRoute, resume_at: int,
                wait: Suspended) -> None:
        if self.closed or req.finished or self.active is not req:
            return  # the client went away while the answer was on its way
        self.resume_reading(self.PAUSE_AUTH)
        self.corked += 1
        try:
            refusal = wait.resume(req)
            if refusal is not None:
                raise refusal
            steps = route.steps
            for index in range(resume_at, len(steps)):
                resume_at = index + 1
                refusal = steps[index](req)
                if refusal is not None:
                    raise refusal
            head = self._upstream_head(req, route)
        except ClientError as err:
            self._local_reply(req, err)
            return
        except Suspended as again:
            self._suspend(req, route, resume_at, again)
            return
        except Exception:
            log.exception("request %s: the middleware chain failed", req.request_id.decode())
            self._local_reply(req, InternalError())
            return
        finally:
            self.uncork()
        self._forward(req, route, head)

    # -- endings -----------------------------------------------------------------------------
    def _local_reply(self, req: RequestState, err: ClientError) -> None:
        req.status = err.status
        # The access log's reason code: the auth failure's own (expired, unknown_key, ...)
        # where the error carries one, else the error's code.
        req.refusal = getattr(err, "reason", None) or err.code
        req.response_done = True
        body_pending = req.has_body and not req.message_complete
        close = err.close_connection or body_pending or not self.can_keep_alive(req)
        if req.request_id == b"":
            req.request_id = self.gw.request_id(None)
        self.write(
            error_response(
                err,
                req.request_id.decode(),
                close=close,
                head_only=req.method == b"HEAD",
                extra_headers=[*req.ratelimit_headers(), *req.response_headers],
            )
        )
        if close:
            req.close_after = True
            self.closing = True
            self._finish_request(req)
        elif req.message_complete:
            self._finish_request(req)

    def _reject(self, err: ClientError) -> None:
        """A protocol-level error: answer it in turn, then close."""
        self.closing = True
        self.held = None
        self.pause_reading(self.PAUSE_PIPELINE)
        active = self.active
        if active is not None:
            exchange = active.exchange
            if active is self.parsing or active.message_complete is False:
                # The error is in the message being proxied right now.
                if exchange is not None and exchange.response_started:
                    exchange.cancel()
                    self.abort()
                    return
                if exchange is not None:
                    exchange.cancel()
                active.exchange = None
                self._local_reply(active, err)
                return
            self.fatal = err  # answered after the in-flight response, in order
            return
        self._write_fatal(err)

    def _write_fatal(self, err: ClientError) -> None:
        req = self.parsing or RequestState(now())
        req.request_id = self.gw.request_id(None)
        req.status = err.status
        req.refusal = err.code
        if not req.client_ip:  # the head never completed: the peer is all there is
            req.client_ip = self.peer
        req.finished = True
        self.write(error_response(err, req.request_id.decode(), close=True))
        self._record(req)  # after the write: its bytes count as this request's
        self._close_soon()

    def start_tunnel(self, exchange: Exchange, upstream_rest: bytes) -> None:
        """101 from the upstream: switch this connection to a WebSocket tunnel (bytes
        unchanged, frame boundaries followed by the exchange's WsTunnel)."""
        self.tunnel = exchange
        self.upgrading = False
        self._clear_deadline()
        req = self.active
        if req is not None:
            req.response_done = True
        if upstream_rest:
            exchange.tunnel_from_upstream(upstream_rest)
        pending, self.tunnel_pending = self.tunnel_pending, []
        for data in pending:
            exchange.tunnel_from_client(data)
        if req is not None and not exchange.finished:
            # A WebSocket opened with a credential lives as long as the credential
            # (docs/websockets.md).
            bind_upgrade(self.gw, exchange, req)

    def tunnel_ended(self, exchange: Exchange) -> None:
        """The tunnel's client connection is gone: its binding goes too."""
        unbind(self.gw, exchange)

    # -- deadlines (the worker's sweep) -----------------------------------------------------
    def _clear_deadline(self) -> None:
        self.deadline_kind = DEADLINE_NONE

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's sweep a few times a second."""
        kind = self.deadline_kind
        if kind != DEADLINE_NONE and now >= self.deadline:
            # Slowloris, idle keep-alive or a held body that stopped coming: RFC 9112 §9.8
            # lets us just close.
            self._clear_deadline()
            if self.active is None or kind == DEADLINE_BODY:
                self._close_soon()
                return
        tunnel = self.tunnel
        if tunnel is not None:
            gw = self.gw
            if gw.draining and now >= gw.drain_deadline - DRAIN_CLOSE_NOTICE:
                # The worker is going away (stop or reload): a WebSocket ends with 1001
                # between frames, early enough for both Close answers, rather than in the
                # reset the worker gives what is left at the drain deadline.
                tunnel.close_tunnel(GOING_AWAY, "gateway shutting down")
            return
        req = self.active
        if req is not None and req.exchange is not None:
            req.exchange.check_timeout(now)

    def begin_drain(self) -> None:
        """Stop taking new requests on this connection once the current one is answered."""
        if self.active is None and self.parsing is None and self.tunnel is None:
            self._set_deadline(DEADLINE_IDLE, self.gw.drain_idle_grace)


# Where uvloop's TLS layer decrypts a TLS connection's bytes (one per worker: it fills it
# and hands it over in the same call, and the loop is single-threaded).
_TLS_READ_BUFFER = memoryview(bytearray(65536))


class TlsClientConnection(ClientConnection, asyncio.BufferedProtocol):
    """A client connection whose TLS the gateway terminated (the listener has ``tls``).

    The only difference on the request path: the upstream hears ``X-Forwarded-Proto:
    https`` (unless a trusted proxy in front said how its own client connected). A
    subclass, so a plain HTTP connection does not even test for TLS.

    A buffered protocol to uvloop's TLS layer: it decrypts into one buffer of the worker
    instead of a fresh 256 KiB object per read (an allocation as large as that is a
    mapping made and unmapped each time), and the request path gets the bytes read.
    """

    __slots__ = ()

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.tls = True

    def get_buffer(self, sizehint: int) -> memoryview:
        return _TLS_READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_TLS_READ_BUFFER[:nbytes]))


# llhttp pauses on "PRI * HTTP/2.0" (the HTTP/2 connection preface) with this reason; it
# is no malformed HTTP/1.1 but a client that skipped the version negotiation.
_H2_PREFACE_PAUSE = "PRI/Upgrade"
_H2_PREFACE_DESCRIPTION = "HTTP/2 is not supported: this gateway speaks HTTP/1.1 to clients"


def _parse_error(exc: httptools.HttpParserError) -> ClientError:
    """The answer to an llhttp parse error: a 505 naming HTTP/1.1 for an HTTP/2 preface,
    else a 400 quoting llhttp's reason."""
    if _H2_PREFACE_PAUSE in str(exc):
        return HttpVersionNotSupported(_H2_PREFACE_DESCRIPTION)
    return BadRequest(f"malformed request: {exc}")


def _head_end(tail: bytes, data: bytes, start: int) -> int:
    """Just past the first CRLF CRLF in data[start:] (`tail`: the last bytes of the head
    fed before it), else len(data). In a head that is where llhttp ends it (RFC 9112 §2.1;
    a bare LF is an error); a split before it, at CRLFs llhttp skips before a request line,
    only costs one more piece."""
    if tail:
        window = tail + data[start : start + 3]
        at = window.find(b"\r\n\r\n")
        if at >= 0:
            return start + at + 4 - len(tail)
    at = data.find(b"\r\n\r\n", start)
    return len(data) if at < 0 else at + 4
