"""Quotas in cluster mode: leases of each window taken from Redis, spent by the workers.

The ``quota`` and ``api_key`` middlewares call ``ClusterQuotas.admit`` for a request that
spends a unit of a quota. With a lease in hand (units granted to this node for the window,
``lease_table``) the request spends one with compare-exchange in the quota file, as on a
single node, and no Redis call is made. When what is left in hand runs low, the worker asks
for the next chunk in the background (one request in flight per quota and node), so
requests keep going while it is on its way. A request that finds nothing in hand waits,
suspended, for the lease (at most ``cluster.timeout``), and is refused with 429 when Redis
says the window's budget is gone.

Chunks (``lease: auto``): about one second of the quota's rate on this node (four lease
round trips when those take longer), and never more than what is left of the budget divided
by twice the number of nodes that lease it, so chunks shrink near the end of the window;
``lease: N`` takes N at a time; ``lease: 0`` asks Redis for every request (exact, one round
trip each).

Redis unreachable (or slower than ``cluster.timeout``): the units in hand are spent first;
then ``on_store_down: local`` counts on this node against the whole limit, ``deny`` refuses
with 503 ``quota_store_unavailable``. Redis is tried again once a second per node; leasing
then resumes, and the first grant also covers what the node spent beyond its leases while
Redis was away, so those units count in the window's global total.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fluxgate._core import LeaseSpender, merge_ratelimit
from fluxgate.auth.runtime import worker_shared
from fluxgate.cluster.connect import is_redis_url, node_name, parse_store_url, redis_client
from fluxgate.cluster.lease_store import LeaseStore, identity_hash, window_end
from fluxgate.cluster.lease_table import (
    STAT_DENIED,
    STAT_ERRORS,
    STAT_EXACT,
    STAT_LEASES,
    STAT_LOCAL,
    STAT_UNITS,
    STAT_WAITS,
    W_CHUNK,
    W_LAST_MS,
    W_LAST_SPENT,
    W_LATENCY,
    W_NODES,
    LeaseTable,
)
from fluxgate.errors import ClientError, QuotaStoreUnavailable
from fluxgate.proxy.suspend import Suspended

if TYPE_CHECKING:
    from collections.abc import Callable

    from fluxgate._core import QuotaCounters, RequestState

log = logging.getLogger("fluxgate.cluster.quotas")
_now = time.time

EXCEEDED, TABLE_FULL = 1, 2  # the codes of QuotaCounters.consume a refusal carries
RETRY_MS = 1000  # while Redis is down, one node tries it again this often
LEASE_SECONDS = 1.0  # an auto chunk lasts about this long at the measured rate
MAX_CHUNK = 1 << 20
POLL = 0.002  # a worker waiting for another worker's lease request looks this often

@dataclass(slots=True)
class Spend:
    """One request's claim on a quota."""

    tag: int             # its bucket tag in the quota file (and its lease slot's)
    identity: bytes      # what it is, the same on every node (auth/quotas.py)
    limit: int
    window: int
    refuse: Callable[[Any, int, int], ClientError]  # (req, code, retry): the caller's 429
    slot: int | None = None
    deadline: float = 0.0


