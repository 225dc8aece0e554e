# The upstream side's hot half (included by _proxy.pyx; contract in _proxy_upstream.pxd):
# a pooled connection's response fast path and the pool's take/release. What happens once
# per connection or per unusual response stays in fluxgate/proxy/upstream.py: llhttp's
# callbacks (interim, chunked, partial and close-delimited responses), connecting,
# waiters, the idle sweep and TLS failure reports.


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
