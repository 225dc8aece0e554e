"""The master's browser-login service: every login provider of the config
(``master/login.py``) and the session store they share, chosen by ``store``: the node's
SQLite file (``auth/session_backend.py``), or in cluster mode Redis with this node's copies
(``cluster/session_sync.py``). It also runs the store's periodic upkeep.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fluxgate.auth.introspection import oauth2_configs
from fluxgate.auth.login_flow import login_source
from fluxgate.auth.session_backend import LocalSessions, SessionBackend
from fluxgate.auth.sessions import SessionStore
from fluxgate.cluster.connect import is_redis_url
from fluxgate.master.login import LoginProvider

if TYPE_CHECKING:
    from fluxgate.config import schema

log = logging.getLogger("fluxgate.oauth2")

MAINTENANCE_INTERVAL = 60.0


class LoginService:
    """Every login provider of the config, and the session store they share."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.providers: dict[str, LoginProvider] = {}
        self.store: SessionBackend | None = None
        self.maintenance: asyncio.Task[None] | None = None
        self.key_rotation = 86400.0
        self.retention = 86400.0

    async def configure(self, config: schema.Config) -> None:
        """Start, keep or replace providers after a (re)load."""
        wanted: dict[str, schema.OAuth2] = {}
        for entry in oauth2_configs(config):
            if entry.login:
                wanted.setdefault(login_source(entry), entry)
        if wanted:
            self.key_rotation = min(entry.session.key_rotation for entry in wanted.values())
            self.retention = max(entry.session.absolute for entry in wanted.values())
            if self.store is None:
                self.store = self._open_store(config)
                self.maintenance = asyncio.get_running_loop().create_task(self._maintain())
        for source, entry in wanted.items():
            provider = self.providers.get(source)
            if provider is not None and provider.config == entry:
                continue
            if provider is not None:
                await provider.close()
            assert self.store is not None
            provider = self.providers[source] = LoginProvider(source, entry, self.store)
            provider.start()
        for source in [s for s in self.providers if s not in wanted]:
            await self.providers.pop(source).close()

    def _open_store(self, config: schema.Config) -> SessionBackend:
        """The node's SQLite store, or in cluster mode Redis with the node's copies in it."""
        local = SessionStore.open(self.state_dir)
        if not is_redis_url(config.store):
            return LocalSessions(local)
        from fluxgate.cluster.connect import node_name, parse_store_url, redis_client
        from fluxgate.cluster.session_keys import DerivedKeyRing
        from fluxgate.cluster.session_sync import ClusterSessions
        from fluxgate.cluster.sessions import RedisSessions

        store = parse_store_url(config.store)
        keys = DerivedKeyRing(config.cluster.session_secret or "",
                              rotation=self.key_rotation, retention=self.retention)
        redis = RedisSessions(redis_client(store, config.cluster), config.cluster.prefix, keys,
                              timeout=4 * config.cluster.timeout, describe=store.describe())
        backend = ClusterSessions(redis, local, node_name(config))
        backend.start()
        return backend

    async def _maintain(self) -> None:
        """Rotate the store's key, drop retired keys, purge old rows, now and then."""
        while True:
            if self.store is not None:
                try:
                    done = self.store.maintain(key_rotation=self.key_rotation,
                                               retention=self.retention)
                    if done.get("keys_dropped") or done.get("sessions_orphaned"):
                        log.info("session store maintenance: %s", done)
                except Exception:  # noqa: BLE001 - retried at the next interval
                    log.exception("session store maintenance failed")
            await asyncio.sleep(MAINTENANCE_INTERVAL)

    async def close(self) -> None:
        if self.maintenance is not None:
            self.maintenance.cancel()
        for provider in self.providers.values():
            await provider.close()
        self.providers.clear()
        if self.store is not None:
            await self.store.close()
            self.store = None
