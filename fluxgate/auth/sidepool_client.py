"""A worker's line to the master's introspection side pool (``master/sidepool.py``).

One connection per worker, opened at the first cache miss and reopened after a failure.
Questions about one token from many connections of the worker share one question
(single-flight inside the worker; the master does the same across workers). Every
question is answered: by the master, or ``unavailable`` when the master does not answer
within the provider's timeout plus ``ANSWER_GRACE`` or the connection breaks — a worker
never waits without bound and never lets a request through unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from fluxgate.auth.introspection import FrameReader, address_path, encode_frame

log = logging.getLogger("fluxgate.oauth2")

ANSWER_GRACE = 1.0  # beyond the authorization server's own timeout
UNAVAILABLE = ("unavailable", b"")


class SidePoolClient(asyncio.Protocol):
    """Asks the master; each answer is ``(outcome, record payload)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state_dir: str) -> None:
        self.loop = loop
        self.state_dir = state_dir
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Future[None] | None = None
        self.reader = FrameReader()
        self.next_id = 1
        self.waiting: dict[int, tuple[asyncio.Future[tuple[str, bytes]], tuple[Any, ...]]] = {}
        self.shared: dict[tuple[Any, ...], asyncio.Future[tuple[str, bytes]]] = {}

    # ---- asking -------------------------------------------------------------------------

    def ask(self, source: str, token: bytes, timeout: float) -> asyncio.Future[tuple[str, bytes]]:
        """A future of the master's answer about ``token`` for provider ``source``."""
        return self._ask((source, token), [source, token], timeout)

    def call(self, op: str, source: str, payload: bytes,
             timeout: float) -> asyncio.Future[tuple[str, bytes]]:
        """A future of the master's answer to a step of the browser login (``op``: begin,
        callback, refresh, logout, backchannel) for login provider ``source``; the same
        question asked again while one is in flight shares its answer."""
        return self._ask((op, source, payload), [op, source, payload], timeout)

    def _ask(self, key: tuple[Any, ...], items: list[Any],
             timeout: float) -> asyncio.Future[tuple[str, bytes]]:
        future = self.shared.get(key)
        if future is not None:
            return future
        future = self.loop.create_future()
        self.shared[key] = future
        request_id = self.next_id
        self.next_id += 1
        self.waiting[request_id] = (future, key)
        timer = self.loop.call_later(timeout + ANSWER_GRACE, self._settle, request_id, UNAVAILABLE)
        future.add_done_callback(lambda _f: timer.cancel())
        frame = encode_frame([request_id, *items])
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)
        else:
            self.loop.create_task(self._connect_and_send(request_id, frame))
        return future

    async def _connect_and_send(self, request_id: int, frame: bytes) -> None:
        try:
            if self.connecting is None:
                self.connecting = self.loop.create_task(self._connect())
            await asyncio.shield(self.connecting)
        except OSError as exc:
            log.error("cannot reach the introspection side pool: %s", exc)
            self._settle(request_id, UNAVAILABLE)
            return
        finally:
            self.connecting = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)
        else:
            self._settle(request_id, UNAVAILABLE)

    async def _connect(self) -> None:
        with open(address_path(self.state_dir)) as f:
            name = f.read().strip()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect(b"\0" + name.encode())
            await self.loop.create_unix_connection(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise

    def _settle(self, request_id: int, answer: tuple[str, bytes]) -> None:
        entry = self.waiting.pop(request_id, None)
        if entry is None:
            return
        future, key = entry
        if self.shared.get(key) is future:
            del self.shared[key]
        if not future.done():
            future.set_result(answer)

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError as exc:
            log.error("side pool answered a broken frame (%s); reconnecting", exc)
            if self.transport is not None:
                self.transport.close()
            return
        for frame in frames:
            self._on_frame(frame)

    def _on_frame(self, frame: list[Any]) -> None:
        if len(frame) != 3 or type(frame[0]) is not int:
            return
        request_id, outcome, payload = frame
        if isinstance(outcome, str) and isinstance(payload, bytes):
            self._settle(request_id, (outcome, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        # Whatever was asked on this connection will not be answered on it.
        for request_id in list(self.waiting):
            self._settle(request_id, UNAVAILABLE)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
