# The client connection's request path (included by _proxy.pyx; contract in
# _proxy_client.pxd). fluxgate.proxy.protocol.ClientConnection derives from it and adds
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
            tunnel.cancel()
        for item in (self.active, *self.queue):
            if item is None:
                continue
            req = <RequestState>item
            if not req.finished:
                if req.exchange is not None:
                    (<Exchange>req.exchange).cancel()
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

    cdef int _record(self, RequestState req) except -1:
        self._accounting.record(req)
        return 0

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
