# cython: language_level=3
"""FluxGate's per-request data plane, compiled: client connection, exchange, upstream
connection and the hot half of the pool.

Contract for Cython callers: ``_proxy.pxd`` (a table of contents of one ``.pxd`` per
piece); for Python: ``_proxy.pyi``. Unlike ``_core`` ("no I/O"), this module talks to
asyncio transports; like ``_core`` it holds no policy. The asyncio protocols are the
Python subclasses in ``fluxgate/proxy/protocol.py`` and ``fluxgate/proxy/upstream.py``
(asyncpg's ``class Protocol(BaseProtocol, asyncio.Protocol)``), which keep llhttp's
callbacks, error replies, suspension, timeouts and the pool's policy: what happens once
per connection or once per malformed message does not pay to compile.

The common request -- one whole simple request in one read, one whole simple response in
one read -- runs here from ``data_received`` to the reply's single write without a
Python frame: the two head parsers and the head builders are ``_core`` calls, the
middleware chain is the route's tuple of bound methods (Python, as it must be).
"""

from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

import logging
from collections import deque

from fluxgate._core import PathError, normalize_path
from fluxgate.errors import (
    BadRequest,
    ClientError,
    InternalError,
    MethodNotAllowed,
    NoRoute,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fluxgate.proxy.headers import dropped_by_connection
from fluxgate.proxy.responses import CONTINUE_100, status_line
from fluxgate.proxy.suspend import Suspended

log = logging.getLogger("fluxgate.proxy")

# RFC 9110 §9.2.2: a request may be retried on a fresh connection only if idempotent.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


include "_proxy_accounting.pxi"
include "_proxy_flow.pxi"
include "_proxy_client.pxi"
include "_proxy_exchange.pxi"
include "_proxy_upstream.pxi"
