"""Upstream side: one HTTP/1.1 client connection protocol and keep-alive pools per target.

A pool is keyed by target (host, port), bounded in size, hands out the most recently used
idle connection first (warm, least likely to have been closed by the upstream), and closes
connections idle longer than `pool_idle_timeout`. An upstream group round-robins over its
targets. Events of the response are delivered to the connection's `owner` (an Exchange).
An https upstream's pools connect through one verifying TLS context per group (built at
worker boot, fluxgate/tls.py); its connections are pooled and reused like plain ones.

What runs on every request is compiled (``fluxgate/_proxy.pyx``): a whole response
in one read is parsed and relayed without a Python frame, and a pool hands out and takes
back its connections in C. The classes here derive from those bases and keep llhttp's path
(interim, chunked, partial and close-delimited responses), connecting, waiters, the idle
sweep and TLS failure reports.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from fluxgate._core import (
    RH_CONNECTION,
    RH_CONTENT_LENGTH,
    RH_FORWARD,
    RH_TRANSFER_ENCODING,
    response_header_kind,
)
from fluxgate._proxy import TargetPoolBase, UpstreamConnectionBase, UpstreamGroupBase
from fluxgate.proxy import headers as hdr
from fluxgate.tls import client_context, describe_error

if TYPE_CHECKING:
    from fluxgate.proxy.exchange import Exchange

log = logging.getLogger("fluxgate.upstream")

# A target whose certificate is refused fails every connect; one log line per target and
# this many seconds says why without flooding the log under load.
TLS_LOG_INTERVAL = 10.0

AcquireCallback = Callable[["UpstreamConnection | None", "BaseException | None"], None]


class _HeadResponseDone(Exception):
    """Raised from on_headers_complete to stop llhttp expecting a body after HEAD.

    httptools gives no way to tell llhttp that a response answers a HEAD request
    (RFC 9110 §9.3.2: no body even with Content-Length); stopping the parse and starting a
    fresh parser for the next response is the documented way out of a callback.
    """


class UpstreamConnection(UpstreamConnectionBase, asyncio.Protocol):
    """One keep-alive connection to one upstream target."""

    # llhttp's state for a response it parses (the base holds the rest).
    __slots__ = ("parser", "lines", "content_length", "chunked", "connection", "keep_alive",
                 "switching")

    def __init__(self, pool: TargetPool) -> None:
        super().__init__(pool)
        self.parser = httptools.HttpResponseParser(self)
        self._reset_head()
        self.keep_alive = False
        self.switching = False

    def feed_parser(self, owner: Exchange, data: bytes) -> None:
        """The general path: llhttp parses `data` and reports each event to `owner`."""
        owner.touch()
        client = owner.client
        client.corked += 1  # the response head and body leave in one send
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            self.tunnel = True
            owner.upstream_upgraded(self, data[offset:])
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadResponseDone):
                self.parser = httptools.HttpResponseParser(self)
                self.on_message_complete()
            else:
                log.warning("upstream %s: callback failed: %r", self.pool.name, exc.__context__)
                self._fail(exc)
        except httptools.HttpParserError as exc:
            log.warning("upstream %s sent a malformed response: %s", self.pool.name, exc)
            self._fail(exc)
        finally:
            client.uncork()

    def connection_lost(self, exc: Exception | None) -> None:
        by_peer = not self.closed  # close() and abort() mark it first
        self.closed = True
        self.pool.forget(self)
        if (by_peer and self.pool.tls is not None and self.owner is not None
                and self.requests_served == 0 and not self.got_bytes):
            # TLS 1.3: a server that refuses our client certificate says so only after the
            # handshake completed on our side (RFC 8446 §4.4.2.4), and uvloop reports the
            # alert as a plain close: say what it most likely was.
            self.pool.log_tls_failure(exc if isinstance(exc, ssl.SSLError) else None)
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.upstream_lost(self, exc)

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self.partial = True  # llhttp is inside a message: the next read must go to it too
        self._reset_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        # One pass: forwardable lines are formatted as they arrive, framing and hop-by-hop
        # headers are set aside (RFC 9110 §7.6.1), so the response head is a join away.
        # The classification is parse_response_head's own table (one list of names).
        kind = response_header_kind(name)
        if kind == RH_FORWARD:
            self.lines.append(name + b": " + value + b"\r\n")
        elif kind == RH_CONTENT_LENGTH:
            self.content_length = value
        elif kind == RH_TRANSFER_ENCODING:
            self.chunked = True
        elif kind == RH_CONNECTION:
            self.connection = value if self.connection is None else self.connection + b"," + value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim responses (100 Continue, 103 Early Hints) are not forwarded: the
            # gateway answered Expect itself, and a client never asked for them.
            self.skip_interim = True
            self._reset_head()
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.switching = status == 101
        owner = self.owner
        if owner is not None:
            lines = self.lines
            if self.connection is not None:
                named = hdr.named_by_connection(self.connection)
                if named:  # rare: headers the upstream declared hop-by-hop by name
                    lines = hdr.drop_lines(lines, named)
            owner.upstream_headers(self, status, lines, self.content_length, self.chunked)
        if self.head_request:
            raise _HeadResponseDone()

    def on_body(self, chunk: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_body(chunk)

    def on_message_complete(self) -> None:
        self.partial = False
        if self.skip_interim:
            self.skip_interim = False
            return
        if self.switching:
            return  # the tunnel starts when llhttp reports the upgrade
        owner = self.owner
        if owner is not None:
            self.owner = None
            self.requests_served += 1
            owner.upstream_complete(self, self.keep_alive)

    def _reset_head(self) -> None:
        self.lines: list[bytes] = []
        self.content_length: bytes | None = None
        self.chunked = False
        self.connection: bytes | None = None

    def _fail(self, exc: BaseException) -> None:
        owner = self.owner
        self.owner = None
        self.abort()
        if owner is not None:
            owner.upstream_lost(self, exc)


class TargetPool(TargetPoolBase):
    """Keep-alive connections to one (host, port), bounded by `max_size`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        *,
        max_size: int,
        connect_timeout: float,
        idle_timeout: float,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        super().__init__(loop)  # idle, waiters, the sweeper
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.tls = tls
        # SNI and the name the certificate must carry (the host, unless tls.server_name).
        self.server_name = (server_name or host) if tls is not None else None
        self._tls_logged_at = float("-inf")
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.open_count = 0
        self._members: set[UpstreamConnection] = set()

    def acquire(self, callback: AcquireCallback) -> None:
        """Give `callback` a connection: idle at once, else a new one, else when one frees."""
        conn = self.take_idle()
        if conn is not None:
            callback(conn, None)
            return
        if self.open_count < self.max_size:
            self.open_count += 1
            self.loop.create_task(self._connect(callback))
            return
        self.waiters.append(callback)
        self.loop.call_later(self.connect_timeout, self._expire_waiter, callback)

    def _expire_waiter(self, callback: AcquireCallback) -> None:
        try:
            self.waiters.remove(callback)
        except ValueError:
            return
        callback(None, TimeoutError(f"no free connection to {self.name}"))

    async def _connect(self, callback: AcquireCallback) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port,
                    ssl=self.tls, server_hostname=self.server_name,
                ),
                self.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, ssl.SSLError):
                self.log_tls_failure(exc)
            self.open_count -= 1
            callback(None, exc)
            self._serve_waiter()
            return
        self._members.add(conn)
        callback(conn, None)

    def log_tls_failure(self, exc: ssl.SSLError | None) -> None:
        """Say why TLS with this target failed (at most once per TLS_LOG_INTERVAL); None:
        the server closed a fresh connection before answering anything."""
        now = self.loop.time()
        if now - self._tls_logged_at < TLS_LOG_INTERVAL:
            return
        self._tls_logged_at = now
        # Never retried without verification: the request gets 502 upstream_unavailable.
        if exc is None:
            log.warning("upstream %s: TLS connection closed by the server before its first "
                        "answer (server name %s): did it refuse the client certificate, or "
                        "want one (upstreams.<name>.tls.cert/key)?", self.name, self.server_name)
        else:
            log.warning("upstream %s: TLS handshake failed (server name %s): %s",
                        self.name, self.server_name, describe_error(exc))

    def _serve_waiter(self) -> None:
        if self.waiters and self.open_count < self.max_size:
            self.acquire(self.waiters.popleft())

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: free its slot."""
        if conn in self._members:
            self._members.discard(conn)
            self.open_count -= 1
            self._serve_waiter()

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self.loop.time() - self.idle_timeout
        keep = []
        for conn in self.idle:
            if conn.closed:
                continue
            if conn.idle_since < deadline:
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep
        if keep:
            self._sweeper = self.loop.call_later(1.0, self._sweep)

    def close(self) -> None:
        """Close every idle connection (worker shutdown)."""
        for conn in self.idle:
            conn.close()
        self.idle = []
        for callback in list(self.waiters):
            callback(None, ConnectionError("gateway is shutting down"))
        self.waiters.clear()


class UpstreamGroup(UpstreamGroupBase):
    """A named upstream: round-robin over target pools (the turn is taken in C)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: Any) -> None:
        tls_settings = spec.tls
        # One context for every target and connection of the group: built here, once.
        tls = client_context(tls_settings) if tls_settings is not None else None
        server_name = tls_settings.server_name if tls_settings is not None else None
        pools = [
            TargetPool(
                loop,
                host,
                port,
                max_size=spec.pool_size,
                connect_timeout=spec.connect_timeout,
                idle_timeout=spec.pool_idle_timeout,
                tls=tls,
                server_name=server_name,
            )
            for host, port in spec.targets
        ]
        super().__init__(spec.name, spec.read_timeout, spec.connect_timeout, pools)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
