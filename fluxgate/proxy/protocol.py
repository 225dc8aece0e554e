"""The client side of the proxy: one asyncio protocol per accepted connection.

The protocol feeds llhttp (through httptools) and never lets a parse error escape: malformed
input becomes a 400 and the connection is closed (aiohttp's web_protocol does the same).
Requests are answered strictly in order; a pipelined request waits in a queue (reading
pauses meanwhile, so a pipelining client cannot make the queue grow without bound).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
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
    PathError,
    RequestState,
    classify_header,
    normalize_path,
    parse_request_head,
    upstream_head,
    valid_host,
)
from fluxgate.errors import (
    BadRequest,
    BodyTooLarge,
    ClientError,
    ExpectationFailed,
    HeadersTooLarge,
    InternalError,
    MethodNotAllowed,
    NoRoute,
)
from fluxgate.proxy import headers as hdr
from fluxgate.proxy.exchange import Exchange
from fluxgate.proxy.responses import CONTINUE_100, error_response
from fluxgate.proxy.suspend import Suspended

if TYPE_CHECKING:
    from fluxgate.proxy.app import CompiledRoute, Gateway

log = logging.getLogger("fluxgate.proxy")

# _DEADLINE_BODY: a held request (buffer_request_body) whose body stopped arriving.
_DEADLINE_NONE, _DEADLINE_HEADERS, _DEADLINE_IDLE, _DEADLINE_BODY = 0, 1, 2, 3
# Status recorded when the client disconnects before its response was sent (nginx's 499).
CLIENT_CLOSED = 499
# Bytes a chunk-size line may hold, extensions included (RFC 9112 §7.1.1: a server ought to
# limit them); a longer one is a 400. Trailer fields count against limits.max_header_bytes.
MAX_CHUNK_LINE = 4096


class ClientConnection(asyncio.Protocol):
    """One downstream HTTP/1.1 connection."""

    PAUSE_CONNECTING = 1
    PAUSE_UPSTREAM_FULL = 2
    PAUSE_PIPELINE = 4
    PAUSE_AUTH = 8  # a middleware waits for an answer (proxy/suspend.py)

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.special = gateway.request_special  # header name (lower case) -> kind
        self.header_kinds = gateway.header_kinds  # header name as sent -> kind
        self.loop = gateway.loop
        limits = gateway.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_header_count = limits.max_header_count
        self.allow_underscores = limits.allow_underscores_in_headers
        self.max_body_bytes = limits.max_body_bytes
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: RequestState | None = None
        self.active: RequestState | None = None
        self.queue: deque[RequestState] = deque()
        self.paused = 0
        self.closing = False
        self.closed = False
        self.fatal: ClientError | None = None
        self.chunked_body: ChunkedBody | None = None  # the chunked body being read, followed
        # The active request and its route while buffer_request_body reads its body.
        self.held: tuple[RequestState, CompiledRoute] | None = None
        self.head_tail = b""  # the last bytes fed of a head not yet complete
        self.tunnel: Exchange | None = None
        self.tunnel_pending: list[bytes] = []
        self.upgrading = False
        self.advancing = False
        self.peer = ""
        self.peer_bytes = b""
        self.deadline = 0.0
        self.deadline_kind = _DEADLINE_NONE
        self.corked = 0
        self.out: list[bytes] = []

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.peer_bytes = self.peer.encode()
        self.gw.connections.add(self)
        self._set_deadline(_DEADLINE_HEADERS, self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gw.connections.discard(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.cancel()
        for req in (self.active, *self.queue):
            if req is not None and not req.finished:
                if req.exchange is not None:
                    req.exchange.cancel()
                if not req.response_done:
                    req.status = CLIENT_CLOSED
                self.gw.record(req)
        self.active = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_from_client(data)
            return
        if self.upgrading:
            self.tunnel_pending.append(data)
            return
        if self.closing:
            return
        if self.active is None and self.parsing is None and not self.queue:
            # The common case, one whole simple request in one read, is parsed by one _core
            # call; anything else (partial, pipelined, chunked, Expect, Upgrade, malformed)
            # goes through llhttp, which has the final word on what is valid.
            req = parse_request_head(
                data,
                self.header_kinds,
                self.special,
                self.max_header_bytes,
                self.max_body_bytes,
                perf_counter(),
                self.max_header_count,
                self.allow_underscores,
            )
            if req is not None:
                self.deadline_kind = _DEADLINE_NONE
                self._start(req)
                return
        self._feed(data)

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
            self._reject(BadRequest(f"malformed request: {exc}"))
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

    def pause_writing(self) -> None:
        req = self.active
        exchange = self.tunnel or (req.exchange if req is not None else None)
        if exchange is not None:
            exchange.client_pause_writing()

    def resume_writing(self) -> None:
        req = self.active
        exchange = self.tunnel or (req.exchange if req is not None else None)
        if exchange is not None:
            exchange.client_resume_writing()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = RequestState(perf_counter())
        if self.active is None:
            self.deadline_kind = _DEADLINE_HEADERS
            self.deadline = self.loop.time() + self.header_timeout

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
        self.deadline_kind = _DEADLINE_NONE
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
            self.deadline = self.loop.time() + self.idle_timeout
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

    # -- the request path --------------------------------------------------------------------
    def _advance(self) -> None:
        """Start queued requests, in order, while nothing is in flight."""
        if self.advancing:
            return
        if self.queue:
            self.advancing = True
            try:
                while self.active is None and self.queue and not self.closing:
                    req = self.queue.popleft()
                    if len(self.queue) < 2:
                        self.resume_reading(self.PAUSE_PIPELINE)
                    self._start(req)
            finally:
                self.advancing = False
        if self.active is None and self.parsing is None and not self.closing:
            grace = self.gw.drain_idle_grace if self.gw.draining else self.idle_timeout
            self._set_deadline(_DEADLINE_IDLE, grace)

    def _start(self, req: RequestState) -> None:
        self.active = req
        gw = self.gw
        req.request_id = gw.request_ids.take(req.client_request_id)
        if req.forwarded_for is None:
            req.client_ip = self.peer  # what the resolver answers without X-Forwarded-For
        else:
            req.client_ip, req.peer_trusted = gw.resolver.resolve(self.peer, req.forwarded_for)
        try:
            route = self._route(req)
            for step in route.steps:
                refusal = step(req)
                if refusal is not None:
                    raise refusal
            head = self._upstream_head(req, route)
        except ClientError as err:
            self._local_reply(req, err)
            return
        except Suspended as wait:
            # `step` is the stage that raised: the chain goes on after it once answered.
            self._suspend(req, route, route.steps.index(step) + 1, wait)
            return
        except Exception:
            # A bug in a stage must not leave the client hanging nor let the request through:
            # fail closed with a 500 and the traceback in the log.
            log.exception("request %s: the middleware chain failed", req.request_id.decode())
            self._local_reply(req, InternalError())
            return
        self._forward(req, route, head)

    def _upstream_head(self, req: RequestState, route: CompiledRoute) -> bytes:
        # The head sent upstream leaves out the route's middleware-owned headers and
        # those the client's Connection header names (hop-by-hop, RFC 9110 §7.6.1).
        drop = route.drop_headers
        if req.connection is not None:
            drop = drop | hdr.dropped_by_connection(req.connection)
        return upstream_head(req, drop, route.strip_length, self.peer_bytes, self.gw.api_key_query)

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

    def _forward(self, req: RequestState, route: CompiledRoute, head: bytes) -> None:
        if route.buffer_body and req.has_body and not req.message_complete:
            # buffer_request_body: nothing goes upstream before the whole body has been
            # read (bounded by max_body_bytes) and found well-framed; on_message_complete
            # sends it on.
            self.held = (req, route)
            self._set_deadline(_DEADLINE_BODY, self.idle_timeout)
            if req.expect_continue:
                self.write(CONTINUE_100)  # RFC 9110 §10.1.1, as below
            return
        exchange = Exchange(self, req, route.group, head)
        req.exchange = exchange
        if req.expect_continue and not req.message_complete:
            # RFC 9110 §10.1.1: the client waits for this before sending the body; it is
            # only sent once the request is known to be authorized.
            self.write(CONTINUE_100)
        exchange.start()
        if req.body_buffer:
            for chunk in req.body_buffer:
                exchange.send_body(chunk)
            req.body_buffer = []
        if req.message_complete and not exchange.finished:
            exchange.end_body()

    def _forward_buffered(self, req: RequestState, route: CompiledRoute) -> None:
        """A held request's whole body is in: it goes upstream with Content-Length."""
        req.chunked = False
        req.content_length = req.body_bytes
        req.has_body = req.body_bytes > 0
        self._forward(req, route, self._upstream_head(req, route))

    def _route(self, req: RequestState) -> CompiledRoute:
        if not req.path:  # llhttp's path (the fast parser splits and normalizes itself)
            url = req.url
            if url[:1] != b"/":
                url = _origin_form(url)
            path, _, query = url.partition(b"?")
            req.query = query
            try:
                req.path = normalize_path(path)
            except PathError as exc:
                raise BadRequest(f"ambiguous or malformed path: {exc}") from None
        route = self.gw.router.match(req.path)
        if route is None:
            raise NoRoute()
        req.route = route
        if route.methods is not None and req.method not in route.methods:
            raise MethodNotAllowed(headers=((b"Allow", route.allow_header),))
        if req.upgrade is not None and not route.websocket:
            raise BadRequest("WebSocket is not enabled on this route")
        return route

    # -- endings -----------------------------------------------------------------------------
    def can_keep_alive(self, req: RequestState) -> bool:
        """May this connection carry another request after `req`'s response?"""
        return req.keep_alive and req.upgrade is None and not self.gw.draining and not self.closing

    def _local_reply(self, req: RequestState, err: ClientError) -> None:
        req.status = err.status
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

    def exchange_failed(self, req: RequestState, err: ClientError) -> None:
        """The exchange ended before any response byte was sent: answer locally."""
        if not self.closed:
            self._local_reply(req, err)

    def exchange_done(self, req: RequestState) -> None:
        """The upstream's response was fully relayed."""
        req.response_done = True
        if req.message_complete:
            self._finish_request(req)

    def _finish_request(self, req: RequestState) -> None:
        if req.finished:
            return
        req.finished = True
        self.gw.record(req)
        if self.active is req:
            self.active = None
        req.exchange = None
        if self.fatal is not None and self.active is None:
            fatal, self.fatal = self.fatal, None
            self._write_fatal(fatal)
            return
        if req.close_after or self.closing or not req.keep_alive:
            self._close_soon()
            return
        self._advance()

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
        req = self.parsing or RequestState(perf_counter())
        req.request_id = self.gw.request_id(None)
        req.status = err.status
        req.finished = True
        self.gw.record(req)
        self.write(error_response(err, req.request_id.decode(), close=True))
        self._close_soon()

    def start_tunnel(self, exchange: Exchange, upstream_rest: bytes) -> None:
        """101 from the upstream: switch this connection to a raw byte tunnel."""
        self.tunnel = exchange
        self.upgrading = False
        self._clear_deadline()
        req = self.active
        if req is not None:
            req.response_done = True
        if upstream_rest:
            self.write(upstream_rest)
        pending, self.tunnel_pending = self.tunnel_pending, []
        for data in pending:
            exchange.tunnel_from_client(data)

    # -- transport helpers ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send bytes to the client; while corked they are gathered into one send."""
        if self.corked:
            self.out.append(data)
            return
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def uncork(self) -> None:
        """End one `corked += 1` section: what it wrote leaves in one send (one syscall per
        event-loop callback, not per piece)."""
        self.corked -= 1
        if self.corked == 0 and self.out:
            self._flush()

    def _flush(self) -> None:
        out, self.out = self.out, []
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause_reading(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Cut the connection (a response already started cannot be turned into an error)."""
        self.closing = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _close_soon(self) -> None:
        """Close once everything written so far has been flushed."""
        self.closing = True
        if self.out:
            self._flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self.loop.time() + seconds

    def _clear_deadline(self) -> None:
        self.deadline_kind = _DEADLINE_NONE

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's sweep a few times a second."""
        kind = self.deadline_kind
        if kind != _DEADLINE_NONE and now >= self.deadline:
            # Slowloris, idle keep-alive or a held body that stopped coming: RFC 9112 §9.8
            # lets us just close.
            self._clear_deadline()
            if self.active is None or kind == _DEADLINE_BODY:
                self._close_soon()
                return
        req = self.active
        if req is not None and req.exchange is not None:
            req.exchange.check_timeout(now)
        elif self.tunnel is not None and self.gw.draining and now >= self.gw.drain_deadline:
            self.abort()

    def begin_drain(self) -> None:
        """Stop taking new requests on this connection once the current one is answered."""
        if self.active is None and self.parsing is None and self.tunnel is None:
            self._set_deadline(_DEADLINE_IDLE, self.gw.drain_idle_grace)


class TlsClientConnection(ClientConnection):
    """A client connection whose TLS the gateway terminated (the listener has ``tls``).

    The only difference on the request path: the upstream hears ``X-Forwarded-Proto:
    https``. A subclass, so a plain HTTP connection does not even test for TLS.
    """

    def _upstream_head(self, req: RequestState, route: CompiledRoute) -> bytes:
        head = ClientConnection._upstream_head(self, req, route)
        if req.peer_trusted and req.forwarded_for and req.forwarded_proto is not None:
            return head  # a trusted proxy in front said how its own client connected
        # upstream_head wrote "http" for a peer that is the client itself: here it reached
        # the gateway over TLS. The line is the gateway's own (the client's X-Forwarded-Proto
        # is never copied, and no header value holds CRLF), so one replace is exact.
        return head.replace(_PROTO_HTTP, _PROTO_HTTPS, 1)


_PROTO_HTTP = b"\r\nX-Forwarded-Proto: http\r\n"
_PROTO_HTTPS = b"\r\nX-Forwarded-Proto: https\r\n"


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


def _origin_form(url: bytes) -> bytes:
    """absolute-form (RFC 9112 §3.2.2) → origin-form; anything else is a 400."""
    lowered = url[:8].lower()
    if lowered.startswith(b"http://"):
        rest = url[7:]
    elif lowered.startswith(b"https://"):
        rest = url[8:]
    else:
        raise BadRequest("request target must be origin-form or absolute-form")
    slash = rest.find(b"/")
    if slash < 0:
        return b"/"
    return rest[slash:]
