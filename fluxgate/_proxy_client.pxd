# One downstream HTTP/1.1 connection (a section of fluxgate/_proxy.pyx); the protocol is
# fluxgate.proxy.protocol.ClientConnection, its Python subclass.

cpdef enum:
    # What the connection's one deadline is for (the worker's sweep checks it).
    DEADLINE_NONE = 0
    DEADLINE_HEADERS = 1   # the head must arrive (slowloris)
    DEADLINE_IDLE = 2      # keep-alive: the next request must begin
    DEADLINE_BODY = 3      # a held request (buffer_request_body) whose body stopped
    # Status recorded when the client disconnects before its response was sent (nginx).
    CLIENT_CLOSED = 499
    # Bytes a chunk-size line may hold, extensions included (RFC 9112 §7.1.1: a server
    # ought to limit them); a longer one is a 400.
    MAX_CHUNK_LINE = 4096


cdef class RouteBase:
    # What the request path reads of a route; fluxgate.proxy.app.CompiledRoute, its Python
    # subclass, fills it once per worker.
    cdef public tuple steps            # the middleware chain's bound __call__s
    cdef public UpstreamGroupBase group
    cdef public object methods         # frozenset[bytes] the route accepts, or None: any
    cdef public bytes allow_header     # the 405's Allow value
    cdef public frozenset drop_headers  # lower-case names the upstream never sees
    cdef public Py_ssize_t strip_length  # bytes of the path not sent upstream, or -1
    cdef public Py_ssize_t slot        # the route's block in the metrics table
    cdef public bint websocket
    cdef public bint buffer_body       # buffer_request_body


cdef class ClientConnectionBase(FlowControl):
    # The worker's Gateway and what the request path reads of it, bound once.
    cdef public object gw
    cdef public object loop
    cdef Accounting _accounting        # gw.accounting
    cdef PrefixTable _router           # gw.router
    cdef RequestIds _request_ids       # gw.request_ids
    cdef object _resolver              # gw.resolver (ClientAddressResolver)
    cdef bytes _api_key_query
    cdef public dict special           # header name (lower case) -> kind
    cdef public dict header_kinds      # header name as sent -> kind
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_header_count
    cdef public Py_ssize_t max_body_bytes
    cdef public bint allow_underscores
    cdef public double header_timeout
    cdef public double idle_timeout
    cdef public bint tls               # X-Forwarded-Proto: https (TlsClientConnection)

    cdef public object peer            # the client's address (str)
    cdef public bytes peer_bytes

    # Requests: the one being parsed by llhttp, the one in flight, those queued behind it.
    cdef public object parser          # httptools.HttpRequestParser
    cdef public RequestState parsing
    cdef public RequestState active
    cdef public object queue           # deque[RequestState]
    cdef public bint closing
    cdef public bint advancing
    cdef public object fatal           # ClientError answered after the in-flight response
    cdef public object chunked_body    # ChunkedBody of the body being read, or None
    cdef public object held            # (req, route) while buffer_request_body reads
    cdef public bytes head_tail        # the last bytes fed of a head not yet complete
    cdef public Exchange tunnel        # after a 101: the exchange carrying the tunnel
    cdef public list tunnel_pending
    cdef public bint upgrading
    cdef public double deadline
    cdef public int deadline_kind
    cdef public int corked             # > 0: writes are gathered into `out`
    # Bytes written to the client, and that count when the last request was recorded:
    # the access log's bytes sent of a request is the difference (responses go in order).
    cdef public Py_ssize_t bytes_written
    cdef Py_ssize_t _recorded_bytes
    cdef public list out

    cpdef _start(self, RequestState req)
    cdef RouteBase _route(self, RequestState req)
    cpdef bytes _upstream_head(self, RequestState req, RouteBase route)
    cpdef _forward(self, RequestState req, RouteBase route, bytes head)
    cpdef bint can_keep_alive(self, RequestState req)
    cdef int exchange_failed(self, RequestState req, err) except -1
    cdef int exchange_done(self, RequestState req) except -1
    cpdef _finish_request(self, RequestState req)
    cpdef _record(self, RequestState req)
    cpdef _advance(self)
    cpdef write(self, data)
    cpdef uncork(self)
    cdef int _flush(self) except -1
    cpdef abort(self)
    cpdef _close_soon(self)
    cpdef _set_deadline(self, int kind, double seconds)
