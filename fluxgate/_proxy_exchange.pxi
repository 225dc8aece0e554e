# One request proxied to one upstream connection, streaming both ways (included by
# _proxy.pyx; contract in _proxy_exchange.pxd).
#
# The exchange is the terminal stage of the chain (Envoy's router filter): it takes a
# pooled connection, sends the rewritten head and then the body as the client sends it,
# and streams the response back as it arrives. Neither body is ever buffered whole: when
# one side's write buffer is full, reading from the other side pauses (FlowControl).

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
        """101 Switching Protocols: from now on bytes flow unchanged both ways."""
        self.conn = conn
        conn.pool.forget(conn)  # a tunnel never returns to the pool
        self.client.start_tunnel(self, rest)

    cpdef tunnel_from_upstream(self, data):
        self.client.write(data)

    cpdef tunnel_from_client(self, data):
        if self.conn is not None:
            self.conn.write(data)

    cpdef upstream_lost(self, UpstreamConnectionBase conn, exc):
        """The upstream connection closed or failed while serving this exchange."""
        cdef RequestState req = self.req
        self.conn = None
        if self.finished:
            return
        if conn.tunnel:
            self.finished = True
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
        if conn is not None:
            conn.owner = None
            conn.abort()

    cdef int _finish(self) except -1:
        if self.finished:
            return 0
        self.finished = True
        self.client.exchange_done(self.req)
        return 0
