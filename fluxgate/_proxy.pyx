# cython: language_level=3
"""FluxGate's per-request data plane, compiled: client connection, exchange, upstream
connection and the hot half of the pool.

Contract for Cython callers: ``_proxy.pxd`` (a table of contents of one ``.pxd`` per
piece; this file has one section per piece, in the same order); for Python:
``_proxy.pyi``. Unlike ``_core`` ("no I/O"), this module talks to
asyncio transports; like ``_core`` it holds no policy. The asyncio protocols are the
Python subclasses in ``fluxgate/proxy/protocol.py`` and ``fluxgate/proxy/upstream.py``
(asyncpg's ``class Protocol(BaseProtocol, asyncio.Protocol)``), which keep llhttp's
callbacks, error replies, suspension, timeouts and the pool's policy: what happens once
per connection or once per malformed message does not pay to compile.

The common request -- one whole simple request in one read, one whole simple response in
one read -- runs here from ``data_received`` to the reply's single write without a
Python frame: the two head parsers and the head builders are ``_core`` calls, the
middleware chain is the route's tuple of bound methods (Python, as it must be).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcpy
from libc.time cimport gmtime_r, strftime, tm
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

import logging
from collections import deque
from os import urandom as _urandom

from fluxgate._core import PathError, normalize_path
from fluxgate.errors import (
    BadRequest,
    ClientError,
    InternalError,
    MethodNotAllowed,
    NoRoute,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fluxgate.proxy.headers import dropped_by_connection
from fluxgate.proxy.responses import CONTINUE_100, status_line
from fluxgate.proxy.suspend import Suspended

log = logging.getLogger("fluxgate.proxy")

# RFC 9110 §9.2.2: a request may be retried on a fresh connection only if idempotent.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Access-log entries kept before a flush that does not wait for the sweep.
cdef Py_ssize_t _ACCESS_LOG_BATCH = 512


# ---- accounting and the clock (contract: _proxy_accounting.pxd) -----------------------


cdef double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def now():
    """monotonic() for Python: when a request began (RequestState.started)."""
    return monotonic()


cdef class Accounting:
    """Counts a finished request in the shared metrics table and the access log; one per
    worker (Gateway.accounting). Query strings can carry credentials (``?api_key=``), so
    the access log has only the path."""

    def __init__(self, RequestRecorder recorder, access_log):
        self._recorder = recorder
        self._access_log = access_log
        self._lines = access_log.lines if access_log is not None else None
        self._json = access_log is not None and access_log.format == "json"
        self._second = -1

    cpdef record(self, RequestState req, Py_ssize_t sent=0):
        """Count ``req``, finished now: its status and latency under its route's slot,
        and its access-log line (``sent``: bytes written to the client for it).

        The line is written here, in C (~2,000 instructions; formatting the same fields in
        Python cost ~24,000), into AccessLog.lines; the sweep writes them out."""
        cdef double now = monotonic()
        cdef double seconds = now - <double>req.started
        cdef double upstream = -1.0
        cdef RouteBase route = req.route
        cdef Py_ssize_t slot = route.slot if route is not None else 0
        if self._recorder is not None:
            self._recorder.record(slot, req.status, seconds)
        if self._lines is not None:
            if req.exchange is not None:
                upstream = now - (<Exchange?>req.exchange).started
            self._lines.append(self._line(req, route, seconds, upstream, sent))
            if len(self._lines) >= _ACCESS_LOG_BATCH:
                self._access_log.flush()

    cdef bytes _line(self, RequestState req, RouteBase route, double seconds,
                     double upstream, Py_ssize_t sent):
        # Text: time client method path status total upstream= bytes= route= id=
        # principal= reason= (client bytes escaped, "-" for none). JSON: the same keys as
        # one object (docs/access-log.md).
        cdef timespec wall
        cdef tm parts
        cdef bytes method = req.method
        cdef bytes path = req.path or req.url  # the raw target of an unrouted request
        cdef bytes request_id = req.request_id
        cdef bytes client = _utf8(req.client_ip)
        cdef bytes label = _utf8((<object>route).label) if route is not None else b""
        cdef bytes reason = _utf8(req.refusal) if req.refusal is not None else b""
        cdef bytes who = b""
        cdef const char* p = PyBytes_AS_STRING(path)
        cdef const char* query = <const char*>memchr(p, 63, PyBytes_GET_SIZE(path))  # "?"
        cdef Py_ssize_t path_length = (query - p) if query != NULL else PyBytes_GET_SIZE(path)
        cdef bint json = self._json
        if req.principal is not None:
            principal = req.principal
            who = _utf8(f"{principal.method}:{principal.subject}")
        clock_gettime(CLOCK_REALTIME, &wall)
        if wall.tv_sec != self._second:
            self._second = wall.tv_sec
            gmtime_r(&wall.tv_sec, &parts)
            strftime(self._second_text, sizeof(self._second_text), b"%Y-%m-%dT%H:%M:%S",
                     &parts)
        # Every escaped byte takes at most 6 (\u00XX); numbers and keys fit in 320.
        cdef Py_ssize_t bound = 320 + 6 * (
            PyBytes_GET_SIZE(method) + path_length + PyBytes_GET_SIZE(request_id)
            + PyBytes_GET_SIZE(client) + PyBytes_GET_SIZE(label) + PyBytes_GET_SIZE(reason)
            + PyBytes_GET_SIZE(who))
        cdef bytes line = PyBytes_FromStringAndSize(NULL, bound)
        cdef char* start = PyBytes_AS_STRING(line)
        cdef char* out = start
        if json:
            out = _put_c(out, b'{"time":"', 9)
        out = _put_c(out, self._second_text, 19)
        out[0] = 46  # "."
        out = _put_digits(out + 1, wall.tv_nsec // 1000000, 3)
        if json:
            out = _put_c(out, b'Z","client":', 12)
            out = _put_json(out, client, PyBytes_GET_SIZE(client))
            out = _put_c(out, b',"method":', 10)
            out = _put_json(out, method, PyBytes_GET_SIZE(method))
            out = _put_c(out, b',"path":', 8)
            out = _put_json(out, path, path_length)
            out = _put_c(out, b',"route":', 9)
            out = _put_json(out, label, PyBytes_GET_SIZE(label))
            out = _put_c(out, b',"status":', 10)
            out = _put_digits(out, req.status, 1)
            out = _put_c(out, b',"duration_ms":', 15)
            out = _put_ms(out, seconds, 3)
            out = _put_c(out, b',"upstream_ms":', 15)
            out = _put_ms(out, upstream, 3) if upstream >= 0 else _put_c(out, b"null", 4)
            out = _put_c(out, b',"bytes":', 9)
            out = _put_digits(out, sent, 1)
            out = _put_c(out, b',"request_id":', 14)
            out = _put_json(out, request_id, PyBytes_GET_SIZE(request_id))
            out = _put_c(out, b',"principal":', 13)
            out = _put_json(out, who, PyBytes_GET_SIZE(who))
            out = _put_c(out, b',"reason":', 10)
            out = _put_json(out, reason, PyBytes_GET_SIZE(reason))
            out = _put_c(out, b"}\n", 2)
        else:
            out = _put_c(out, b"Z ", 2)
            out = _put_text(out, client, PyBytes_GET_SIZE(client))
            out = _put_text(out, method, PyBytes_GET_SIZE(method))
            out = _put_text(out, path, path_length)
            out = _put_digits(out, req.status, 1)
            out[0] = 32
            out = _put_ms(out + 1, seconds, 1)
            out = _put_c(out, b"ms upstream=", 12)
            if upstream >= 0:
                out = _put_c(_put_ms(out, upstream, 1), b"ms", 2)
            else:
                out = _put_c(out, b"-", 1)
            out = _put_c(out, b" bytes=", 7)
            out = _put_digits(out, sent, 1)
            out = _put_c(out, b" route=", 7)
            out = _put_text(out, label, PyBytes_GET_SIZE(label))
            out = _put_c(out, b"id=", 3)
            out = _put_text(out, request_id, PyBytes_GET_SIZE(request_id))
            out = _put_c(out, b"principal=", 10)
            out = _put_text(out, who, PyBytes_GET_SIZE(who))
            out = _put_c(out, b"reason=", 7)
            out = _put_text(out, reason, PyBytes_GET_SIZE(reason))
            (out - 1)[0] = 10  # the last field's separator ends the line
        return line[:out - start]


# ---- access-log fields, written into a line sized for the worst case ---------------------

cdef const char* _HEX = b"0123456789abcdef"


cdef inline bytes _utf8(value):
    # A str field (client address, route, reason, principal) as UTF-8 bytes; anything
    # else a middleware may have put there is logged as its str(), never raised on.
    if type(value) is not str:
        value = str(value)
    return (<str>value).encode("utf-8", "backslashreplace")


cdef inline char* _put_c(char* out, const char* piece, Py_ssize_t n) noexcept:
    memcpy(out, piece, n)
    return out + n


cdef char* _put_digits(char* out, uint64_t value, int width) noexcept:
    # ``value`` in decimal, zero-padded to ``width`` digits.
    cdef char digits[24]
    cdef int n = 0
    while True:
        digits[n] = 48 + value % 10
        value //= 10
        n += 1
        if value == 0 and n >= width:
            break
    while n:
        n -= 1
        out[0] = digits[n]
        out += 1
    return out


cdef char* _put_ms(char* out, double seconds, int decimals) noexcept:
    # ``seconds`` in milliseconds with ``decimals`` decimals (1 or 3), rounded.
    cdef uint64_t scale = 10 if decimals == 1 else 1000
    cdef uint64_t fixed = <uint64_t>(seconds * 1000.0 * scale + 0.5) if seconds > 0 else 0
    out = _put_digits(out, fixed // scale, 1)
    out[0] = 46  # "."
    return _put_digits(out + 1, fixed % scale, decimals)


cdef char* _put_text(char* out, bytes value, Py_ssize_t n) noexcept:
    # One text field and the space after it: printable ASCII but space, '"' and "\\" as
    # is, any other byte as \xHH (a line stays one line of the same fields); "-" if empty.
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    cdef unsigned char c
    if n == 0:
        out[0] = 45  # "-"
        out += 1
    for i in range(n):
        c = s[i]
        if 33 <= c <= 126 and c != 34 and c != 92:
            out[0] = c
            out += 1
        else:
            out[0] = 92
            out[1] = 120  # "x"
            out[2] = _HEX[c >> 4]
            out[3] = _HEX[c & 15]
            out += 4
    out[0] = 32
    return out + 1


cdef char* _put_json(char* out, bytes value, Py_ssize_t n) noexcept:
    # A JSON string of ``value`` read as latin-1 (as HTTP defines header and target
    # bytes), or null if empty. RFC 8259 §7: '"', "\\" and controls escaped.
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    cdef unsigned char c
    if n == 0:
        return _put_c(out, b"null", 4)
    out[0] = 34
    out += 1
    for i in range(n):
        c = s[i]
        if c >= 128:  # U+0080..U+00FF in UTF-8
            out[0] = 0xC0 | (c >> 6)
            out[1] = 0x80 | (c & 0x3F)
            out += 2
        elif c < 32 or c == 127 or c == 34 or c == 92:
            out = _put_c(out, b"\\u00", 4)
            out[0] = _HEX[c >> 4]
            out[1] = _HEX[c & 15]
            out += 2
        else:
            out[0] = c
            out += 1
    out[0] = 34
    return out + 1


# ---- back-pressure (contract: _proxy_flow.pxd) -----------------------------------------
#
# Written once for both sides. aiohttp's base_protocol is the model, with reasons added: a
# client connection stops reading for several reasons at once (its body waits for an upstream
# connection, the upstream's buffer is full, requests are queued, a middleware waits), and
# reading resumes only when the last one is gone.


cdef class FlowControl:
    """Reading paused for reasons; writing paused by asyncio, relayed to the other side.

    When a connection's own write buffer goes over its high-water mark, asyncio calls
    ``pause_writing``: the connection on the other side of the exchange (``counterpart``)
    stops reading, so neither body piles up in the gateway; ``resume_writing`` lets it
    read again. The client and upstream connections both derive from this class.
    """

    cdef int pause(self, int reason) except -1:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason
        return 0

    cdef int resume(self, int reason) except -1:
        if not self.paused & reason:
            return 0
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()
        return 0

    cdef FlowControl counterpart(self):
        return None

    def pause_reading(self, int reason):
        """Stop reading for ``reason`` (a PAUSE_* bit)."""
        self.pause(reason)

    def resume_reading(self, int reason):
        """``reason`` is gone; reading resumes when no other is left."""
        self.resume(reason)

    # -- asyncio.Protocol's flow control ---------------------------------------------
    def pause_writing(self):
        cdef FlowControl other = self.counterpart()
        if other is not None:
            other.pause(PAUSE_PEER_FULL)

    def resume_writing(self):
        cdef FlowControl other = self.counterpart()
        if other is not None:
            other.resume(PAUSE_PEER_FULL)


# ---- the client connection (contract: _proxy_client.pxd) -------------------------------
#
# The request path. fluxgate.proxy.protocol.ClientConnection derives from the base and adds
# llhttp's side: partial, pipelined, chunked, Expect and Upgrade requests, and every
# malformed one, are fed to httptools there and come back here through _start.
#
# Requests are answered strictly in order; a pipelined request waits in `queue` (reading
# pauses meanwhile, so a pipelining client cannot make the queue grow without bound).

cdef bytes _PROTO_HTTP = b"\r\nX-Forwarded-Proto: http\r\n"
cdef bytes _PROTO_HTTPS = b"\r\nX-Forwarded-Proto: https\r\n"


cdef class RouteBase:
    """One route as the request path reads it (fluxgate.proxy.app.CompiledRoute)."""


cdef class ClientConnectionBase(FlowControl):
    """One downstream HTTP/1.1 connection: the compiled request path."""

    def __init__(self, gateway):
        self.gw = gateway
        self.loop = gateway.loop
        self._accounting = gateway.accounting
        self._router = gateway.router
        self._request_ids = gateway.request_ids
        self._resolver = gateway.resolver
        self._api_key_query = gateway.api_key_query
        self.special = gateway.request_special
        self.header_kinds = gateway.header_kinds
        limits = gateway.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_header_count = limits.max_header_count
        self.allow_underscores = limits.allow_underscores_in_headers
        self.max_body_bytes = limits.max_body_bytes
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout
        self.tls = False
        self.transport = None
        self.peer = ""
        self.peer_bytes = b""
        self.parser = None
        self.parsing = None
        self.active = None
        self.queue = deque()
        self.paused = 0
        self.closing = False
        self.closed = False
        self.advancing = False
        self.fatal = None
        self.chunked_body = None
        self.held = None
        self.head_tail = b""
        self.tunnel = None
        self.tunnel_pending = []
        self.upgrading = False
        self.deadline = 0.0
        self.deadline_kind = DEADLINE_NONE
        self.corked = 0
        self.out = []
        self.bytes_written = 0
        self._recorded_bytes = 0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.peer_bytes = self.peer.encode()
        self.gw.connections.add(self)
        self._set_deadline(DEADLINE_HEADERS, self.header_timeout)

    def connection_lost(self, exc):
        cdef RequestState req
        self.closed = True
        self.gw.connections.discard(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            if tunnel.ws is not None:
                tunnel.ws.progress |= CLOSE_CLIENT_GONE
            tunnel.cancel()
            self.tunnel_ended(tunnel)
        for item in (self.active, *self.queue):
            if item is None:
                continue
            req = <RequestState?>item
            if not req.finished:
                if req.exchange is not None:
                    (<Exchange?>req.exchange).cancel()
                if not req.response_done:
                    req.status = CLIENT_CLOSED
                self._record(req)
        self.active = None
        self.queue.clear()

    def data_received(self, data):
        cdef RequestState req
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
            req = parse_request_head_c(
                data, self.header_kinds, self.special, self.max_header_bytes,
                self.max_body_bytes, monotonic(), self.max_header_count,
                self.allow_underscores,
            )
            if req is not None:
                self.deadline_kind = DEADLINE_NONE
                self._start(req)
                return
        self._feed(data)

    cdef FlowControl counterpart(self):
        # The upstream connection of the exchange in flight (or of the tunnel).
        cdef Exchange exchange = self.tunnel
        if exchange is None and self.active is not None:
            exchange = self.active.exchange
        return exchange.conn if exchange is not None else None

    # -- the request path --------------------------------------------------------------------
    cpdef _start(self, RequestState req):
        """Route `req`, run its route's chain, and forward it (or answer it here)."""
        cdef Py_ssize_t index = 0
        cdef tuple steps
        cdef RouteBase route = None
        self.active = req
        req.request_id = self._request_ids.take(req.client_request_id)
        if req.forwarded_for is None:
            req.client_ip = self.peer  # what the resolver answers without X-Forwarded-For
        else:
            req.client_ip, req.peer_trusted = self._resolver.resolve(self.peer, req.forwarded_for)
        try:
            route = self._route(req)
            steps = route.steps
            while index < len(steps):
                refusal = steps[index](req)
                if refusal is not None:
                    raise refusal
                index += 1
            head = self._upstream_head(req, route)
        except ClientError as err:
            self._local_reply(req, err)
            return
        except Suspended as wait:
            # steps[index] raised: the chain goes on after it once answered.
            self._suspend(req, route, index + 1, wait)
            return
        except Exception:
            # A bug in a stage must not leave the client hanging nor let the request through:
            # fail closed with a 500 and the traceback in the log.
            log.exception("request %s: the middleware chain failed", req.request_id.decode())
            self._local_reply(req, InternalError())
            return
        self._forward(req, route, head)

    cdef RouteBase _route(self, RequestState req):
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
        cdef RouteBase route = self._router.match(req.path)
        if route is None:
            raise NoRoute()
        req.route = route
        if route.methods is not None and req.method not in route.methods:
            raise MethodNotAllowed(headers=((b"Allow", route.allow_header),))
        if req.upgrade is not None and not route.websocket:
            raise BadRequest("WebSocket is not enabled on this route")
        return route

    cpdef bytes _upstream_head(self, RequestState req, RouteBase route):
        # The head sent upstream leaves out the route's middleware-owned headers and
        # those the client's Connection header names (hop-by-hop, RFC 9110 §7.6.1).
        drop = route.drop_headers
        if req.connection is not None:
            drop = drop | dropped_by_connection(req.connection)
        cdef bytes head = upstream_head_c(req, drop, route.strip_length, self.peer_bytes,
                                          self._api_key_query)
        if self.tls and not (req.peer_trusted and req.forwarded_for
                             and req.forwarded_proto is not None):
            # upstream_head wrote "http" for a peer that is the client itself: it reached
            # the gateway over TLS. (A trusted proxy in front said how its own client
            # connected.) The line is the gateway's own (the client's X-Forwarded-Proto is
            # never copied, and no header value holds CRLF), so one replace is exact.
            head = head.replace(_PROTO_HTTP, _PROTO_HTTPS, 1)
        return head

    cpdef _forward(self, RequestState req, RouteBase route, bytes head):
        cdef Exchange exchange
        if route.buffer_body and req.has_body and not req.message_complete:
            # buffer_request_body: nothing goes upstream before the whole body has been
            # read (bounded by max_body_bytes) and found well-framed; on_message_complete
            # sends it on.
            self.held = (req, route)
            self._set_deadline(DEADLINE_BODY, self.idle_timeout)
            if req.expect_continue:
                self.write(CONTINUE_100)  # RFC 9110 §10.1.1, as below
            return
        exchange = _new_exchange(self, req, route.group, head)
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

    def _forward_buffered(self, RequestState req, RouteBase route):
        """A held request's whole body is in: it goes upstream with Content-Length."""
        req.chunked = False
        req.content_length = req.body_bytes
        req.has_body = req.body_bytes > 0
        self._forward(req, route, self._upstream_head(req, route))

    # -- endings -----------------------------------------------------------------------------
    cpdef bint can_keep_alive(self, RequestState req):
        """May this connection carry another request after `req`'s response?"""
        return (req.keep_alive and req.upgrade is None and not self.gw.draining
                and not self.closing)

    cdef int exchange_failed(self, RequestState req, err) except -1:
        # The exchange ended before any response byte was sent: answer locally.
        if not self.closed:
            self._local_reply(req, err)
        return 0

    cdef int exchange_done(self, RequestState req) except -1:
        # The upstream's response was fully relayed.
        req.response_done = True
        if req.message_complete:
            self._finish_request(req)
        return 0

    cpdef _finish_request(self, RequestState req):
        if req.finished:
            return
        req.finished = True
        self._record(req)
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

    cpdef _record(self, RequestState req):
        """Count `req`, finished now, in the metrics and the access log."""
        cdef Py_ssize_t sent = self.bytes_written - self._recorded_bytes
        self._recorded_bytes = self.bytes_written
        self._accounting.record(req, sent)

    cpdef _advance(self):
        """Start queued requests, in order, while nothing is in flight."""
        if self.advancing:
            return
        if self.queue:
            self.advancing = True
            try:
                while self.active is None and self.queue and not self.closing:
                    req = self.queue.popleft()
                    if len(self.queue) < 2:
                        self.resume(PAUSE_PIPELINE)
                    self._start(req)
            finally:
                self.advancing = False
        if self.active is None and self.parsing is None and not self.closing:
            gw = self.gw
            self._set_deadline(DEADLINE_IDLE,
                               gw.drain_idle_grace if gw.draining else self.idle_timeout)

    # -- transport helpers ---------------------------------------------------------------------
    cpdef write(self, data):
        """Send bytes to the client; while corked they are gathered into one send."""
        self.bytes_written += len(data)
        if self.corked:
            self.out.append(data)
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    cpdef uncork(self):
        """End one `corked += 1` section: what it wrote leaves in one send (one syscall per
        event-loop callback, not per piece)."""
        self.corked -= 1
        if self.corked == 0 and self.out:
            self._flush()

    cdef int _flush(self) except -1:
        out, self.out = self.out, []
        if self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        return 0

    cpdef abort(self):
        """Cut the connection (a response already started cannot be turned into an error)."""
        self.closing = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    cpdef _close_soon(self):
        """Close once everything written so far has been flushed."""
        self.closing = True
        if self.out:
            self._flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    cpdef _set_deadline(self, int kind, double seconds):
        self.deadline_kind = kind
        self.deadline = monotonic() + seconds


