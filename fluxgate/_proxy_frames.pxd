# WebSocket frame boundaries in a tunnel (a section of fluxgate/_proxy.pyx).

from libc.stdint cimport uint64_t

cpdef enum:
    # RFC 6455 §7.4.1: the close code the gateway sends when a peer breaks the framing.
    WS_PROTOCOL_ERROR = 1002
    # The longest frame header: 2 bytes, a 64-bit length, a masking key (RFC 6455 §5.2).
    WS_MAX_HEADER = 14


cdef class FrameTracker:
    # Follows the frames of one direction of a tunnel without copying them: how many
    # payload bytes of the current frame are still to come, across any split of reads. A
    # header split across reads is held (at most 13 bytes) until it is whole, so what is
    # forwarded always ends inside a payload or at a boundary, never inside a header.
    cdef bint from_client              # frames must be masked (RFC 6455 §5.3), else not
    cdef uint64_t remaining            # payload bytes of the current frame still to pass
    cdef unsigned char head[WS_MAX_HEADER]
    cdef int head_len                  # bytes of a header gathered so far
    cdef int head_need                 # its full size, once its first 2 bytes are known
    cdef bint in_message               # a fragmented data message awaits a continuation
    cdef public bint violation         # the peer broke RFC 6455 framing: nothing more passes
    cdef public bint stopped           # draining reached a frame boundary: nothing more passes
    cdef public bint close_forwarded   # a Close frame went through before the stop
    cdef public bint close_seen        # a Close frame arrived (forwarded or after the stop)
    cdef public bytes release          # held header bytes the last feed released (sent first)

    # Bytes of `data` to forward (a prefix), after `release` when not None. `drain`: stop
    # at the next frame boundary instead of passing it (`stopped`); the frames after a
    # stop are still followed, to see the peer's Close.
    cdef Py_ssize_t feed(self, bytes data, bint drain) except -1
    # At a boundary now (a held partial header has not been forwarded): stop at once.
    cdef bint stop_if_at_boundary(self)
    # A whole header was gathered: 0, or 1 when it breaks the framing.
    cdef int _header_done(self) except -1


cpdef enum:
    # How far the closing of a tunnel has come (WsTunnel.progress bits).
    CLOSE_SENT_UPSTREAM = 1   # the upstream got the gateway's Close (or needs none)
    CLOSE_SENT_CLIENT = 2     # the client got the gateway's Close (or needs none)
    CLOSE_UPSTREAM_GONE = 4   # the upstream connection is closed or aborted
    CLOSE_CLIENT_GONE = 8     # the client connection is closed or aborted


cdef class WsTunnel:
    # A WebSocket tunnel's state, held by its Exchange (None for plain HTTP).
    cdef public FrameTracker from_client
    cdef public FrameTracker from_upstream
    cdef public int close_code         # 0 while open; the code the gateway closes with
    cdef public bytes close_payload    # the Close frames' payload: code and reason
    cdef public int progress           # CLOSE_* bits
    cdef public object timer           # the closing's grace timer, or None
    cdef public object binding         # the credential binding (fluxgate/proxy/tunnels.py)
