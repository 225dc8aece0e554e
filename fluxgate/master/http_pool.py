"""A keep-alive HTTP/1.1 connection pool to one origin, on the master's event loop: an
``asyncio.Protocol`` per connection feeding llhttp (``fetch.ResponseReader``) directly, so
one request costs a write, the parser's callbacks and one future.

Rules:

* at most ``max_connections`` open (connecting ones included); a caller beyond that waits
  in line for a connection or a free slot, its wait bounded by the caller's own timeout;
* idle connections are reused most recent first and closed after ``idle_timeout``; one the
  server closes while idle leaves the pool as soon as the loop sees the close;
* a reused connection that fails before any byte of the response is retried once on a
  fresh connection (the server closed it while idle, and the request crossed the close:
  RFC 9112 §9.3.1 allows retrying such a request); nothing else is retried;
* a response with ``Connection: close``, from HTTP/1.0, delimited by the close, or followed
  by bytes nobody asked for retires its connection;
* a caller that leaves mid-exchange (timeout, cancellation, error) closes the connection:
  a late response must never be read as the answer to the next request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl

from fluxgate.master.fetch import (
    FetchError,
    Response,
    ResponseReader,
    Target,
    Unreachable,
    connect_error,
    tls_context,
)

log = logging.getLogger("fluxgate.oauth2")


class _Reader(ResponseReader):
    """A ResponseReader that tells whether the connection may carry another request, and
    refuses a second message in the same bytes."""

    keep_alive = False

    def on_message_begin(self) -> None:
        if self.complete:
            raise FetchError("data after the response")

    def on_message_complete(self) -> None:
        # Asked here: llhttp forgets the message's Connection header once it returns.
        parser = self.parser
        self.keep_alive = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        self.complete = True


class _Connection(asyncio.Protocol):
    """One connection: at most one exchange at a time, its state for the pool."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.reader: _Reader | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.exchanges = 0  # requests written on this connection
        self.received = False  # a byte of the current response arrived
        self.reusable = False  # the last response allows another request
        self.lost = False
        self.idle = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter, reader = self.waiter, self.reader
        if waiter is None or waiter.done() or reader is None:
            self.close()  # bytes while idle: the stream is no longer in step
            return
        self.received = True
        try:
            reader.feed(data)
        except FetchError as exc:
            if not reader.complete:
                waiter.set_exception(exc)
                return
            self.close()  # the answer is whole; what follows it is not ours
            waiter.set_result(None)
            return
        if reader.complete:
            self.reusable = reader.keep_alive and not self.lost
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.reusable = True, False
        waiter, reader = self.waiter, self.reader
        if waiter is not None and not waiter.done() and reader is not None:
            try:
                reader.finish_at_eof()  # a close-delimited body ends here
                waiter.set_result(None)
            except FetchError as error:
                waiter.set_exception(error)
        self.pool._lost(self)

    async def exchange(self, request: bytes, max_bytes: int) -> Response:
        """Write ``request``, wait for its whole response."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise Unreachable("connection closed before the request was sent")
        self.reader = _Reader(max_bytes)
        self.received = self.reusable = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.exchanges += 1
        self.transport.write(request)
        try:
            await self.waiter
        finally:
            self.waiter = None
        return self.reader.response()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Keep-alive connections to ``target``; ``request()`` sends one complete request."""

    def __init__(self, target: Target, *, max_connections: int = 8, idle_timeout: float = 30.0,
                 max_response_bytes: int = 64 * 1024, ca_file: str | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.target = target
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_response_bytes = max_response_bytes
        try:
            self._tls = tls_context(ca_file) if target.tls else None
        except (OSError, ssl.SSLError) as exc:  # read once, here: a bad file fails the config
            raise ValueError(f"ca_file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
        self._idle: collections.deque[_Connection] = collections.deque()  # oldest first
        # Callers in line: each is handed a connection, or None (a free slot to connect in).
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._slots = 0  # connections open or being opened
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self.requests = 0
        self.reused = 0
        self.opened = 0
        self.retries = 0

    @property
    def stats(self) -> dict[str, int]:
        """Connections open / idle / in use, and counters since the start."""
        idle = len(self._idle)
        return {"open": self._slots, "idle": idle, "in_use": self._slots - idle,
                "waiting": sum(not w.done() for w in self._waiters),
                "requests": self.requests, "reused": self.reused,
                "connections_opened": self.opened, "retries": self.retries}

    async def request(self, request: bytes) -> Response:
        """Send ``request`` (whole bytes) and return its response; raises FetchError."""
        conn = await self._acquire()
        try:
            reused = conn.exchanges > 0
            try:
                response = await self._exchange(conn, request)
            except FetchError:
                if not reused or conn.received:
                    raise
                # A pooled connection the server had closed: once more on a fresh one, in
                # the same slot.
                log.debug("%s: pooled connection closed by the server, retrying on a new one",
                          self.target.authority)
                conn.close()
                self.retries += 1
                conn = await self._connect()
                response = await self._exchange(conn, request)
        except BaseException:
            conn.close()
            self._free_slot()
            raise
        if conn.reusable:
            self._give(conn)
        else:
            conn.close()
            self._free_slot()
        return response

    async def _exchange(self, conn: _Connection, request: bytes) -> Response:
        self.requests += 1
        if conn.exchanges:
            self.reused += 1
        return await conn.exchange(request, self.max_response_bytes)

    async def close(self) -> None:
        """Close idle connections now, busy ones when their exchange ends; later requests
        fail."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            conn.close()
            self._slots -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unreachable("client closed"))

    # -- slots and connections ---------------------------------------------------------

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise Unreachable("client closed")
        if self._idle:
            conn = self._idle.pop()  # most recent: the older ones may expire
            conn.idle = False
            return conn
        if self._slots < self.max_connections:
            self._slots += 1
            return await self._connect_in_slot()
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed over just as we were cancelled: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    self._give(handed)
            raise
        return conn if conn is not None else await self._connect_in_slot()

    async def _connect_in_slot(self) -> _Connection:
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    async def _connect(self) -> _Connection:
        target = self.target
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), target.host, target.port, ssl=self._tls,
                server_hostname=target.host if self._tls else None,
            )
        except OSError as exc:
            raise connect_error(target.host, target.port, exc) from None
        self.opened += 1
        log.debug("%s: connection %d opened", target.authority, self.opened)
        return conn

    def _give(self, conn: _Connection) -> None:
        """A reusable connection back: to the first caller in line, else to the idle set."""
        if self._closed or conn.lost:
            conn.close()
            self._free_slot()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        loop = asyncio.get_running_loop()
        conn.idle, conn.idle_since = True, loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_at(conn.idle_since + self.idle_timeout, self._expire)

    def _free_slot(self) -> None:
        """A connection closed: its slot goes to the first caller in line, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._slots -= 1

    def _lost(self, conn: _Connection) -> None:
        """The connection closed (either side); an idle one leaves the pool here."""
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
            self._free_slot()

    def _expire(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_timeout
        while self._idle and self._idle[0].idle_since <= deadline:
            conn = self._idle.popleft()
            conn.idle = False
            conn.close()
            self._free_slot()
        if self._idle:
            self._sweep = loop.call_at(self._idle[0].idle_since + self.idle_timeout,
                                       self._expire)
