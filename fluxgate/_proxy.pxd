# cython: language_level=3
# The C-level contract of fluxgate._proxy, the compiled per-request data plane: a table of
# contents, one .pxd per piece (asyncpg's protocol.pxd is the model). Python sees
# fluxgate/_proxy.pyi; the implementation is fluxgate/_proxy.pyx, one section per piece
# in the order below.
#
# The pieces form one cyclic cluster, hence one compilation unit: a client connection
# starts an Exchange per request, the exchange borrows an upstream connection from a
# TargetPool, and both connections call back into the exchange. The asyncio-facing
# classes are thin Python subclasses (fluxgate/proxy/protocol.py, upstream.py) that keep
# what does not pay to compile: llhttp's callbacks (the slow path for partial, pipelined,
# chunked or malformed messages), error replies, suspension, timeouts and pool policy.

from fluxgate._core cimport (
    PrefixTable,
    RequestIds,
    RequestRecorder,
    RequestState,
    ResponseHead,
    parse_request_head_c,
    parse_response_head_c,
    response_head_c,
    upstream_head_c,
)

cdef class Exchange
cdef class RouteBase
cdef class UpstreamConnectionBase
cdef class UpstreamGroupBase

include "_proxy_accounting.pxd"
include "_proxy_flow.pxd"
include "_proxy_client.pxd"
include "_proxy_frames.pxd"
include "_proxy_exchange.pxd"
include "_proxy_upstream.pxd"
