"""What Python sees of fluxgate._proxy, the compiled data plane (rules in its docstring).

The asyncio protocols are the Python subclasses in fluxgate/proxy/protocol.py and
fluxgate/proxy/upstream.py; the C-level contract is fluxgate/_proxy.pxd.
"""

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from fluxgate._core import RequestState

PAUSE_CONNECTING: int
PAUSE_PEER_FULL: int
PAUSE_PIPELINE: int
PAUSE_AUTH: int
DEADLINE_NONE: int
DEADLINE_HEADERS: int
DEADLINE_IDLE: int
DEADLINE_BODY: int
CLIENT_CLOSED: int
MAX_CHUNK_LINE: int
FRAME_NONE: int
FRAME_LENGTH: int
FRAME_CHUNKED: int
FRAME_CLOSE: int
PENDING_BODY_LIMIT: int
WS_PROTOCOL_ERROR: int
WS_MAX_HEADER: int
CLOSE_SENT_UPSTREAM: int
CLOSE_SENT_CLIENT: int
CLOSE_UPSTREAM_GONE: int
CLOSE_CLIENT_GONE: int
TUNNEL_CLOSE_GRACE: float
IDEMPOTENT: frozenset[bytes]

def now() -> float:
    """CLOCK_MONOTONIC in seconds (time.perf_counter's and the event loop's clock)."""

class Accounting:
    """Counts a finished request in the shared metrics and the access log."""
    def __init__(self, recorder: Any, access_log: Any) -> None: ...
    def record(self, req: RequestState, sent: int = 0) -> None: ...

class FlowControl:
    transport: Any
    closed: bool
    paused: int  # PAUSE_* reasons reading is paused for
    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...

class RouteBase:
    steps: tuple[Callable[[RequestState], Any], ...]
    group: UpstreamGroupBase
    methods: frozenset[bytes] | None
    allow_header: bytes
    drop_headers: frozenset[bytes]
    strip_length: int
    slot: int
    websocket: bool
    buffer_body: bool

class ClientConnectionBase(FlowControl):
    gw: Any
    loop: asyncio.AbstractEventLoop
    special: dict[bytes, int]
    header_kinds: dict[bytes, int]
    max_header_bytes: int
    max_header_count: int
    max_body_bytes: int
    allow_underscores: bool
    header_timeout: float
    idle_timeout: float
    tls: bool
    peer: str
    peer_bytes: bytes
    parser: Any
    parsing: RequestState | None
    active: RequestState | None
    queue: deque[RequestState]
    closing: bool
    advancing: bool
    fatal: Any
    chunked_body: Any
    held: tuple[RequestState, Any] | None
    head_tail: bytes
    tunnel: Exchange | None
    tunnel_pending: list[bytes]
    upgrading: bool
    deadline: float
    deadline_kind: int
    corked: int
    out: list[bytes]
    bytes_written: int
    def __init__(self, gateway: Any) -> None: ...
    def connection_made(self, transport: Any) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def _start(self, req: RequestState) -> None: ...
    def _upstream_head(self, req: RequestState, route: RouteBase) -> bytes: ...
    def _forward(self, req: RequestState, route: RouteBase, head: bytes) -> None: ...
    def _forward_buffered(self, req: RequestState, route: RouteBase) -> None: ...
    def can_keep_alive(self, req: RequestState) -> bool: ...
    def _finish_request(self, req: RequestState) -> None: ...
    def _record(self, req: RequestState) -> None: ...
    def _advance(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def uncork(self) -> None: ...
    def abort(self) -> None: ...
    def _close_soon(self) -> None: ...
    def _set_deadline(self, kind: int, seconds: float) -> None: ...

class FrameTracker:
    """Frame boundaries of one direction of a WebSocket tunnel (RFC 6455 §5.2)."""

    violation: bool
    stopped: bool
    close_forwarded: bool
    close_seen: bool
    release: bytes | None
    def __init__(self, from_client: bool) -> None: ...
    def feed_bytes(self, data: bytes, drain: bool = False) -> bytes:
        """What one read lets through now, in order (for tests)."""

class WsTunnel:
    """A WebSocket tunnel's state: its two trackers and how far its closing has come."""

    from_client: FrameTracker
    from_upstream: FrameTracker
    close_code: int
    close_payload: bytes
    progress: int
    timer: asyncio.TimerHandle | None
    binding: Any

class Exchange:
    client: ClientConnectionBase
    req: RequestState
    group: UpstreamGroupBase
    head: bytes
    conn: UpstreamConnectionBase | None
    pending: list[bytes] | None
    body_done: bool
    response_started: bool
    response_frame: int
    client_chunked: bool
    finished: bool
    attempts: int
    deadline: float
    ws: WsTunnel | None
    def send_body(self, chunk: bytes) -> None: ...
    def end_body(self) -> None: ...
    def touch(self) -> None: ...
    def upstream_headers(self, conn: UpstreamConnectionBase, status: int,
                         header_lines: list[bytes], content_length: bytes | None,
                         upstream_chunked: bool) -> None: ...
    def upstream_body(self, chunk: bytes) -> None: ...
    def upstream_complete(self, conn: UpstreamConnectionBase, reusable: bool) -> None: ...
    def upstream_upgraded(self, conn: UpstreamConnectionBase, rest: bytes) -> None: ...
    def tunnel_from_upstream(self, data: bytes) -> None: ...
    def tunnel_from_client(self, data: bytes) -> None: ...
    def close_tunnel(self, code: int, reason: str = "", grace: float = 1.0) -> bool:
        """Close the WebSocket tunnel with a Close frame to both sides, between frames."""
    def upstream_lost(self, conn: UpstreamConnectionBase, exc: BaseException | None) -> None: ...
    def check_timeout(self, now: float) -> None: ...
    def finish_with_error(self, error: Exception) -> None: ...
    def cancel(self) -> None: ...

class UpstreamConnectionBase(FlowControl):
    pool: Any
    owner: Any
    requests_served: int
    got_bytes: bool
    head_request: bool
    tunnel: bool
    partial: bool
    skip_interim: bool
    idle_since: float
    def __init__(self, pool: Any) -> None: ...
    def connection_made(self, transport: Any) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def begin(self, owner: Any, head_request: bool) -> None: ...
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...

class UpstreamGroupBase:
    name: str
    read_timeout: float
    connect_timeout: float
    pools: list[TargetPoolBase]
    def __init__(self, name: str, read_timeout: float, connect_timeout: float,
                 pools: list[TargetPoolBase]) -> None: ...

class TargetPoolBase:
    loop: asyncio.AbstractEventLoop
    idle: list[UpstreamConnectionBase]
    waiters: deque[Callable[[Any, BaseException | None], None]]
    _sweeper: asyncio.TimerHandle | None
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def take_idle(self) -> UpstreamConnectionBase | None: ...
    def release(self, conn: UpstreamConnectionBase) -> None: ...
