"""Shadow decisions by route, method, decision and reason, counted across workers
(``fluxgate_shadow_decisions_total{route,method,decision,reason}``, docs/shadow.md).

The master creates ``state_dir/shadow_decisions.bin`` before it forks (the
``shadow_metrics`` service); each worker maps it once and counts a decision with one atomic
add (``_core.Counters``). Slot = ((route slot x len(METHODS) + method) x len(DECISIONS) +
decision) x MAX_REASONS + reason, where the route slot is the request metrics' own (so the
master labels both alike). The file is sparse: a route that shadows nothing costs no
memory. A method or reason not listed counts as the first entry of its tuple.
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Any

from fluxgate._core import Counters
from fluxgate.auth import failures
from fluxgate.auth.runtime import worker_shared
from fluxgate.metrics import DEFAULT_CAPACITY
from fluxgate.shm import create_mapping, open_mapping

log = logging.getLogger("fluxgate.shadow")

FILE = "shadow_decisions.bin"
METHODS: tuple[str, ...] = ("other", "jwt", "api_key", "oauth2", "any", "ip_allow", "quota")
# unknown: the decision could not be had (an introspection answer that never came, a
# middleware that failed); the request went on either way.
DECISIONS: tuple[str, ...] = ("allow", "deny", "unknown")
ALLOW, DENY, UNKNOWN = 0, 1, 2
# "ok" for an allow; a deny's reason is the one fluxgate_auth_failures_total would count.
REASONS: tuple[str, ...] = tuple(dict.fromkeys((
    "other", "ok", "unknown", "quota_exceeded", "quota_table_full", *failures.REASONS,
)))
MAX_REASONS = 64
assert len(REASONS) <= MAX_REASONS
_METHOD_INDEX = {m: i for i, m in enumerate(METHODS)}
_REASON_INDEX = {r: i for i, r in enumerate(REASONS)}
_ROUTE_SLOTS = len(METHODS) * len(DECISIONS) * MAX_REASONS


def _size(capacity: int) -> int:
    return capacity * _ROUTE_SLOTS * 8


class ShadowCounts:
    """The shared decision counters (master: ``create``; workers: ``for_gateway``)."""

    def __init__(self, mapping: mmap.mmap, path: str, capacity: int) -> None:
        self._mapping = mapping
        self._counters = Counters(mapping)
        self._add = self._counters.add
        self.path = path
        self.capacity = capacity

    @classmethod
    def create(cls, state_dir: str, capacity: int = DEFAULT_CAPACITY) -> ShadowCounts:
        """(Re)create the table, mode 0600, zeroed."""
        path = os.path.join(state_dir, FILE)
        return cls(create_mapping(path, _size(capacity)), path, capacity)

    @classmethod
    def open(cls, state_dir: str) -> ShadowCounts:
        """Map the table the master created."""
        path = os.path.join(state_dir, FILE)

        def check_size(size: int) -> None:
            if size <= 0 or size % (_ROUTE_SLOTS * 8):
                raise ValueError(f"{path}: unexpected size {size}")

        mapping = open_mapping(path, check_size)
        return cls(mapping, path, len(mapping) // (_ROUTE_SLOTS * 8))

    @classmethod
    def for_gateway(cls, gateway: Any) -> ShadowCounts | None:
        """The worker's mapping of the table, or None when no master created one."""

        def create() -> ShadowCounts | None:
            try:
                return cls.open(gateway.state_dir)
            except (OSError, ValueError) as exc:
                log.warning("shadow decisions are not counted: %s", exc)
                return None

        return worker_shared(gateway, "shadow_counts", create)

    def count(self, route_slot: int, method: str, decision: int, reason: str) -> None:
        """One decision (one atomic add); a route slot outside the table counts in slot 0."""
        if not 0 <= route_slot < self.capacity:
            route_slot = 0
        m = _METHOD_INDEX.get(method, 0)
        r = _REASON_INDEX.get(reason, 0)
        self._add(((route_slot * len(METHODS) + m) * len(DECISIONS) + decision) * MAX_REASONS + r)

    def snapshot(self, route_slot: int) -> dict[tuple[str, str, str], int]:
        """Non-zero counts of one route slot by (method, decision, reason)."""
        if not 0 <= route_slot < self.capacity:
            return {}
        load = self._counters.load
        out: dict[tuple[str, str, str], int] = {}
        base = route_slot * _ROUTE_SLOTS
        for m, method in enumerate(METHODS):
            for d, decision in enumerate(DECISIONS):
                row = base + (m * len(DECISIONS) + d) * MAX_REASONS
                for r, reason in enumerate(REASONS):
                    value = load(row + r)
                    if value:
                        out[(method, decision, reason)] = value
        return out

    def close(self) -> None:
        """Unmap (the Counters view goes first: it pins the mapping)."""
        self._counters.release()
        self._mapping.close()
