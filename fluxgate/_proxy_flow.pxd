# Back-pressure, written once for both sides of an exchange (fluxgate/_proxy.pyx).

cpdef enum:
    # Why reading from a connection is paused: one bit per reason; reading resumes when
    # no reason is left.
    PAUSE_CONNECTING = 1   # client: its body waits for an upstream connection
    PAUSE_PEER_FULL = 2    # the other side's write buffer is over its high-water mark
    PAUSE_PIPELINE = 4     # client: requests queued behind the one in flight
    PAUSE_AUTH = 8         # client: a middleware waits for an answer (proxy/suspend.py)


cdef class FlowControl:
    cdef public object transport
    cdef public bint closed        # connection_lost, close() or abort() happened
    cdef public int paused         # PAUSE_* reasons reading is paused for

    cdef int pause(self, int reason) except -1
    cdef int resume(self, int reason) except -1
    # The connection on the other side of the exchange in flight, or None.
    cdef FlowControl counterpart(self)
