"""``ClusterSessions``: the login's session store in cluster mode (``SessionBackend``).

Redis holds the authoritative record of every session (``cluster/sessions.py``). Each
node's master keeps a copy of the sessions its workers use in the node's SQLite store
(``auth/sessions.py``), which the workers read per request exactly as on one node: no
request waits on Redis on a worker's loop, and a WebSocket's watcher sees an end or a
refresh as a change of the local file.

How the copies stay true:

* writes go to Redis first (create, token update by compare-and-set under the cluster's
  refresh lock, end), then to the local copy, and are announced on the events channel;
* every master listens to the channel: an ``end`` ends its copy at once (its workers
  close the session's WebSockets with 4403 at their next sweep, 250 ms), an ``update``
  (a refresh elsewhere) copies the new record;
* a worker that finds no live local copy (a session made or used on another node) asks
  its master, which copies the record from Redis (``fetch``);
* every ``SYNC_INTERVAL`` seconds the master sweeps: ends made on this node that Redis
  has not learned (a logout while Redis was down, ``fluxctl oauth2 sessions revoke``) are
  pushed; activity seen here moves the records' idle expiry; and every live local copy
  is compared with its record, so that a node that missed events (disconnected,
  partitioned) ends what ended elsewhere within ``SYNC_INTERVAL`` of Redis being
  reachable again. A record Redis no longer has (expired, or lost with a Redis restarted
  empty) ends the copy: those users sign in again.

While Redis cannot be reached, the copies keep serving (``on_store_down: local``), or
(``deny``) stop being served ``STALE_AFTER`` seconds after the last complete sweep (its
time is in the node's file, ``SessionStore.synced_at``): the workers answer 503 until a
sweep succeeds again. Logins, refreshes and token updates need Redis either way.

An end is final everywhere: a copy ended here is never revived by a record, and a record
ended in Redis ends every copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from fluxgate.auth.login_state import Transaction
from fluxgate.auth.session_backend import StoreUnavailable
from fluxgate.auth.session_db import session_digest, well_formed
from fluxgate.auth.sessions import END_REASONS, Session, SessionStore
from fluxgate.cluster.channel import subscribe_forever
from fluxgate.cluster.sessions import RedisSessions

log = logging.getLogger("fluxgate.cluster")

SYNC_INTERVAL = 5.0  # the longest a reachable node's copy lags its records (missed events)
# With on_store_down: deny, copies not compared with Redis for this long are not served.
STALE_AFTER = 3 * SYNC_INTERVAL
SYNC_BATCH = 1000  # records compared per pipelined round trip
MAX_FETCHES = 256  # session records being read for workers at once
UPDATE_ATTEMPTS = 3  # writes of refreshed tokens before giving up (Redis gone meanwhile)
UPDATE_RETRY = 0.5
# End reasons a copy takes from its record, not this node's decisions: never pushed back.
LOCAL_ONLY_REASONS = frozenset({"expired", "undecryptable"})
KNOWN_ENDS_LIMIT = 65536


class ClusterSessions:
    """Sessions in Redis with this node's copy in ``local`` (see the module docstring)."""

    def __init__(self, redis: RedisSessions, local: SessionStore, node: str, *,
                 lock_wait: float = 15.0) -> None:
        self.redis = redis
        self.local = local
        self.node = node
        self.lock_wait = lock_wait
        self.up = True  # whether the last call to Redis succeeded
        self.failures = 0
        self.synced_at = 0.0  # last complete sweep (unix time)
        self.sweeps = 0
        self.events_applied = 0
        # Ends made here while the master was stopped (fluxctl) are pushed too: the marker
        # is kept in the file from the first start on.
        self._end_marker = local.ends_pushed()
        local.mark_synced(local.synced_at(), self._end_marker)
        self._seen_pushed = time.time()
        self._known_ends: set[bytes] = set()  # ended because Redis said so
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._fetching: dict[bytes, asyncio.Future[bool]] = {}
        self.fetches_refused = 0

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._sync_loop())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        try:
            await self.redis.client.aclose()
        except Exception:  # noqa: BLE001 - shutting down
            pass
        self.local.close()

    def _state(self, up: bool, error: BaseException | None = None) -> None:
        """Count failures; log once per change of state, not per call."""
        if not up:
            self.failures += 1
        if up != self.up:
            self.up = up
            if up:
                log.info("sessions: the shared store %s is reachable again",
                         self.redis.describe)
            else:
                log.warning("sessions: the shared store %s cannot be reached (%s); sessions "
                            "are served from this node's copies", self.redis.describe,
                            str(error) or type(error).__name__)

    async def _call(self, awaitable: Any) -> Any:
        try:
            result = await awaitable
        except StoreUnavailable as exc:
            self._state(False, exc)
            raise
        self._state(True)
        return result

    # ---- SessionBackend -----------------------------------------------------------------

    async def create(self, provider: str, sub: str, sid: str | None, tokens: dict[str, Any],
                     claims: dict[str, Any], access_expires_at: float | None, idle: float,
                     absolute: float) -> str:
        session_id, session = await self._call(self.redis.create(
            provider, sub, sid, tokens, claims, access_expires_at, idle, absolute))
        self.local.put_copy(session, int(idle))
        return session_id

    async def load(self, session_id: str, now: float | None = None, *,
                   authoritative: bool = False) -> Session | None:
        """The record's session (copied here); this node's copy when Redis is down, unless
        ``authoritative``."""
        if not well_formed(session_id):
            return None
        digest = session_digest(session_id)
        try:
            record = await self._call(self.redis.record(digest))
        except StoreUnavailable:
            if authoritative:
                raise
            return self.local.load(session_id, now)
        return self._apply(digest, record, now)

    def _apply(self, digest: bytes, record: dict[str, Any] | None,
               now: float | None = None) -> Session | None:
        """Bring this node's copy in line with a record; the live session or None."""
        session = None if record is None else self.redis.open_record(digest, record, now)
        if session is None:
            reason = "expired" if record is None or not record["ended_at"] else (
                record["end_reason"] or "revoked")
            if self.local.end(digest, reason):
                self._known_ends.add(digest)
            return None
        if not self.local.put_copy(session, record["idle_seconds"]):
            return None  # ended here: the sweep tells Redis
        return session

    @asynccontextmanager
    async def refresh_lock(self, digest: bytes, hold: float) -> AsyncIterator[None]:
        async with self.redis.refresh_lock(digest, hold, self.lock_wait):
            self._state(True)
            yield

    async def update_tokens(self, digest: bytes, expected_version: int,
                            tokens: dict[str, Any], access_expires_at: float | None) -> bool:
        # The server has rotated the refresh token already: a write lost to a blip of
        # Redis would leave the record with a used one, so it is tried a few times.
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                version = await self._call(self.redis.update_tokens(
                    digest, expected_version, tokens, access_expires_at))
                break
            except StoreUnavailable:
                if attempt == UPDATE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(UPDATE_RETRY)
        if not version:
            return False
        record = await self._call(self.redis.record(digest))
        self._apply(digest, record)
        await self._announce({"op": "update", "digest": digest.hex()})
        return True

    async def end(self, digest: bytes, reason: str) -> bool:
        """Ends the copy at once (this node's WebSockets close), then the record; when
        Redis cannot be reached the sweep carries the end there later."""
        ended_here = self.local.end(digest, reason)
        try:
            ended = await self._call(self.redis.end(digest, reason))
        except StoreUnavailable:
            return ended_here
        if ended:
            await self._announce({"op": "end", "digest": digest.hex(), "reason": reason})
        return ended or ended_here

    async def end_matching(self, provider: str, *, sub: str | None, sid: str | None,
                           reason: str) -> int:
        ended = 0
        try:
            digests = await self._call(self.redis.matching(provider, sub=sub, sid=sid))
        except StoreUnavailable:
            digests = []
        for digest in digests:
            ended += await self.end(digest, reason)
        # Copies Redis could not name (it was down): ended here, pushed by the sweep.
        ended += self.local.end_matching(provider, sub=sub, sid=sid, reason=reason)
        return ended

    async def fetch(self, session_id: str) -> bool:
        """Copy a session's record here. One read per session however many workers ask at
        once; past ``MAX_FETCHES`` reads in flight (a flood of made-up cookies) the answer
        is StoreUnavailable (503, try again) rather than a queue without end."""
        if not well_formed(session_id):
            return False
        digest = session_digest(session_id)
        pending = self._fetching.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._fetching) >= MAX_FETCHES:
            self.fetches_refused += 1
            raise StoreUnavailable("too many session reads in flight")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._fetching[digest] = future
        try:
            live = await self._fetch(digest)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the joiners re-raise it
            raise
        else:
            future.set_result(live)
        finally:
            del self._fetching[digest]
        return live

    async def _fetch(self, digest: bytes) -> bool:
        try:
            record = await self._call(self.redis.record(digest))
        except StoreUnavailable:
            if self.local.has_copy(digest):
                return False  # ended or expired here: that holds whatever Redis says
            raise
        return self._apply(digest, record) is not None

    async def begin_transaction(self, provider: str, state: str, nonce: str,
                                code_verifier: str, return_to: str, ttl: float) -> str:
        return await self._call(self.redis.begin_transaction(
            provider, state, nonce, code_verifier, return_to, ttl))

    async def take_transaction(self, transaction_id: str) -> Transaction | None:
        return await self._call(self.redis.take_transaction(transaction_id))

    async def remember_jti(self, provider: str, jti: str, expires_at: float) -> bool:
        return await self._call(self.redis.remember_jti(provider, jti, expires_at))

    def maintain(self, *, key_rotation: float, retention: float) -> dict[str, int]:
        # The copies' file ring (this node's own) rotates as on one node; the records'
        # keys are derived (cluster/session_keys.py) and need no upkeep.
        return self.local.maintain(key_rotation=key_rotation, retention=retention)

    # ---- events -------------------------------------------------------------------------

    async def _announce(self, event: dict[str, Any]) -> None:
        try:
            await self._call(self.redis.publish({**event, "node": self.node}))
        except StoreUnavailable:
            pass  # the other nodes' sweeps see the record

    async def _listen(self) -> None:
        """Apply other nodes' events to the copies; a sweep follows each subscription
        (events sent meanwhile were missed)."""
        await subscribe_forever(self.redis.client, self.redis.channel, self._on_event,
                                on_subscribed=self._wake.set,
                                on_error=lambda exc: self._state(False, exc),
                                stale=lambda: not self.up)

    async def _on_event(self, data: Any) -> None:
        try:
            event = orjson.loads(data)
            digest = bytes.fromhex(event["digest"])
            if event.get("node") == self.node or len(digest) != 32:
                return
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            return
        self.events_applied += 1
        if event.get("op") == "end":
            reason = event.get("reason")
            if self.local.end(digest, reason if reason in END_REASONS else "revoked"):
                self._known_ends.add(digest)
        elif event.get("op") == "update" and self.local.load_digest(digest) is not None:
            try:
                self._apply(digest, await self._call(self.redis.record(digest)))
            except StoreUnavailable:
                pass  # the sweep copies it

    # ---- the sweep ----------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(SYNC_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.sync()
            except StoreUnavailable:
                pass  # counted and logged by _call
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.exception("sessions: the sweep failed")

    async def sync(self) -> None:
        """One sweep (see the module docstring)."""
        started = time.time()
        marker, ended = self.local.ended_since(self._end_marker)
        for digest, reason in ended:
            if digest in self._known_ends or reason in LOCAL_ONLY_REASONS:
                continue
            if await self._call(self.redis.end(digest, reason)):
                await self._announce({"op": "end", "digest": digest.hex(), "reason": reason})
        self._end_marker = marker
        if len(self._known_ends) > KNOWN_ENDS_LIMIT:
            self._known_ends.clear()
        await self._call(self.redis.touch(self.local.seen_since(self._seen_pushed - 1)))
        self._seen_pushed = started
        copies = self.local.live_copies(started)
        for first in range(0, len(copies), SYNC_BATCH):
            batch = copies[first:first + SYNC_BATCH]
            metas = await self._call(self.redis.metas([digest for digest, _, _ in batch]))
            for (digest, version, idle_at), meta in zip(batch, metas, strict=True):
                if meta is None or meta["ended_at"] is not None:
                    self._apply(digest, None if meta is None else {
                        "ended_at": meta["ended_at"], "end_reason": meta["end_reason"]})
                elif meta["version"] != version:
                    self._apply(digest, await self._call(self.redis.record(digest)))
                elif (meta["idle_expires_at"] or 0) > idle_at:
                    self.local.extend_idle(digest, int(meta["idle_expires_at"] or 0),
                                           int(meta["last_seen_at"] or 0))
        self.synced_at = started
        self.local.mark_synced(started, self._end_marker)
        self.sweeps += 1

    def status(self) -> dict[str, Any]:
        return {"store": self.redis.describe, "up": self.up, "failures": self.failures,
                "synced_at": self.synced_at, "sweeps": self.sweeps,
                "events_applied": self.events_applied,
                "fetches_refused": self.fetches_refused}

