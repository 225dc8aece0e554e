# One request proxied to one upstream connection (a section of fluxgate/_proxy.pyx).

cpdef enum:
    # How the response's body is delimited upstream (RFC 9112 §6.3).
    FRAME_NONE = 0
    FRAME_LENGTH = 1
    FRAME_CHUNKED = 2
    FRAME_CLOSE = 3
    # Bytes of request body kept while no upstream connection is writable yet.
    PENDING_BODY_LIMIT = 256 * 1024


cdef class Exchange:
    cdef public ClientConnectionBase client
    cdef public RequestState req
    cdef public UpstreamGroupBase group
    cdef public bytes head             # the request head sent upstream
    cdef public UpstreamConnectionBase conn
    cdef public list pending           # body bytes while no connection is writable
    cdef Py_ssize_t pending_bytes
    cdef public bint body_done
    cdef public bint response_started
    cdef public int response_frame
    cdef public bint client_chunked
    cdef public bint finished
    cdef public int attempts
    cdef public double deadline
    cdef public double started         # monotonic() when it was made: upstream time
    cdef public WsTunnel ws            # after a 101: the WebSocket tunnel's state

    cdef int start(self) except -1
    cdef int connected(self, UpstreamConnectionBase conn) except -1
    cpdef send_body(self, chunk)
    cpdef end_body(self)
    cpdef touch(self)
    cdef int upstream_response(self, UpstreamConnectionBase conn, ResponseHead head,
                               bytes data) except -1
    cdef int send_head(self, int status, bytes lines, list extra, content_length,
                       bint chunked, bint close, bytes data, Py_ssize_t body_start,
                       Py_ssize_t body_length) except -1
    cpdef upstream_complete(self, UpstreamConnectionBase conn, bint reusable)
    cpdef tunnel_from_upstream(self, data)
    cpdef tunnel_from_client(self, data)
    cdef int _relay_rest(self, WsTunnel ws, FrameTracker frames, bytes data, Py_ssize_t size,
                         bint to_upstream) except -1
    cdef int _close_progress(self) except -1
    cdef int _end_tunnel(self) except -1
    cpdef upstream_lost(self, UpstreamConnectionBase conn, exc)
    cpdef finish_with_error(self, error)
    cpdef cancel(self)
    cdef int _finish(self) except -1