cdef bytes _origin_form(bytes url):
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


# ---- WebSocket frames (contract: _proxy_frames.pxd) ------------------------------------
#
# After a 101 the tunnel carries RFC 6455 frames. Each direction is followed by a
# FrameTracker: the bytes still go through unchanged and unbuffered (the common read lies
# inside one payload and costs one comparison), but the gateway always knows where the
# current frame ends. That lets it refuse broken framing with a Close (1002) instead of
# relaying it, and close a tunnel between two frames: a peer never gets half a message
# followed by the gateway's Close.

# Seconds a closing tunnel waits for a frame in flight to end, then for both Close answers.
TUNNEL_CLOSE_GRACE = 1.0


cdef class FrameTracker:
    """Frame boundaries of one direction of a WebSocket tunnel (RFC 6455 §5.2)."""

    def __cinit__(self, bint from_client):
        self.from_client = from_client
        self.remaining = 0
        self.head_len = 0
        self.head_need = 0
        self.in_message = False
        self.violation = False
        self.stopped = False
        self.close_forwarded = False
        self.close_seen = False
        self.release = None

    def feed_bytes(self, bytes data not None, bint drain=False):
        """feed() for tests: (bytes forwarded now, in order) for one read."""
        cdef Py_ssize_t n = self.feed(data, drain)
        return (self.release or b"") + data[:n]

    cdef bint stop_if_at_boundary(self):
        if self.remaining == 0 and not self.violation:
            self.stopped = True  # a held partial header was never forwarded
        return self.stopped

    cdef Py_ssize_t feed(self, bytes data, bint drain) except -1:
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t i = 0, emit = -1, hstart = -1, take
        cdef int carried = self.head_len
        cdef uint64_t left = self.remaining
        cdef unsigned char b0, b1, length7, opcode
        self.release = None
        if self.violation:
            return 0
        if carried == 0 and left >= <uint64_t>n:
            # The bulk case: the whole read lies inside one payload.
            self.remaining = left - <uint64_t>n
            if self.stopped:
                return 0
            if drain and self.remaining == 0:
                self.stopped = True  # the frame ends with this read: the boundary is here
            return n
        if drain and not self.stopped and left == 0:
            self.stopped = True  # between frames, or a header not forwarded yet
        if self.stopped:
            emit = 0
        while i < n:
            left = self.remaining
            if left:
                take = n - i
                if left >= <uint64_t>take:
                    self.remaining = left - <uint64_t>take
                    i = n
                    continue
                i += <Py_ssize_t>left
                self.remaining = 0
            if self.head_len == 0:
                hstart = i
                if drain and emit < 0:
                    self.stopped = True
                    emit = i
            while self.head_len < 2 and i < n:
                self.head[self.head_len] = p[i]
                self.head_len += 1
                i += 1
            if self.head_len < 2:
                break
            if self.head_need == 0:
                # RFC 6455 §5.2 and §5.5: what the first two bytes must say.
                b0 = self.head[0]
                b1 = self.head[1]
                opcode = b0 & 0x0F
                length7 = b1 & 0x7F
                if (b1 & 0x80 != 0) != self.from_client:
                    break  # a client masks every frame, a server none (§5.1)
                if opcode >= 8:
                    if opcode > 10 or not b0 & 0x80 or length7 > 125:
                        break  # reserved, fragmented or oversize control frame
                elif opcode >= 3 or (opcode == 0) != self.in_message:
                    break  # reserved opcode; a continuation without a message or missing
                self.head_need = (2 + (2 if length7 == 126 else 8 if length7 == 127 else 0)
                                  + (4 if b1 & 0x80 else 0))
            take = self.head_need - self.head_len
            if take > n - i:
                take = n - i
            memcpy(&self.head[self.head_len], p + i, take)
            self.head_len += <int>take
            i += take
            if self.head_len < self.head_need:
                break
            if hstart < 0 and emit < 0:
                # The header began in an earlier read: its held bytes go first.
                self.release = PyBytes_FromStringAndSize(<const char*>self.head, carried)
            if self._header_done():
                break
        else:
            if emit < 0:
                emit = n if self.head_len == 0 else (hstart if hstart >= 0 else 0)
            if drain and not self.stopped and self.remaining == 0 and self.head_len == 0:
                self.stopped = True  # the last frame ended with this read
            return emit
        # Left the loop by `break`: the data ran out inside a header, or a violation.
        if self.head_len >= 2 and self.head_need == 0 or self.violation:
            self.violation = True
            if self.release is not None and hstart < 0:
                self.release = None
            return emit if emit >= 0 else (hstart if hstart >= 0 else 0)
        if emit < 0:
            emit = (n if self.head_len == 0 else (hstart if hstart >= 0 else 0))
        return emit

    cdef int _header_done(self) except -1:
        # A whole header in `head`: the payload length, and what the frame means.
        cdef unsigned char b0 = self.head[0], length7 = self.head[1] & 0x7F
        cdef unsigned char opcode = b0 & 0x0F
        cdef uint64_t length = length7
        cdef int k
        if length7 == 126:
            length = (<uint64_t>self.head[2] << 8) | self.head[3]
        elif length7 == 127:
            if self.head[2] & 0x80:
                self.violation = True  # §5.2: the most significant bit MUST be 0
                return 1
            length = 0
            for k in range(2, 10):
                length = (length << 8) | self.head[k]
        if opcode == 8:
            self.close_seen = True
            if not self.stopped:
                self.close_forwarded = True
        elif opcode < 8:
            self.in_message = not (b0 & 0x80)
        self.remaining = length
        self.head_len = 0
        self.head_need = 0
        return 0


