"""Introspection results shared by the nodes of a cluster, in Redis.

The side pool (``master/sidepool.py``) of each node keeps its own shared-memory table as
the fast path. On a miss, before asking the authorization server, it looks here; what it
learns from the server it stores here, active and inactive alike, until the expiry the
node's table uses (never past the token's ``exp``). So one introspection call serves
every node.

Keys are ``<prefix>introspection:<provider id>:<hex SHA-256 of the token>``: never the
token. A value is ``expires_at (8 bytes, big-endian double) | active (1 byte) | record``
(the msgpack record the node's table holds), with the key expiring at ``expires_at``.

A token the gateway learns is revoked (``POST /admin/oauth2/purge``) is deleted here and
announced on ``<prefix>introspection:purge``: every node drops it from its table. A purge
Redis could not take is tried again when it answers, as long as a result may still be
cached somewhere.

Redis is a help, not a dependency: every call is bounded by the cluster timeout, and
after a failure Redis is left alone for ``BACKOFF`` seconds, so a down, slow or
partitioned Redis costs a miss at most one timeout and then nothing; the side pool then
asks the authorization server directly, as on one node.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fluxgate.cluster.channel import subscribe_forever

if TYPE_CHECKING:
    from fluxgate.config.schema import Config

log = logging.getLogger("fluxgate.cluster")

BACKOFF = 5.0  # seconds Redis is not asked after a failure
PURGE_CHANNEL = "introspection:purge"
MAX_PENDING = 4096  # purges kept for a retry while Redis cannot be reached
_HEAD = struct.Struct(">dB")


class SharedResults:
    """Introspection results in Redis (``redis.asyncio`` client)."""

    def __init__(self, client: Any, prefix: str, *, timeout: float, describe: str) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.describe = describe
        self.channel = prefix + PURGE_CHANNEL
        self.up = True
        self.skip_until = 0.0
        self.counts = {"hit": 0, "miss": 0, "stored": 0, "failed": 0, "skipped": 0}
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Purges Redis did not take: digest -> (provider ids, retried until, monotonic).
        self._pending: dict[bytes, tuple[list[str], float]] = {}

    @classmethod
    def for_config(cls, config: Config) -> SharedResults:
        """The shared results on the store of ``config`` (a Redis URL)."""
        from fluxgate.cluster.connect import parse_store_url, redis_client

        store = parse_store_url(config.store)
        # A whole call, redis-py's retries of a timed-out read included.
        return cls(redis_client(store, config.cluster), config.cluster.prefix,
                   timeout=4 * config.cluster.timeout, describe=store.describe())

    def key(self, provider_id: str, digest: bytes) -> str:
        return f"{self.prefix}introspection:{provider_id}:{digest.hex()}"

    # ---- the calls ----------------------------------------------------------------------

    async def get(self, provider_id: str, digest: bytes,
                  now: float | None = None) -> tuple[float, bool, bytes] | None:
        """(expires_at, active, record) another node stored, or None."""
        value = await self._run(self.client.get(self.key(provider_id, digest)))
        now = time.time() if now is None else now
        if not isinstance(value, bytes) or len(value) <= _HEAD.size:
            self.counts["miss"] += value is None
            return None
        expires_at, active = _HEAD.unpack_from(value)
        if expires_at <= now:
            self.counts["miss"] += 1
            return None
        self.counts["hit"] += 1
        return expires_at, bool(active), value[_HEAD.size:]

    def put(self, provider_id: str, digest: bytes, expires_at: float, active: bool,
            record: bytes) -> None:
        """Store a result in the background (the worker's answer does not wait)."""
        if expires_at <= time.time() or not self._usable():
            return
        value = _HEAD.pack(expires_at, 1 if active else 0) + record
        self._spawn(self._put(self.key(provider_id, digest), value, expires_at))

    async def _put(self, key: str, value: bytes, expires_at: float) -> None:
        if await self._run(self.client.set(key, value, pxat=int(expires_at * 1000))):
            self.counts["stored"] += 1

    async def purge(self, provider_ids: list[str], digest: bytes,
                    keep_for: float = 0.0) -> bool:
        """Delete a token's results cluster-wide and tell every node; False when Redis
        could not be reached (the node has purged its own table either way): the purge
        is then tried again when Redis answers, for ``keep_for`` seconds (the longest a
        result of it may still be cached elsewhere)."""
        if not provider_ids:
            return True
        self.skip_until = 0.0  # a revocation is worth a try even right after a failure
        deleted = await self._run(self.client.delete(
            *(self.key(p, digest) for p in provider_ids)))
        done = deleted is not None and await self._run(
            self.client.publish(self.channel, digest.hex())) is not None
        if done:
            self._pending.pop(digest, None)
        elif keep_for > 0 and (digest in self._pending or len(self._pending) < MAX_PENDING):
            self._pending[digest] = (provider_ids, time.monotonic() + keep_for)
        return done

    async def _retry_purges(self) -> None:
        now = time.monotonic()
        for digest, (provider_ids, until) in list(self._pending.items()):
            if until <= now:
                del self._pending[digest]
            elif not await self.purge(provider_ids, digest):
                return  # still unreachable: the next subscription tries again

    # ---- the purge channel --------------------------------------------------------------

    def listen(self, on_purge: Callable[[bytes], object]) -> None:
        """Call ``on_purge(digest)`` for each token another node purges."""
        self._listener = asyncio.get_running_loop().create_task(self._listen(on_purge))

    async def _listen(self, on_purge: Callable[[bytes], object]) -> None:
        def purged(data: bytes) -> None:
            try:
                digest = bytes.fromhex(data.decode())
            except (ValueError, AttributeError):
                return
            if len(digest) == 32:
                on_purge(digest)

        await subscribe_forever(self.client, self.channel, purged,
                                on_subscribed=self._retry_purges,
                                on_error=lambda exc: self._state(False, exc))

    # ---- health -------------------------------------------------------------------------

    def _usable(self) -> bool:
        if time.monotonic() < self.skip_until:
            self.counts["skipped"] += 1
            return False
        return True

    def _state(self, up: bool, error: BaseException | None = None) -> None:
        if not up:
            self.counts["failed"] += 1
            self.skip_until = time.monotonic() + BACKOFF
        if up != self.up:
            self.up = up
            if up:
                log.info("introspection: the shared store %s is reachable again",
                         self.describe)
            else:
                log.warning("introspection: the shared store %s cannot be reached (%s); "
                            "asking the authorization server directly", self.describe,
                            str(error) or type(error).__name__)

    async def _run(self, awaitable: Any) -> Any:
        """One bounded call; None (and a back-off) when Redis fails."""
        if not self._usable():
            awaitable.close()
            return None
        try:
            async with asyncio.timeout(self.timeout):
                result = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the store
            self._state(False, exc)
            return None
        self._state(True)
        return result

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        tasks = [t for t in (self._listener, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - shutting down
            pass
