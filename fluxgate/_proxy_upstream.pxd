# Upstream side (a section of fluxgate/_proxy.pyx): one keep-alive connection to a target and
# the hot half of its pool; the asyncio protocol and the pool policy (connecting, waiters,
# idle sweep) are the Python subclasses in fluxgate/proxy/upstream.py.


cdef class UpstreamConnectionBase(FlowControl):
    cdef public object pool            # the TargetPool it belongs to
    cdef public object owner           # the Exchange it serves, None while idle
    cdef public Py_ssize_t requests_served
    cdef public bint got_bytes         # the current exchange has had a byte back
    cdef public bint head_request      # the current request is HEAD: no response body
    cdef public bint tunnel            # after a 101: bytes flow unchanged both ways
    cdef public bint partial           # llhttp is inside a message: it gets the next read
    cdef public bint skip_interim      # llhttp's path: a 1xx head is being skipped
    cdef public double idle_since

    cpdef begin(self, owner, bint head_request)
    cpdef write(self, data)
    cpdef close(self)
    cpdef abort(self)


cdef class UpstreamGroupBase:
    # A named upstream: round-robin over its targets' pools (fluxgate.proxy.upstream's
    # UpstreamGroup builds them).
    cdef public str name
    cdef public double read_timeout
    cdef public double connect_timeout
    cdef public list pools             # TargetPool per target
    cdef Py_ssize_t _turn              # the pool next_pool() hands out

    cdef TargetPoolBase next_pool(self)


cdef class TargetPoolBase:
    cdef public object loop
    cdef public list idle              # idle connections, the most recently used last
    cdef public object waiters         # deque of acquire callbacks
    cdef public object _sweeper        # TimerHandle of the idle sweep, or None

    cpdef take_idle(self)
    cpdef release(self, UpstreamConnectionBase conn)
