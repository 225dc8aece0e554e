# Back-pressure, written once for both sides (included by _proxy.pyx; contract in
# _proxy_flow.pxd). aiohttp's base_protocol is the model, with reasons added: a client
# connection stops reading for several reasons at once (its body waits for an upstream
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
