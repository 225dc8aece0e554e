"""The master's service that keeps the node's API keys in step with the cluster's (Redis).

Active when ``store`` is a Redis URL. At start it brings keys.db in step with Redis
(fluxgate/cluster/keysync.py: by generation, from the log or by reading every record, after
re-seeding a Redis that lost its keys); the node starts from keys.db alone when Redis cannot
be reached. Then it listens on the keys' pub/sub channel and catches up at each announced
generation, and also every POLL_INTERVAL in case a message was lost; a node that was cut off
catches up by generation when Redis answers again. What a catch-up changed in keys.db goes
into the shared key table through the key service (fluxgate/master/keys.py): a revocation
flipped in place (in force in every worker at once), other changes published.

Admin writes (``POST /admin/keys``, ``/rotate``, ``/renew``, ``/revoke``) go to Redis first,
then to keys.db and the table, and are answered once in force on this node; when Redis cannot
be reached they are refused with 503 ``store_unavailable`` and nothing changes anywhere.
Reads of the admin API and every request's authentication use the node's own copy only.

Redis and keys.db are worked on in one thread of this service's own (redis-py's synchronous
client and SQLite, both bounded by ``cluster.timeout``/keys.db's busy timeout), so the master's
loop never waits on them.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fluxgate.auth.keystore import UnknownKey
from fluxgate.cluster.channel import subscribe_forever
from fluxgate.cluster.connect import is_redis_url, parse_store_url, redis_client
from fluxgate.cluster.keyops import ClusterKeyOps
from fluxgate.cluster.keysync import KeyMirror, StoreUnavailable, require_shared_secret
from fluxgate.errors import ClientError, ConfigError, KeyStoreError
from fluxgate.master.admin import AdminRequest, AdminResponse
from fluxgate.master.keys import (
    BadKeyRequest,
    KeyNameNotFound,
    create_operation,
    renew_operation,
    revoke_operation,
    rotate_operation,
)
from fluxgate.metrics import ProcessMetric

if TYPE_CHECKING:
    from fluxgate.config.schema import Config
    from fluxgate.master.admin import AdminRouter
    from fluxgate.master.services import ServiceContext

log = logging.getLogger("fluxgate.cluster.keys")

POLL_INTERVAL = 1.0  # s between generation checks when no message came


class KeyStoreUnavailable(ClientError):
    """Cluster mode: a key change was refused because Redis cannot be reached."""

    status, code = 503, "store_unavailable"


class ClusterKeyService:
    """keys.db and the shared key table of this node, in step with the cluster's keys."""

    name = "cluster_keys"

    def __init__(self, master: ServiceContext) -> None:
        self.master = master
        self.active = is_redis_url(master.config.store)
        self.mirror: KeyMirror | None = None
        self.ops: ClusterKeyOps | None = None
        self.keys: Any = None  # the node's KeyService
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._store_up: bool | None = None
        self.errors = 0  # failed catch-ups and refused writes because of Redis
        self.catch_ups = 0  # catch-ups that found changes

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self, config: Config) -> None:
        if not self.active:
            return
        require_shared_secret(config)  # before anything else: a clear refusal to start
        self.keys = next(s for s in self.master.services
                         if getattr(s, "name", None) == "keys")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cluster-keys")
        self.mirror = await self._call(KeyMirror, config)
        self.ops = ClusterKeyOps(config, mirror=self.mirror)
        await self._sync(at_start=True)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll()), loop.create_task(self._listen(config))]

    async def reload(self, config: Config) -> None:
        if is_redis_url(config.store) != self.active or (
                self.active and config.store != self.master.config.store):
            raise ConfigError("the store cannot change by a reload: restart the gateway",
                              "store")
        if self.active:
            require_shared_secret(config)
            if config.cluster.prefix != self.mirror.config.cluster.prefix:
                raise ConfigError("the prefix cannot change by a reload: restart the gateway",
                                  "cluster.prefix")
            if config.api_keys.signing_secret != self.mirror.config.api_keys.signing_secret:
                raise ConfigError("the signing secret cannot change in cluster mode: every "
                                  "node's keys are signed with it", "api_keys.signing_secret")
            self.mirror.config = self.ops.config = self.mirror.ops.config = config

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            if self.mirror is not None:
                await self._call(self.mirror.close)
            self._executor.shutdown(wait=True)

    def _call(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- catching up --------------------------------------------------------------------------

    async def _sync(self, at_start: bool = False) -> None:
        try:
            changed = await self._call(self.mirror.catch_up)
        except ConfigError as exc:
            if at_start:
                raise
            self._state(False, str(exc))
            return
        except StoreUnavailable as exc:
            self._state(False, str(exc) + ("; starting from this node's keys.db" if at_start
                                           else "; the node keeps its keys, revocations "
                                                "made meanwhile arrive when it is back"))
            return
        except Exception as exc:  # a broken keys.db or a bug must not stop the service
            log.exception("catching up with the cluster's keys")
            self._state(False, f"catching up failed ({type(exc).__name__})")
            return
        self._state(True, "")
        if changed:
            self.catch_ups += 1
        await self._put_in_force()

    async def _put_in_force(self) -> None:
        """Put what keys.db gained in the shared table: revocations in place, then the rest."""
        effects = await self._call(self.mirror.take_effects)
        if effects.revoked:
            await self.keys.enforce_revocations(effects.revoked)
        if set(effects.changed) - set(effects.revoked):
            await self.keys.published()

    def _state(self, up: bool, why: str) -> None:
        """Log a change of the store's state once, not at every attempt."""
        if not up:
            self.errors += 1
        if up != self._store_up:
            if up:
                log.info("cluster keys: %s answers (generation %s)",
                         self.mirror.describe_store(), self.mirror.generation)
            else:
                log.warning("cluster keys: %s", why)
            self._store_up = up

    async def _poll(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            await self._sync()

    async def _listen(self, config: Config) -> None:
        """Wake the poller at each generation announced on the channel, and after each
        subscription (the poller catches up by generation whatever was missed meanwhile)."""
        client = redis_client(parse_store_url(config.store), config.cluster, asynchronous=True)
        try:
            await subscribe_forever(
                client, self.mirror.names.channel, lambda _generation: self._wake.set(),
                on_subscribed=self._wake.set,
                on_error=lambda exc: log.debug("cluster keys: subscription lost (%s)",
                                               type(exc).__name__))
        finally:
            await client.aclose()

    # ---- admin API ----------------------------------------------------------------------------

    def admin_routes(self, router: AdminRouter) -> None:
        """In cluster mode, the key changes of the admin API (registered after the key
        service's, so these replace them) go through Redis."""
        if not self.active:
            return
        router.add("POST", "/admin/keys", self._create)
        router.add("POST", "/admin/keys/rotate", self._rotate)
        router.add("POST", "/admin/keys/renew", self._renew)
        router.add("POST", "/admin/keys/revoke", self._revoke)

    async def _write(self, operation):
        """Run a change in the service's thread (Redis, then keys.db); return its answer once
        it is in force on this node."""
        try:
            result = await self._call(operation, self.ops)
        except UnknownKey as exc:
            raise KeyNameNotFound(str(exc)) from None
        except (StoreUnavailable, ConfigError) as exc:
            self._state(False, str(exc))
            raise KeyStoreUnavailable(str(exc)) from None
        except KeyStoreError as exc:
            raise BadKeyRequest(str(exc)) from None
        await self._put_in_force()
        return result

    async def _create(self, req: AdminRequest) -> AdminResponse:
        result = await self._write(create_operation(req))
        log.info("admin API: key %s created for %s (cluster)", result["key_id"], result["name"])
        return AdminResponse.json(201, result)

    async def _rotate(self, req: AdminRequest) -> AdminResponse:
        result = await self._write(rotate_operation(req))
        log.info("admin API: %s rotated to key %s (cluster)", result["name"], result["key_id"])
        return AdminResponse.json(201, result)

    async def _renew(self, req: AdminRequest) -> AdminResponse:
        result = await self._write(renew_operation(req))
        log.info("admin API: key %s renewed until %s (cluster)", result["key_id"],
                 result["expires_at"])
        return AdminResponse.json(200, result)

    async def _revoke(self, req: AdminRequest) -> AdminResponse:
        result = await self._write(revoke_operation(req))
        log.info("admin API: revoked %s (cluster)", ", ".join(k["key_id"] for k in result))
        return AdminResponse.json(200, {"revoked": result})

    # ---- metrics ------------------------------------------------------------------------------

    def metrics(self) -> list[ProcessMetric]:
        if self.mirror is None:
            return []
        return [
            ProcessMetric("fluxgate_cluster_keys_generation", "gauge",
                          "Generation of the cluster's API keys this node is in step with.",
                          self.mirror.generation),
            ProcessMetric("fluxgate_cluster_keys_store_up", "gauge",
                          "1 when the last exchange with the cluster's store about API keys "
                          "succeeded.", 1 if self._store_up else 0),
            ProcessMetric("fluxgate_cluster_keys_store_errors_total", "counter",
                          "Catch-ups and key changes that failed because the store could not "
                          "be reached.", self.errors),
            ProcessMetric("fluxgate_cluster_keys_refused_records_total", "counter",
                          "Key records from the cluster's store refused as malformed or "
                          "conflicting.", self.mirror.refused),
        ]


def factory(master: ServiceContext) -> ClusterKeyService:
    return ClusterKeyService(master)
