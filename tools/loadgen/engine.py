"""The load of one process: its connections, its schedule, its counters.

Two modes share one engine:

* **Closed loop** (``rate is None``): every connection sends its next request as soon as the
  previous response is complete.  Latency counts from the moment a request is written.
* **Open loop** (``rate`` requests/s): request *k* is due at ``t0 + phase + k / rate``, whatever
  the server is doing.  A due request goes to an idle connection; when every connection is busy it
  waits in a FIFO backlog (and a new connection is opened, up to ``connections``).  Its latency
  counts from the time it was *due*, so a slow server cannot hide its tail by slowing the load
  down (coordinated omission).  Timers tick at millisecond granularity, so a request may leave up
  to ``_LOOKAHEAD`` early; its latency then counts from the actual write.

Everything is callbacks on the event loop, no task per request.  After the deadline (or the
request limit) nothing new is sent; requests in flight or waiting still complete or time out.
Every request sent ends as exactly one response or one error of kind connection, timeout or parse
(checked by the tests); a "connect" error counts a failed connection attempt, not a request, and an
unsolicited response on an idle connection counts as a parse error without a request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

from .connection import Connection
from .histogram import Histogram

__all__ = ["ERROR_KINDS", "Engine", "WorkerSpec"]

ERROR_KINDS = ("connect", "connection", "timeout", "parse")
_LOOKAHEAD = 0.001  # s: open-loop requests this close to due are sent on the current tick
_DRAIN_GRACE = 2.0  # s past deadline + timeout after which the run is cut short regardless


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process needs; picklable, so it crosses the spawn boundary as is."""

    index: int  # this process, 0..processes-1
    processes: int  # rotation stride: this process sends rotation indices index, index+P, …
    host: str
    port: int
    payloads: tuple[bytes, ...]
    head_only: bool
    connections: int
    rate: float | None  # this process's share, requests/s; None for closed loop
    phase: float  # s after t0 at which this process's first open-loop request is due
    requests: int | None  # this process's share of the request limit
    duration: float
    timeout: float


