"""The master service that owns the shared auth-failure table (``auth/failures.py``):
created before the workers fork, rendered on /metrics as
``fluxgate_auth_failures_total{method,reason}``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fluxgate.auth.failures import FILE, AuthFailures
from fluxgate.metrics import ProcessMetric

if TYPE_CHECKING:
    from fluxgate.config.schema import Config
    from fluxgate.master.admin import AdminRouter
    from fluxgate.master.services import ServiceContext


class CounterTableService:
    """A master service owning one shared counter table in state_dir (``file``), made in
    ``start`` before the workers fork and removed when the master stops. Counters live as
    long as the master: a reload keeps them."""

    file = ""

    def __init__(self, master: ServiceContext) -> None:
        self.master = master
        self.table: Any = None

    async def reload(self, config: Config) -> None:
        """Counters live as long as the master; a reload keeps them."""

    async def stop(self) -> None:
        if self.table is not None:
            self.table.close()
            self.table = None
            try:
                os.unlink(os.path.join(self.master.state_dir, self.file))
            except FileNotFoundError:
                pass

    def admin_routes(self, router: AdminRouter) -> None:
        """Nothing beyond /metrics."""


class AuthMetricsService(CounterTableService):
    """Creates ``state_dir/auth_failures.bin``; workers count refusals into it."""

    name = "auth_metrics"
    file = FILE
    table: AuthFailures | None

    async def start(self, config: Config) -> None:
        self.table = AuthFailures.create(self.master.state_dir)

    def metrics(self) -> list[ProcessMetric]:
        if self.table is None:
            return []
        counts = self.table.snapshot()
        if not counts:
            return [ProcessMetric("fluxgate_auth_failures_total", "counter",
                                  "Requests refused by authentication, by method and reason.", 0,
                                  (("method", "jwt"), ("reason", "other")))]
        return [
            ProcessMetric("fluxgate_auth_failures_total", "counter",
                          "Requests refused by authentication, by method and reason.", n,
                          (("method", method), ("reason", reason)))
            for (method, reason), n in sorted(counts.items())
        ]
