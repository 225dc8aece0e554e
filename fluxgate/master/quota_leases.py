"""The master service of quota leasing in cluster mode (``cluster/quotas.py``).

It creates ``state_dir/leases.bin`` before the workers fork (kept across restarts, as the
quota file is), renders the node's lease counters on /metrics, and at shutdown gives the
units this node was granted but did not spend back to Redis (best effort, each call bounded
by ``cluster.timeout``), so other nodes may still spend them in the window. Workers make the
lease requests themselves; the master makes none while serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from fluxgate.auth.quotas import QUOTA_FILE, open_quota_file
from fluxgate.cluster.connect import is_redis_url, node_name, parse_store_url, redis_client
from fluxgate.cluster.lease_store import LeaseStore, window_end
from fluxgate.cluster.lease_table import (
    LEASE_FILE,
    STAT_RETURNED,
    W_TAG,
    W_WINDOW,
    LeaseTable,
    create_lease_file,
)
from fluxgate.metrics import ProcessMetric

if TYPE_CHECKING:
    from fluxgate.config.schema import Config
    from fluxgate.master.admin import AdminRouter
    from fluxgate.master.services import ServiceContext

log = logging.getLogger("fluxgate.cluster.quotas")

# (stat in LeaseTable.stats(), metric name, kind, help)
_METRICS = (
    ("leases", "fluxgate_quota_lease_requests_total", "counter",
     "Quota lease requests Redis answered, on this node."),
    ("units", "fluxgate_quota_leased_units_total", "counter",
     "Quota units Redis granted to this node."),
    ("returned", "fluxgate_quota_returned_units_total", "counter",
     "Unspent quota units this node gave back to Redis at shutdown."),
    ("waits", "fluxgate_quota_lease_waits_total", "counter",
     "Requests that waited for a quota lease (none was in hand)."),
    ("exact", "fluxgate_quota_exact_calls_total", "counter",
     "Requests counted in Redis one by one (lease: 0, or no lease slot free)."),
    ("errors", "fluxgate_quota_store_errors_total", "counter",
     "Quota calls to Redis that failed or timed out."),
    ("local", "fluxgate_quota_store_down_local_total", "counter",
     "Requests accepted by on_store_down: local beyond this node's leases."),
    ("denied", "fluxgate_quota_store_down_denied_total", "counter",
     "Requests refused by on_store_down: deny (503 quota_store_unavailable)."),
)


class QuotaLeaseService:
    """Owns the node's lease file in cluster mode; nothing otherwise."""

    name = "quota_leases"

    def __init__(self, master: ServiceContext) -> None:
        self.master = master
        self.table: LeaseTable | None = None
        self.config: Config | None = None

    async def start(self, config: Config) -> None:
        await self.reload(config)

    async def reload(self, config: Config) -> None:
        """Cluster mode turned on by a reload creates the file before the new workers fork."""
        self.config = config
        if is_redis_url(config.store) and self.table is None:
            path = os.path.join(self.master.state_dir, LEASE_FILE)
            create_lease_file(path)
            self.table = LeaseTable(path)

    async def stop(self) -> None:
        table, config = self.table, self.config
        if table is None or config is None:
            return
        try:
            if is_redis_url(config.store):
                await self.give_back(table, config)
        finally:
            self.table = None
            table.close()

    async def give_back(self, table: LeaseTable, config: Config) -> int:
        """Return every unspent unit of a window still open; the units returned."""
        client = None
        returned = 0
        try:
            client = redis_client(parse_store_url(config.store), config.cluster)
            store = LeaseStore(client, config.cluster.prefix, node_name(config))
            mapping, quotas = open_quota_file(os.path.join(self.master.state_dir, QUOTA_FILE))
            try:
                returned = await self._return_all(table, quotas, store, config.cluster.timeout)
            finally:
                quotas.release()
                mapping.close()
        except Exception as exc:  # noqa: BLE001 - best effort: the leases expire anyway
            log.warning("unspent quota leases not given back (%s); they expire with their "
                        "windows", type(exc).__name__)
        finally:
            if client is not None:
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001, S110 - closing a broken connection
                    pass
        return returned

    @staticmethod
    async def _return_all(table: LeaseTable, quotas, store: LeaseStore, timeout: float) -> int:
        now = time.time()
        returned = 0
        for slot in table.used_slots():
            window = table.word(slot, W_WINDOW)
            if not window:
                continue
            end = window_end(now, window)
            granted = table.granted(slot, end)
            spent, _ = quotas.peek(table.word(slot, W_TAG), window, now)
            unspent = granted - spent
            if unspent <= 0:
                continue
            back = int(await asyncio.wait_for(
                store.give_back(table.id_hash(slot), end, unspent), timeout))
            table.set_granted(slot, end, granted - back)
            table.count(STAT_RETURNED, back)
            returned += back
        return returned

    def admin_routes(self, router: AdminRouter) -> None:
        """Nothing beyond /metrics."""

    def metrics(self) -> list[ProcessMetric]:
        table, config = self.table, self.config
        if table is None or config is None:
            return []
        stats = table.stats()
        labels = (("node", node_name(config)),)
        out = [ProcessMetric(name, kind, text, stats[key], labels)
               for key, name, kind, text in _METRICS]
        out.append(ProcessMetric("fluxgate_quota_store_up", "gauge",
                                 "1 while this node reaches the quota store (Redis).",
                                 0 if stats["store_down"] else 1, labels))
        return out