class Engine:
    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.payloads = spec.payloads
        self.n_payloads = len(spec.payloads)
        self.rotation = spec.index
        self.remaining = spec.requests
        self.open_loop = spec.rate is not None
        self.interval = 1.0 / spec.rate if spec.rate else 0.0
        # Open loop: the requests due in [t0 + phase, t0 + duration), counted once so that float
        # rounding of k / rate never adds or drops the last one (rate × duration in total).
        self.schedule_len = (
            max(0, math.ceil(round((spec.duration - spec.phase) * spec.rate, 6))) if spec.rate else 0
        )

        self.hist = Histogram()
        self.status: dict[int, int] = {}
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.sent = 0
        self.in_flight = 0
        self.bytes_received = 0
        self.connections_opened = 0

        self.conns: set[Connection] = set()
        self.idle: dict[Connection, None] = {}  # ordered set; popitem() takes the newest
        self.connecting = 0
        self.connect_failures = 0
        self.backlog: deque[float] = deque()  # due times of open-loop requests waiting for a conn

        self.generating = False
        self.t0 = 0.0
        self.deadline = 0.0
        self.end = 0.0
        self.scheduled = 0
        self.next_due = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._finished: asyncio.Future | None = None
        self._opening: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Open the initial connections before the common start time."""
        if self.remaining == 0:
            return
        if self.open_loop:
            # Enough for ~2 ms of work; more are opened on demand (up to ``connections``).
            initial = min(self.spec.connections, max(1, int(self.spec.rate * 0.002) + 1))
        else:
            initial = self.spec.connections
        await asyncio.gather(*(self._open() for _ in range(initial)))

    async def run(self, t0: float) -> dict:
        """Generate load from ``t0`` (time.monotonic()) until the duration or request limit."""
        self._finished = self.loop.create_future()
        self.t0 = t0
        self.deadline = t0 + self.spec.duration
        self.end = t0
        delay = t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.remaining != 0:
            self.generating = True
            if not self.open_loop:  # an open loop stops after its last scheduled request
                self.loop.call_later(max(0.0, self.deadline - time.monotonic()), self._stop)
            sweep = min(0.05, self.spec.timeout / 4)
            self.loop.call_later(sweep, self._sweep, sweep)
            if self.open_loop:
                self.next_due = t0 + self.spec.phase
                self._tick()
            else:
                now = time.monotonic()
                while self.idle and self.generating:
                    self._send_closed(self.idle.popitem()[0], now)
                self._refill()
        self._check_done()
        hard_limit = self.deadline + self.spec.timeout + _DRAIN_GRACE - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(self._finished), max(0.0, hard_limit))
        except TimeoutError:
            self._finish(time.monotonic())
        for task in list(self._opening):
            task.cancel()
        for conn in list(self.conns):
            conn.close()
        await asyncio.sleep(0)
        return self.result()

    def stop(self) -> None:
        """Stop generating now (Ctrl-C in the parent); what is in flight may still complete."""
        if self.generating:
            self._stop()

    def result(self) -> dict:
        return {
            "histogram": self.hist.to_state(),
            "status": dict(self.status),
            "errors": dict(self.errors),
            "sent": self.sent,
            "bytes_received": self.bytes_received,
            "connections_opened": self.connections_opened,
            "start": self.t0,
            "end": self.end,
        }

    def _stop(self) -> None:
        self.generating = False
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        self._check_done()

    def _check_done(self) -> None:
        if not self.generating and self.in_flight == 0 and not self.backlog:
            self._finish(time.monotonic())

    def _finish(self, now: float) -> None:
        if self._finished is None or self._finished.done():
            return
        self.generating = False
        # Whatever is still outstanding when the hard limit strikes has timed out.
        self.errors["timeout"] += self.in_flight + len(self.backlog)
        self.in_flight = 0
        self.backlog.clear()
        self.end = max(self.t0, now)
        self._finished.set_result(None)

    def _sweep(self, interval: float) -> None:
        if self._finished.done():
            return
        now = time.monotonic()
        limit = now - self.spec.timeout
        for conn in [c for c in self.conns if c.busy and c.started < limit]:
            self.errors["timeout"] += 1
            self.in_flight -= 1
            conn.abort()
            self._drop(conn)
        backlog = self.backlog
        while backlog and backlog[0] < limit:
            backlog.popleft()
            self.errors["timeout"] += 1
        self._check_done()
        self.loop.call_later(interval, self._sweep, interval)

    # -- connections --------------------------------------------------------------------------

    def _start_open(self) -> None:
        self.connecting += 1
        task = self.loop.create_task(self._open(counted=True))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open(self, counted: bool = False) -> None:
        if not counted:
            self.connecting += 1
        spec = self.spec
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: Connection(self, spec.head_only), spec.host, spec.port),
                spec.timeout,
            )
        except (OSError, TimeoutError):
            self.connecting -= 1
            self.errors["connect"] += 1
            self.connect_failures += 1
            backoff = min(0.25, 0.005 * 2 ** min(self.connect_failures, 6))
            self.loop.call_later(backoff, self._refill)
            return
        self.connecting -= 1
        self.connect_failures = 0
        self.connections_opened += 1
        self.conns.add(conn)
        self._free(conn, time.monotonic())

    def _refill(self) -> None:
        """Open connections where they are missing: every slot while a closed loop runs; for
        an open loop, as many as there are waiting requests."""
        if self._finished is not None and self._finished.done():
            return
        cap = self.spec.connections
        if self.open_loop:
            want = len(self.backlog)
        else:
            want = cap if self.generating else 0
        while len(self.conns) + self.connecting < min(cap, want + len(self.conns) - len(self.idle)):
            self._start_open()

    def _drop(self, conn: Connection) -> None:
        self.conns.discard(conn)
        self.idle.pop(conn, None)
        self._refill()
        self._check_done()

    def _free(self, conn: Connection, now: float) -> None:
        """``conn`` is open and has nothing in flight: give it the next request, or park it."""
        if self.open_loop:
            if self.backlog:
                self._send_open(conn, self.backlog.popleft(), now)
                return
        elif self.generating:
            self._send_closed(conn, now)
            return
        self.idle[conn] = None
        self._check_done()

    # -- sending ------------------------------------------------------------------------------

    def _next_payload(self) -> bytes:
        payload = self.payloads[self.rotation % self.n_payloads]
        self.rotation += self.spec.processes
        self.sent += 1
        self.in_flight += 1
        return payload

    def _send_closed(self, conn: Connection, now: float) -> None:
        if self.remaining is not None:
            if self.remaining <= 0:
                self.generating = False
                self.idle[conn] = None
                self._check_done()
                return
            self.remaining -= 1
        conn.send(self._next_payload(), now)

    def _send_open(self, conn: Connection, due: float, now: float) -> None:
        conn.send(self._next_payload(), due if due < now else now)

    def _tick(self) -> None:
        self._tick_handle = None
        if not self.generating:
            return
        now = time.monotonic()
        horizon = now + _LOOKAHEAD
        while self.next_due <= horizon:
            due = self.next_due
            if self.scheduled >= self.schedule_len or self.remaining == 0:
                self._stop()
                return
            if self.remaining is not None:
                self.remaining -= 1
            self.scheduled += 1
            self.next_due = self.t0 + self.spec.phase + self.scheduled * self.interval
            if self.idle:
                self._send_open(self.idle.popitem()[0], due, now)
            else:
                self.backlog.append(due)
                if len(self.conns) + self.connecting < self.spec.connections:
                    self._start_open()
        delay = self.next_due - _LOOKAHEAD - time.monotonic()
        self._tick_handle = self.loop.call_later(max(0.0, delay), self._tick)

    # -- reports from connections -------------------------------------------------------------

    def on_response(self, conn: Connection, status: int, keep_alive: bool) -> None:
        now = time.monotonic()
        self.in_flight -= 1
        self.hist.record(int((now - conn.started) * 1_000_000))
        self.status[status] = self.status.get(status, 0) + 1
        if keep_alive and not conn.dead:
            self._free(conn, now)
        else:
            conn.close()
            self._drop(conn)

    def on_failure(self, conn: Connection, kind: str, in_flight: bool) -> None:
        self.errors[kind] += 1
        if in_flight:
            self.in_flight -= 1
        self._drop(conn)

    def on_closed(self, conn: Connection) -> None:
        self._drop(conn)