class ClusterQuotas:
    """A worker's side of leasing: the node's lease table, and a Redis client of its own
    for lease requests (made in the worker, on first use)."""

    def __init__(self, config: Any, state_dir: str, quotas: QuotaCounters) -> None:
        settings = config.cluster
        self.table = LeaseTable.in_state_dir(state_dir)
        self.quotas = quotas
        self.exact = settings.lease == 0
        self.fixed = settings.lease if isinstance(settings.lease, int) else None
        self.local = settings.on_store_down == "local"
        self.timeout = float(settings.timeout)
        # Each socket operation is bounded by the timeout (redis-py's socket timeouts, no
        # retries), and a request never waits longer than the timeout for a lease. A whole
        # call (a new connection's handshake, the script loaded again after a restart, the
        # command) may take several round trips to a distant Redis: it is not cancelled
        # before this much, or a slow link would never get a connection through.
        self.call_bound = max(10 * self.timeout, 5.0)
        self.store_url = parse_store_url(config.store)
        self.settings = settings
        self.node = node_name(config)
        self._store: LeaseStore | None = None
        self._slots: dict[int, int] = {}  # tag -> its lease slot
        self._bases: dict[int, int] = {}  # tag -> the slot's first word
        self._known: dict[int, tuple[Any, ...]] = {}  # tag -> its quota, for asking ahead
        # The node's leases as C spends them (also given to the key table: use_leases).
        self.spender = LeaseSpender(self.table.words, quotas)
        self._spend_in_hand = self.spender.spend
        self._flights: dict[int, asyncio.Future[Any]] = {}

    @classmethod
    def for_gateway(cls, gateway: Any, quotas: QuotaCounters) -> ClusterQuotas | None:
        """The worker's instance in cluster mode, else None."""
        if not is_redis_url(gateway.config.store):
            return None
        def create() -> ClusterQuotas:
            made = cls(gateway.config, gateway.state_dir, quotas)
            gateway.periodic.append(made.on_sweep)
            return made

        return worker_shared(gateway, "cluster_quotas", create)

    def on_sweep(self, now: float) -> None:
        """The worker's sweep (in its loop, soon after it starts): connect to Redis ahead
        of the first lease."""
        if self._store is None:
            asyncio.ensure_future(self._connect())

    # ---- the request's path -------------------------------------------------------------

    def admit(self, req: RequestState, tag: int, identity: bytes, limit: int, window: int,
              refuse: Callable[[Any, int, int], ClientError], now: float) -> ClientError | None:
        """Spend one unit of a quota for ``req``: None (accepted, RateLimit-* set), a
        refusal, or ``Suspended`` raised while a lease is on its way. ``tag``: the quota's
        bucket tag; ``identity``: what it is (auth/quotas.py); ``refuse(req, code, retry)``
        builds the caller's 429 (code EXCEEDED or TABLE_FULL)."""
        base = self._bases.get(tag)
        if base is not None:  # the common request: a unit in hand, one C call
            spent = self._spend_in_hand(req, base, tag, limit, window, now)
            if spent >= 0:
                if spent:
                    self._ahead(Spend(tag, identity, limit, window, refuse, self._slots[tag]),
                                window_end(now, window))
                return None
        return self._admit(req, Spend(tag, identity, limit, window, refuse), now)

    def key_spent_ahead(self) -> None:
        """The key table spent a unit of ``spender.ahead_tag`` and half a chunk or less is
        left of it: ask for the next chunk (a quota this worker leased for before)."""
        tag = self.spender.ahead_tag
        self.spender.ahead_tag = 0
        known = self._known.get(tag)
        slot = self._slots.get(tag)
        if known is not None and slot is not None:
            identity, limit, window, refuse = known
            self._ahead(Spend(tag, identity, limit, window, refuse, slot),
                        window_end(_now(), window))

    def _admit(self, req: RequestState, spend: Spend, now: float) -> ClientError | None:
        if spend.tag not in self._known and len(self._known) < 65536:
            self._known[spend.tag] = (spend.identity, spend.limit, spend.window, spend.refuse)
        if self.exact:
            return self._exact(req, spend, now)
        slot = spend.slot = self._slot(spend)
        if slot is None:
            return self._exact(req, spend, now)
        spend.deadline = now + self.timeout
        answer = self._spend(req, spend, now)
        return self._wait(req, spend, now) if answer is False else answer

    def _slot(self, spend: Spend) -> int | None:
        tag = spend.tag
        try:
            return self._slots[tag]
        except KeyError:
            pass
        slot = self.table.claim(tag, spend.window, spend.limit, identity_hash(spend.identity))
        if slot is None:
            log.warning("lease table full: a quota is counted in Redis request by request")
        elif len(self._slots) < 65536:
            self._slots[tag] = slot
            self._bases[tag] = self.table.base(slot)
        return slot

    def _spend(self, req: RequestState, spend: Spend, now: float) -> ClientError | None | bool:
        """Spend a unit in hand: None (spent), a refusal (the quota file is full), or False
        (nothing in hand)."""
        table, slot = self.table, spend.slot
        end = window_end(now, spend.window)
        granted = table.granted(slot, end)
        if not granted:
            return False
        code, left, _ = self.quotas.consume(spend.tag, granted, spend.window, now)
        if code == TABLE_FULL:
            return spend.refuse(req, TABLE_FULL, 1)
        if code != 0:
            return False
        if left <= table.word(slot, W_CHUNK) // 2:
            self._ahead(spend, end)
        self._headers(req, spend, left, end, now)
        return None

    def _ahead(self, spend: Spend, end: int) -> None:
        """Ask for the next chunk before this one is spent (unless one is on its way)."""
        table, slot = self.table, spend.slot
        now_ms = _ms()
        if table.exhausted(slot, end) or slot in self._flights or table.in_flight(slot, now_ms):
            return
        if table.store_down() and not table.retry_due(now_ms, RETRY_MS):
            return
        self._flight(spend, end)

    def _headers(self, req: RequestState, spend: Spend, left: int, end: int,
                 now: float) -> None:
        # Remaining: what the cluster had not granted at this node's last lease, plus what
        # this node holds unspent; an estimate (other nodes spend meanwhile).
        used = self.table.global_used(spend.slot, end) or 0
        remaining = min(max(spend.limit - used, 0) + left, spend.limit)
        merge_ratelimit(req, spend.limit, remaining, end - int(now))

    def _wait(self, req: RequestState, spend: Spend, now: float) -> ClientError | None:
        table, slot = self.table, spend.slot
        end = window_end(now, spend.window)
        if table.exhausted(slot, end):
            return spend.refuse(req, EXCEEDED, max(end - int(now), 1))
        if table.store_down():
            if table.retry_due(_ms(), RETRY_MS):
                self._flight(spend, end)  # tried in the background; this request decides now
            return self._down(req, spend, now)
        if now >= spend.deadline:
            return self._down(req, spend, now)  # leases came too slowly for this request
        table.count(STAT_WAITS)
        waited = _bounded(self._flight(spend, end), spend.deadline - now)
        raise Suspended(waited, lambda r: self._resumed(r, spend))

    def _resumed(self, req: RequestState, spend: Spend) -> ClientError | None:
        now = _now()
        answer = self._spend(req, spend, now)
        return self._wait(req, spend, now) if answer is False else answer

    def _down(self, req: RequestState, spend: Spend, now: float) -> ClientError | None:
        """Nothing in hand and Redis out of reach: ``on_store_down`` decides."""
        if not self.local:
            self.table.count(STAT_DENIED)
            return QuotaStoreUnavailable(
                "The quota store cannot be reached; try again shortly.",
                headers=((b"Retry-After", b"1"),))
        code, left, end = self.quotas.consume(spend.tag, spend.limit, spend.window, now)
        if code != 0:
            return spend.refuse(req, code, 1 if code == TABLE_FULL else max(end - int(now), 1))
        self.table.count(STAT_LOCAL)
        merge_ratelimit(req, spend.limit, left, end - int(now))
        return None

    # ---- lease requests ------------------------------------------------------------------

    def _flight(self, spend: Spend, end: int) -> asyncio.Future[Any]:
        """The node's one lease request for this quota: this worker's own, or a watch on
        another worker's. Done when the lease is in (or failed)."""
        slot = spend.slot
        future = self._flights.get(slot)
        if future is not None:
            return future
        now_ms = _ms()
        until = now_ms + int(self.timeout * 1000) + 100
        if self.table.take_flight(slot, now_ms, until):
            future = asyncio.ensure_future(self._lease(spend, end))
        else:
            future = asyncio.ensure_future(self._watch(slot, end, until))
        self._flights[slot] = future
        future.add_done_callback(lambda f: self._flights.pop(slot, None))
        return future

    async def _watch(self, slot: int, end: int, until: int) -> None:
        table = self.table
        before = table.granted(slot, end)
        while True:
            await asyncio.sleep(POLL)
            now_ms = _ms()
            if (not table.in_flight(slot, now_ms) or table.granted(slot, end) != before
                    or now_ms >= until):
                return

    async def _lease(self, spend: Spend, end: int) -> None:
        table, slot = self.table, spend.slot
        try:
            want, mine = self._want(spend, end)
            started = _now()
            given, used, nodes = await asyncio.wait_for(
                self._client().grant(table.id_hash(slot), end, want, spend.limit, mine),
                self.call_bound)
        except Exception as exc:  # noqa: BLE001 - every store failure is handled alike
            table.count(STAT_ERRORS)
            self._store_failed(exc)
        else:
            # Never more than asked, whatever the store says (a tampered window's key).
            given = min(max(int(given), 0), want)
            used, nodes = max(int(used), 0), max(int(nodes), 1)
            table.set_word(slot, W_LATENCY, int((_now() - started) * 1000))
            table.set_global(slot, end, used, nodes)
            if given:
                table.add_granted(slot, end, given)
            if given < want:
                table.set_exhausted(slot, end)
            table.count(STAT_LEASES)
            table.count(STAT_UNITS, given)
            self._store_ok()
        finally:
            table.end_flight(slot)

    def _want(self, spend: Spend, end: int) -> tuple[int, int]:
        """(units to ask for, units this node holds of the window so far)."""
        table, slot = self.table, spend.slot
        now = _now()
        now_ms = int(now * 1000)
        granted = table.granted(slot, end)
        spent, _ = self.quotas.peek(spend.tag, spend.window, now)
        deficit = max(spent - granted, 0)  # spent by on_store_down: local, beyond leases
        chunk = self.fixed or self._auto_chunk(spend, end, spent, now_ms)
        table.set_word(slot, W_LAST_MS, now_ms)
        table.set_word(slot, W_LAST_SPENT, spent)
        table.set_word(slot, W_CHUNK, chunk)
        return deficit + chunk, granted

    def _auto_chunk(self, spend: Spend, end: int, spent: int, now_ms: int) -> int:
        table, slot = self.table, spend.slot
        last_ms, last_spent = table.word(slot, W_LAST_MS), table.word(slot, W_LAST_SPENT)
        elapsed = now_ms - last_ms
        if last_ms and 0 < elapsed < 60_000 and spent > last_spent:
            rate = (spent - last_spent) * 1000 / max(elapsed, 20)
            # A second of traffic, or more when a lease takes long: the next one is asked
            # for with half a chunk left, which must outlast its round trip.
            latency = table.word(slot, W_LATENCY) / 1000
            chunk = math.ceil(rate * max(LEASE_SECONDS, 4 * latency))
        else:  # no recent rate: a small first chunk
            chunk = max(spend.limit // 1000, 1)
        used = table.global_used(slot, end) or 0
        nodes = max(table.word(slot, W_NODES), 1)
        share = (spend.limit - used) // (2 * nodes)
        return max(min(chunk, share, MAX_CHUNK), 1)

    async def _connect(self) -> None:
        """Open this worker's connection at its first quota, so that its first lease does
        not pay for the handshake (a few round trips to a distant Redis)."""
        try:
            store = self._client()
            await asyncio.wait_for(store.load(), self.call_bound)
        except Exception:  # noqa: BLE001, S110 - a lease will find out and say so
            pass

    def _client(self) -> LeaseStore:
        if self._store is None:
            client = redis_client(self.store_url, self.settings, asynchronous=True)
            self._store = LeaseStore(client, self.settings.prefix, self.node)
        return self._store

    # ---- lease: 0, or no lease slot: one round trip per request -------------------------

    def _exact(self, req: RequestState, spend: Spend, now: float) -> ClientError | None:
        table = self.table
        if table.store_down() and not table.retry_due(_ms(), RETRY_MS):
            return self._down(req, spend, now)
        table.count(STAT_EXACT)
        end = window_end(now, spend.window)
        call = asyncio.ensure_future(self._exact_call(spend, end))
        raise Suspended(_bounded(call, self.timeout), lambda r: self._exact_done(
            r, spend, end, call.result() if call.done() else None))

    async def _exact_call(self, spend: Spend, end: int) -> tuple[int, int] | None:
        try:
            given, used, _ = await asyncio.wait_for(
                self._client().grant(identity_hash(spend.identity), end, 1, spend.limit, None),
                self.call_bound)
        except Exception as exc:  # noqa: BLE001 - every store failure is handled alike
            self.table.count(STAT_ERRORS)
            self._store_failed(exc)
            return None
        self._store_ok()
        return int(given), int(used)

    def _exact_done(self, req: RequestState, spend: Spend, end: int,
                    answer: tuple[int, int] | None) -> ClientError | None:
        now = _now()
        if answer is None:
            return self._down(req, spend, now)
        given, used = answer
        if not given:
            return spend.refuse(req, EXCEEDED, max(end - int(now), 1))
        merge_ratelimit(req, spend.limit, max(spend.limit - used, 0), end - int(now))
        return None

    # ---- the store's state ---------------------------------------------------------------

    def _store_failed(self, exc: BaseException) -> None:
        self.table.delay_retry(_ms(), RETRY_MS)
        if self.table.mark_store(True):
            log.warning("quota store %s unreachable (%s): unspent leases first, then "
                        "on_store_down: %s", self.store_url.describe(),
                        type(exc).__name__, "local" if self.local else "deny")

    def _store_ok(self) -> None:
        if self.table.store_down() and self.table.mark_store(False):
            log.warning("quota store %s reachable again: leasing resumes",
                        self.store_url.describe())


def _ms() -> int:
    return int(_now() * 1000)


def _bounded(future: asyncio.Future[Any], timeout: float) -> asyncio.Future[Any]:
    """Done when ``future`` is, or after ``timeout`` seconds, whichever comes first (the
    future itself goes on: a lease that comes late is still the node's)."""

    async def wait() -> None:
        await asyncio.wait((future,), timeout=max(timeout, 0.0))

    return asyncio.ensure_future(wait())