cdef class WsTunnel:
    """The state of one WebSocket tunnel: its two trackers and, once closing, how far the
    closing has come."""

    def __cinit__(self):
        self.from_client = FrameTracker(True)
        self.from_upstream = FrameTracker(False)
        self.close_code = 0
        self.close_payload = b""
        self.progress = 0
        self.timer = None
        self.binding = None


cdef bytes _utf8_prefix(str text, Py_ssize_t limit):
    # The longest prefix of ``text`` whose UTF-8 fits in ``limit`` bytes (a Close reason
    # must be valid UTF-8, RFC 6455 §5.5.1, so a character is never cut).
    cdef bytes raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


cdef bytes _close_frame(bytes payload, bint masked):
    # A Close frame (RFC 6455 §5.5.1); to the upstream masked with a fresh random key
    # (§5.3: unpredictable, so a hostile client cannot choose the bytes on the wire).
    if not masked:
        return b"\x88" + bytes((len(payload),)) + payload
    key = _urandom(4)
    return (b"\x88" + bytes((0x80 | len(payload),)) + key
            + bytes([payload[k] ^ key[k & 3] for k in range(len(payload))]))


# ---- the exchange (contract: _proxy_exchange.pxd) --------------------------------------
#
# One request proxied to one upstream connection, streaming both ways. The exchange is the
# terminal stage of the chain (Envoy's router filter): it takes a pooled connection, sends
# the rewritten head and then the body as the client sends it, and streams the response
# back as it arrives. Neither body is ever buffered whole: when one side's write buffer is
# full, reading from the other side pauses (FlowControl).

