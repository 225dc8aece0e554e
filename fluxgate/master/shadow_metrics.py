"""The master service that owns the shared shadow-decision table (``auth/shadow_counts.py``):
created before the workers fork, rendered on /metrics as
``fluxgate_shadow_decisions_total{route,method,decision,reason}`` (docs/shadow.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fluxgate.auth.shadow_counts import FILE, ShadowCounts
from fluxgate.master.auth_metrics import CounterTableService
from fluxgate.metrics import ProcessMetric

if TYPE_CHECKING:
    from fluxgate.config.schema import Config
    from fluxgate.master.services import ServiceContext

NAME = "fluxgate_shadow_decisions_total"
HELP = "Decisions of shadowed middleware (never enforced), by route, method, decision and reason."


def shadowed_routes(config: Config) -> list[str]:
    """The route paths with a shadowed entry (or shadowed as a whole)."""
    return [r.route for r in config.routes
            if r.shadow or any(getattr(m, "shadow", False) for m in r.middleware)]


class ShadowMetricsService(CounterTableService):
    """Creates ``state_dir/shadow_decisions.bin``; workers count shadow decisions into it."""

    name = "shadow_metrics"
    file = FILE
    table: ShadowCounts | None

    def __init__(self, master: ServiceContext) -> None:
        super().__init__(master)
        # Paths shadowed by any config this master ran: their counts stay on /metrics after a
        # reload that stops shadowing them (counters live as long as the master).
        self.routes: dict[str, None] = {}

    async def start(self, config: Config) -> None:
        self.table = ShadowCounts.create(self.master.state_dir)
        self.routes.update(dict.fromkeys(shadowed_routes(config)))

    async def reload(self, config: Config) -> None:
        """Counters live as long as the master; a reload keeps them."""
        self.routes.update(dict.fromkeys(shadowed_routes(config)))

    def metrics(self) -> list[ProcessMetric]:
        slots = getattr(self.master, "route_slots", None)
        if self.table is None or slots is None or not self.routes:
            return []
        by_path = {path: slot for slot, path in slots.labels().items()}
        rows = []
        for path in self.routes:
            slot = by_path.get(path)
            if slot is None:
                continue
            for (method, decision, reason), n in sorted(self.table.snapshot(slot).items()):
                rows.append(ProcessMetric(NAME, "counter", HELP, n, (
                    ("route", path), ("method", method), ("decision", decision),
                    ("reason", reason))))
        return rows