cdef bytes _LAST_CHUNK = b"0\r\n\r\n"
cdef bytes _HEAD = b"HEAD"
# {status: b"HTTP/1.1 200 OK\r\n"}, a dict subclass that builds a missing code's line.
cdef object _STATUS_LINES = status_line.__self__


cdef Exchange _new_exchange(ClientConnectionBase client, RequestState req,
                            UpstreamGroupBase group, bytes head):
    # Exchange(...) without the argument parsing of a Python-level constructor call.
    cdef Exchange self = Exchange.__new__(Exchange)
    self.client = client
    self.req = req
    self.group = group
    self.head = head
    self.conn = None
    self.pending = None
    self.pending_bytes = 0
    self.body_done = False
    self.response_started = False
    self.response_frame = FRAME_NONE
    self.client_chunked = False
    self.finished = False
    self.attempts = 0
    self.deadline = float("inf")  # set by start(), before anything can time out
    self.started = monotonic()
    self.ws = None
    return self


cdef class Exchange:
    """Proxies `req` from `client` through `group` (made by the client connection)."""

    def __init__(self):
        raise TypeError("an Exchange is made by its client connection")

    # -- start / body from the client ---------------------------------------------------
    cdef int start(self) except -1:
        # Acquire a connection (possibly at once) and send the head.
        cdef TargetPoolBase pool = self.group.next_pool()
        self.attempts += 1
        conn = pool.take_idle()  # under load, a warm pooled connection: no callback needed
        if conn is not None:
            self.connected(conn)
            return 0
        self.deadline = monotonic() + self.group.connect_timeout + self.group.read_timeout
        pool.acquire(self._on_connection)
        return 0

    def _on_connection(self, conn, exc):
        """The pool's answer to acquire(): a connection, or None and why not."""
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
        self.connected(conn)

    cdef int connected(self, UpstreamConnectionBase conn) except -1:
        self.conn = conn
        conn.begin(self, self.req.method == _HEAD)
        self.touch()
        conn.write(self.head)
        if self.pending:
            conn.write(b"".join(self.pending))
            self.pending = None
            self.pending_bytes = 0
            self.client.resume(PAUSE_CONNECTING)
        if self.body_done and self.req.chunked:
            conn.write(_LAST_CHUNK)
        return 0

    cpdef send_body(self, chunk):
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
            self.client.pause(PAUSE_CONNECTING)

    cpdef end_body(self):
        """The client's request message is complete."""
        self.body_done = True
        if self.req.chunked and self.conn is not None and not self.finished:
            self.conn.write(_LAST_CHUNK)

    cpdef touch(self):
        """Progress was made: push the read deadline out."""
        self.deadline = monotonic() + self.group.read_timeout

    # -- response from the upstream -------------------------------------------------------
    def upstream_headers(self, conn, int status, header_lines, content_length,
                         bint upstream_chunked):
        """The response head arrived (llhttp's path): frame it for the client, send it on."""
        cdef RequestState req = self.req
        cdef bint no_body = req.method == _HEAD or status in (204, 304) or status == 101
        cdef bint keep_alive = self.client.can_keep_alive(req)
        cdef bint chunked = False
        extra = req.response_headers
        length = None
        if status == 101:
            self.response_frame = FRAME_NONE
            extra = [*extra, (b"Connection", b"Upgrade"), (b"Upgrade", req.upgrade or b"websocket")]
        elif no_body:
            self.response_frame = FRAME_NONE
            if status != 204:
                length = content_length
        elif upstream_chunked:
            self.response_frame = FRAME_CHUNKED
        elif content_length is not None:
            self.response_frame = FRAME_LENGTH
            length = content_length
        else:
            self.response_frame = FRAME_CLOSE
        if self.response_frame == FRAME_CHUNKED or self.response_frame == FRAME_CLOSE:
            if req.http_minor >= 1 and keep_alive:
                self.client_chunked = chunked = True
            else:
                keep_alive = False
        self.send_head(status, b"".join(header_lines), extra, length, chunked,
                       not keep_alive and status != 101, None, 0, 0)

    cdef int upstream_response(self, UpstreamConnectionBase conn, ResponseHead head,
                               bytes data) except -1:
        # A whole response arrived in one read (parsed in _core): relay it in one write.
        cdef int status = head.status
        self.send_head(
            status, head.lines, self.req.response_headers,
            None if status == 204 else head.content_length, False,
            not self.client.can_keep_alive(self.req), data, head.body_start, head.body_length,
        )
        self.upstream_complete(conn, head.keep_alive)
        return 0

    cdef int send_head(self, int status, bytes lines, list extra, content_length,
                       bint chunked, bint close, bytes data, Py_ssize_t body_start,
                       Py_ssize_t body_length) except -1:
        # Write the client's response head (and a body already at hand) in one write.
        cdef RequestState req = self.req
        if close:
            req.close_after = True
        self.response_started = True
        req.status = status
        cdef PyObject* found = PyDict_GetItem(_STATUS_LINES, status)
        line = <object>found if found != NULL else status_line(status)
        self.client.write(response_head_c(line, lines, req, extra, content_length, chunked,
                                          close, data, body_start, body_length))
        return 0

    def upstream_body(self, chunk):
        """A piece of the response body (llhttp's path)."""
        if self.client_chunked:
            self.client.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.client.write(chunk)

    cpdef upstream_complete(self, UpstreamConnectionBase conn, bint reusable):
        """The response is complete: the connection goes back to its pool, or closes."""
        if self.client_chunked:
            self.client.write(_LAST_CHUNK)
        self.conn = None
        conn.resume(PAUSE_PEER_FULL)
        if reusable and self.body_done and not self.finished:
            (<TargetPoolBase?>conn.pool).release(conn)
        else:
            # The upstream answered before reading the whole request body (or asked to
            # close): the connection is not at a message boundary, so it cannot be reused.
            conn.close()
        self._finish()

    def upstream_upgraded(self, UpstreamConnectionBase conn, rest):
        """101 Switching Protocols: from now on bytes flow unchanged both ways, frame
        boundaries followed (WsTunnel)."""
        self.conn = conn
        conn.pool.forget(conn)  # a tunnel never returns to the pool
        # A WebSocket is quiet for as long as its application likes: no read timeout (its
        # life is bound to its credential instead, fluxgate/proxy/tunnels.py).
        self.deadline = float("inf")
        self.ws = WsTunnel()
        self.client.start_tunnel(self, rest)

    cpdef tunnel_from_upstream(self, data):
        cdef WsTunnel ws = self.ws
        cdef FrameTracker frames
        cdef Py_ssize_t n
        if ws is None:
            self.client.write(data)
            return
        frames = ws.from_upstream
        n = frames.feed(data, ws.close_code != 0)
        if n == PyBytes_GET_SIZE(data) and frames.release is None and ws.close_code == 0:
            self.client.write(data)
            return
        self._relay_rest(ws, frames, data, n, False)

    cpdef tunnel_from_client(self, data):
        cdef WsTunnel ws = self.ws
        cdef FrameTracker frames
        cdef Py_ssize_t n
        if ws is None:
            if self.conn is not None:
                self.conn.write(data)
            return
        frames = ws.from_client
        n = frames.feed(data, ws.close_code != 0)
        if n == PyBytes_GET_SIZE(data) and frames.release is None and ws.close_code == 0:
            if self.conn is not None:
                self.conn.write(data)
            return
        self._relay_rest(ws, frames, data, n, True)

    cdef int _relay_rest(self, WsTunnel ws, FrameTracker frames, bytes data, Py_ssize_t size,
                         bint to_upstream) except -1:
        # The uncommon read: a header held or released, a stop, a violation or a closing.
        cdef FlowControl target = self.conn if to_upstream else self.client
        if target is not None:
            if frames.release is not None:
                target.write(frames.release)
            if size == PyBytes_GET_SIZE(data):
                target.write(data)
            elif size > 0:
                target.write(memoryview(data)[:size])  # no copy of the payload
        if frames.violation and ws.close_code == 0:
            self.close_tunnel(WS_PROTOCOL_ERROR, "protocol error")
        elif ws.close_code != 0:
            self._close_progress()
        return 0

    # -- closing a tunnel -----------------------------------------------------------------
    def close_tunnel(self, int code, str reason="", double grace=TUNNEL_CLOSE_GRACE):
        """Close a WebSocket tunnel from the gateway with ``code`` (RFC 6455 §7.4) and
        ``reason`` (at most 123 bytes of UTF-8 are sent): in each direction the frame in
        flight ends first, then nothing more passes and the receiving side gets a Close
        frame; the connections close once both sides answered, or ``grace`` seconds
        after. A frame still incomplete after ``grace`` seconds cuts the connection it
        was going to instead. False when there is no open tunnel to close."""
        cdef WsTunnel ws = self.ws
        if ws is None or self.finished or ws.close_code != 0:
            return False
        ws.close_code = code
        ws.close_payload = code.to_bytes(2, "big") + _utf8_prefix(reason, 123)
        ws.from_client.stop_if_at_boundary()
        ws.from_upstream.stop_if_at_boundary()
        ws.timer = self.client.loop.call_later(grace, self._close_grace, grace)
        self._close_progress()
        return True

    cdef int _close_progress(self) except -1:
        # Send each side its Close once the frames to it stopped at a boundary; end the
        # tunnel once both sides answered (or are gone).
        cdef WsTunnel ws = self.ws
        cdef FrameTracker up = ws.from_client, down = ws.from_upstream
        if self.finished:
            return 0
        if not ws.progress & CLOSE_SENT_UPSTREAM and (up.stopped or up.violation):
            ws.progress |= CLOSE_SENT_UPSTREAM
            if not up.close_forwarded and self.conn is not None:  # one Close per side
                self.conn.write(_close_frame(ws.close_payload, True))
        if not ws.progress & CLOSE_SENT_CLIENT and (down.stopped or down.violation):
            ws.progress |= CLOSE_SENT_CLIENT
            if not down.close_forwarded:
                self.client.write(_close_frame(ws.close_payload, False))
        if (ws.progress & (CLOSE_SENT_UPSTREAM | CLOSE_SENT_CLIENT)
                == CLOSE_SENT_UPSTREAM | CLOSE_SENT_CLIENT
                and (up.close_seen or up.violation or ws.progress & CLOSE_CLIENT_GONE)
                and (down.close_seen or down.violation or ws.progress & CLOSE_UPSTREAM_GONE)):
            self._end_tunnel()
        return 0

    def _close_grace(self, double grace):
        """The closing's timer: first a frame still incomplete cuts the connection it
        was going to; a grace later, whatever is left closes."""
        cdef WsTunnel ws = self.ws
        ws.timer = None
        if self.finished:
            return
        if not (ws.from_client.stopped or ws.from_client.violation):
            # The upstream has part of a client frame: it must see the cut, not a Close.
            ws.from_client.stopped = True
            ws.progress |= CLOSE_SENT_UPSTREAM | CLOSE_UPSTREAM_GONE
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.owner = None
                conn.abort()
        if not (ws.from_upstream.stopped or ws.from_upstream.violation):
            ws.from_upstream.stopped = True
            ws.progress |= CLOSE_SENT_CLIENT | CLOSE_CLIENT_GONE
            self.client.abort()
        self._close_progress()
        if not self.finished:
            ws.timer = self.client.loop.call_later(grace, self._close_timeout)

    def _close_timeout(self):
        """A side did not answer the Close in time: close both connections anyway."""
        if self.ws is not None:
            self.ws.timer = None
        self._end_tunnel()

    cdef int _end_tunnel(self) except -1:
        # Close both connections after what was written to them (the Close frames).
        cdef WsTunnel ws = self.ws
        if self.finished:
            return 0
        self.finished = True
        if ws.timer is not None:
            ws.timer.cancel()
            ws.timer = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.owner = None
            conn.close()
        self.client._close_soon()
        return 0

    cpdef upstream_lost(self, UpstreamConnectionBase conn, exc):
        """The upstream connection closed or failed while serving this exchange."""
        cdef RequestState req = self.req
        self.conn = None
        if self.finished:
            return
        if conn.tunnel:
            ws = self.ws
            if ws is not None and ws.close_code != 0:
                ws.progress |= CLOSE_UPSTREAM_GONE
                self._close_progress()
                return
            self.finished = True
            if ws is not None and ws.from_upstream.close_seen and ws.from_upstream.remaining == 0:
                # The upstream ended the WebSocket properly (its Close went through): the
                # client reads everything up to it.
                self.client._close_soon()
                return
            self.client.abort()
            return
        if not self.response_started:
            if (conn.requests_served > 0 and not conn.got_bytes and self.attempts < 2
                    and req.method in IDEMPOTENT and not req.has_body):
                # A pooled connection the upstream closed while idle (RFC 9112 §9.3.1):
                # safe to replay once because nothing was consumed.
                self.start()
                return
            self.finish_with_error(
                UpstreamUnavailable(f"upstream {self.group.name} closed the connection")
            )
            return
        if self.response_frame == FRAME_CLOSE:
            # A close-delimited response ends when the upstream closes (RFC 9112 §6.3).
            if self.client_chunked:
                self.client.write(_LAST_CHUNK)
            self._finish()
            return
        # The response was cut short: the client must see the cut, not a short body.
        self.finished = True
        self.client.abort()

    # -- endings ----------------------------------------------------------------------------
    def check_timeout(self, double now):
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

    cpdef finish_with_error(self, error):
        """End before any response byte was sent: the client gets a local reply."""
        if self.finished:
            return
        self.cancel()
        self.client.exchange_failed(self.req, error)

    cpdef cancel(self):
        """Drop the upstream side (mid-message, so never back to the pool)."""
        if self.finished:
            return
        self.finished = True
        conn, self.conn = self.conn, None
        ws = self.ws
        if ws is not None and ws.timer is not None:
            ws.timer.cancel()
            ws.timer = None
        if conn is not None:
            conn.owner = None
            if ws is not None and ws.progress & CLOSE_SENT_UPSTREAM:
                conn.close()  # at a frame boundary, its Close written: let it go out
            else:
                conn.abort()

    cdef int _finish(self) except -1:
        if self.finished:
            return 0
        self.finished = True
        self.client.exchange_done(self.req)
        return 0


# ---- the upstream side (contract: _proxy_upstream.pxd) ---------------------------------
#
# Its hot half: a pooled connection's response fast path, the round-robin turn and the
# pool's take/release. What happens once per connection or per unusual response stays in
# fluxgate/proxy/upstream.py: llhttp's callbacks (interim, chunked, partial and
# close-delimited responses), connecting, waiters, the idle sweep and TLS failure reports.


cdef class UpstreamConnectionBase(FlowControl):
    """One keep-alive connection to one upstream target; events go to its `owner`."""

    def __init__(self, pool):
        self.pool = pool
        self.transport = None
        self.owner = None
        self.requests_served = 0
        self.got_bytes = False
        self.head_request = False
        self.tunnel = False
        self.closed = False
        self.paused = 0
        self.partial = False
        self.skip_interim = False
        self.idle_since = 0.0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        cdef ResponseHead head
        owner = self.owner
        if self.tunnel:
            if owner is not None:
                (<Exchange?>owner).tunnel_from_upstream(data)
            return
        if owner is None:
            # Bytes on an idle connection are a protocol violation: never hand it out again.
            self.close()
            return
        self.got_bytes = True
        if not self.partial:
            # The common case, a whole response in one read, is parsed and relayed by one
            # _core call; anything else (interim, chunked, partial...) goes through llhttp.
            head = parse_response_head_c(data, self.head_request)
            if head is not None:
                self.owner = None
                self.requests_served += 1
                (<Exchange?>owner).upstream_response(self, head, data)
                return
        self.feed_parser(owner, data)

    cdef FlowControl counterpart(self):
        # The client connection of the exchange this connection serves.
        owner = self.owner
        return (<Exchange>owner).client if isinstance(owner, Exchange) else None

    cpdef begin(self, owner, bint head_request):
        """Attach the connection to one request/response exchange."""
        self.owner = owner
        self.head_request = head_request
        self.got_bytes = False
        self.skip_interim = False

    cpdef write(self, data):
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    cpdef close(self):
        """Close for good (never returns to the pool)."""
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    cpdef abort(self):
        """Drop the connection at once (mid-message: the upstream must see the cut)."""
        if self.transport is not None:
            self.transport.abort()
        self.close()


cdef class UpstreamGroupBase:
    """A named upstream: round-robin over its targets' pools."""

    def __init__(self, str name, double read_timeout, double connect_timeout, list pools):
        if not pools:
            raise ValueError(f"upstream {name} has no target")
        self.name = name
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.pools = pools
        self._turn = 0

    cdef TargetPoolBase next_pool(self):
        cdef TargetPoolBase pool = self.pools[self._turn]
        self._turn += 1
        if self._turn == len(self.pools):
            self._turn = 0
        return pool


cdef class TargetPoolBase:
    """The pool's per-request half: hand out the most recently used idle connection (warm,
    least likely to have been closed by the upstream) and take it back."""

    def __init__(self, loop):
        self.loop = loop
        self.idle = []
        self.waiters = deque()
        self._sweeper = None

    cpdef take_idle(self):
        """The most recently used idle connection, or None."""
        cdef UpstreamConnectionBase conn
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    cpdef release(self, UpstreamConnectionBase conn):
        """Return a healthy connection after a complete exchange."""
        if conn.closed:
            return
        if self.waiters:
            self.waiters.popleft()(conn, None)
            return
        conn.idle_since = monotonic()
        self.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(1.0, self._sweep)
