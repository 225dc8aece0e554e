"""Request metrics in shared memory, rendered as Prometheus text.

The master creates one file-backed ``MAP_SHARED`` mapping before it forks; every worker inherits
the mapping and records each finished request with a few atomic adds (``_core.Counters``), so N
workers count into one table and a scrape of the master sees the exact totals with no IPC.

Layout (uint64 slots)::

    [0] magic   [1] layout version   [2] route capacity   [3] reserved
    then one block of BLOCK_SLOTS per route slot:
        N_STATUSES counters        requests by status code 100..599 (index = status - 100)
        len(BUCKETS) + 1 counters  latency histogram, *non*-cumulative (the last one is +Inf)
        1 counter                  latency sum in microseconds

A request costs three adds (status, bucket, sum). ``_count`` is not stored: it is the sum of
the buckets, which keeps ``_count`` equal to the ``+Inf`` bucket in every scrape as Prometheus
requires, even while workers are writing. Buckets are made cumulative at render time.

Route slots are handed out by the master's ``RouteSlots`` registry; slot 0 counts requests that
matched no route (label ``route=""``). Counters live as long as the master: the file is
recreated at start, which Prometheus treats as an ordinary counter reset.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fluxgate._core import Counters, RequestRecorder
from fluxgate.errors import ConfigError
from fluxgate.shm import create_mapping, open_mapping

MAGIC = 0x4647_4D45_5452_4943  # "FGMETRIC"
LAYOUT_VERSION = 1
HEADER_SLOTS = 4

STATUS_MIN, STATUS_MAX = 100, 599
N_STATUSES = STATUS_MAX - STATUS_MIN + 1

# Prometheus client defaults: they bracket both a cached-token hit (sub-ms, first bucket) and a
# slow upstream (seconds), so dashboards built for other services read the same way.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
N_BUCKETS = len(BUCKETS) + 1  # + the +Inf bucket

_BUCKETS_OFFSET = N_STATUSES
_SUM_OFFSET = _BUCKETS_OFFSET + N_BUCKETS
BLOCK_SLOTS = _SUM_OFFSET + 1

# Route slots, slot 0 included. 4 KiB each, but the file is sparse: a slot costs memory only
# once a route records into it, and a scrape reads only the slots in use.
DEFAULT_CAPACITY = 1024

NO_ROUTE_SLOT = 0


def _file_size(capacity: int) -> int:
    return (HEADER_SLOTS + capacity * BLOCK_SLOTS) * 8


@dataclass(frozen=True)
class RouteStats:
    """A point-in-time copy of one route slot's counters."""

    statuses: dict[int, int]  # status code -> requests (non-zero entries only)
    buckets: tuple[int, ...]  # cumulative counts, one per BUCKETS entry, then +Inf
    sum_us: int

    @property
    def count(self) -> int:
        """Number of requests observed (the +Inf bucket)."""
        return self.buckets[-1]


@dataclass(frozen=True)
class ProcessMetric:
    """A metric the master owns (not in shared memory), rendered after the request metrics."""

    name: str
    kind: str  # "gauge" | "counter"
    help: str
    value: float
    # Label pairs, e.g. (("provider", "https://idp/jwks"), ("result", "ok")). Metrics that share
    # a name are rendered as one family (HELP/TYPE once), so keep them adjacent.
    labels: tuple[tuple[str, str], ...] = ()


def metric_family(name: str, kind: str, help_text: str,
                  rows: list[tuple[tuple[tuple[str, str], ...], float]]) -> list[ProcessMetric]:
    """The series of one family: ``rows`` of (label pairs, value), adjacent as rendering
    needs them."""
    return [ProcessMetric(name, kind, help_text, value, labels) for labels, value in rows]


class MetricsTable:
    """The shared request-metrics table. Create it in the master with ``create``; workers use
    the inherited object's ``record``."""

    def __init__(self, mapping: mmap.mmap, path: str, capacity: int) -> None:
        self._mmap = mapping
        self._counters = Counters(mapping)
        self.path = path
        self.capacity = capacity
        # Built once; a worker binds recorder.record and calls it once per request.
        self.recorder = RequestRecorder(
            self._counters,
            header_slots=HEADER_SLOTS,
            block_slots=BLOCK_SLOTS,
            capacity=capacity,
            status_min=STATUS_MIN,
            status_max=STATUS_MAX,
            buckets=BUCKETS,
            buckets_offset=_BUCKETS_OFFSET,
            sum_offset=_SUM_OFFSET,
        )

    @classmethod
    def create(cls, path: str, capacity: int = DEFAULT_CAPACITY) -> MetricsTable:
        """Create (or recreate) the metrics file at ``path`` with mode 0600 and map it.

        An existing file is unlinked first, so a stale table from an earlier master (or a file
        with looser permissions) is never reused.
        """
        if capacity < 1:
            raise ValueError("capacity must be >= 1 (slot 0 is the no-route slot)")
        table = cls(create_mapping(path, _file_size(capacity)), path, capacity)
        table._counters.store(0, MAGIC)
        table._counters.store(1, LAYOUT_VERSION)
        table._counters.store(2, capacity)
        return table

    @classmethod
    def open(cls, path: str) -> MetricsTable:
        """Map an existing table (e.g. a tool reading a running gateway's counters)."""
        def check_size(size: int) -> None:
            if size < HEADER_SLOTS * 8:
                raise ValueError(f"{path}: not a FluxGate metrics table (too short)")

        mapping = open_mapping(path, check_size)
        size = len(mapping)
        counters = Counters(mapping)
        magic, version, capacity = counters.load(0), counters.load(1), counters.load(2)
        counters.release()
        if magic != MAGIC or version != LAYOUT_VERSION or size != _file_size(capacity):
            mapping.close()
            raise ValueError(f"{path}: not a FluxGate metrics table (layout {version})")
        return cls(mapping, path, capacity)

    def close(self) -> None:
        """Unmap the table (the Counters view must go first: it pins the mapping)."""
        self._counters.release()
        self._mmap.close()

    # ---- worker hot path ------------------------------------------------------------------

    def record(self, route_slot: int, status: int, seconds: float) -> None:
        """Count one finished request: three atomic adds in one C call (RequestRecorder).

        A route slot outside the table is counted under slot 0 (never drop a request from the
        totals); a status outside 100..599 raises ValueError before anything is counted.
        """
        self.recorder.record(route_slot, status, seconds)

    # ---- master side ----------------------------------------------------------------------

    def reset_slot(self, route_slot: int) -> None:
        """Zero one route slot before the registry gives it to a different route path."""
        load, store = self._counters.load, self._counters.store
        base = HEADER_SLOTS + route_slot * BLOCK_SLOTS
        for i in range(base, base + BLOCK_SLOTS):
            if load(i):
                store(i, 0)

    def route_stats(self, route_slot: int) -> RouteStats:
        """Copy one route slot's counters (each load is atomic; the copy is not a snapshot of
        all of them at one instant, which Prometheus does not require)."""
        if not 0 <= route_slot < self.capacity:
            raise IndexError(route_slot)
        load = self._counters.load
        base = HEADER_SLOTS + route_slot * BLOCK_SLOTS
        statuses: dict[int, int] = {}
        for i in range(N_STATUSES):
            v = load(base + i)
            if v:
                statuses[STATUS_MIN + i] = v
        cumulative: list[int] = []
        total = 0
        for i in range(N_BUCKETS):
            total += load(base + _BUCKETS_OFFSET + i)
            cumulative.append(total)
        return RouteStats(statuses, tuple(cumulative), load(base + _SUM_OFFSET))

    def snapshot(self, route_slots: Iterable[int]) -> dict[int, RouteStats]:
        """``route_stats`` for each of ``route_slots``."""
        return {slot: self.route_stats(slot) for slot in route_slots}

    def render(
        self, route_labels: Mapping[int, str], process_metrics: Sequence[ProcessMetric] = ()
    ) -> str:
        """Prometheus text exposition format 0.0.4 for the slots in ``route_labels`` (slot ->
        route path), followed by the master's ``process_metrics``."""
        stats = self.snapshot(sorted(route_labels))
        lines = [
            "# HELP fluxgate_requests_total Requests answered, by route and status code.",
            "# TYPE fluxgate_requests_total counter",
        ]
        for slot, st in stats.items():
            route = _escape(route_labels[slot])
            for status, n in sorted(st.statuses.items()):
                lines.append(f'fluxgate_requests_total{{route="{route}",status="{status}"}} {n}')
        lines += [
            "# HELP fluxgate_request_duration_seconds Time from request start to response end.",
            "# TYPE fluxgate_request_duration_seconds histogram",
        ]
        name = "fluxgate_request_duration_seconds"
        for slot, st in stats.items():
            route = _escape(route_labels[slot])
            for le, n in zip(BUCKETS, st.buckets, strict=False):
                lines.append(f'{name}_bucket{{route="{route}",le="{le}"}} {n}')
            lines.append(f'{name}_bucket{{route="{route}",le="+Inf"}} {st.count}')
            lines.append(f'{name}_sum{{route="{route}"}} {st.sum_us / 1_000_000}')
            lines.append(f'{name}_count{{route="{route}"}} {st.count}')
        family = None
        for m in process_metrics:
            value = int(m.value) if float(m.value).is_integer() else m.value
            if m.name != family:
                family = m.name
                lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}"]
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in m.labels)
            lines.append(f"{m.name}{{{labels}}} {value}" if labels else f"{m.name} {value}")
        return "\n".join(lines) + "\n"


def _escape(label_value: str) -> str:
    # Exposition format: backslash, double quote and line feed are escaped in label values.
    return label_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RouteSlots:
    """Assigns metrics slots to route paths, stable across reloads.

    A path keeps its slot for the master's lifetime, so a reload does not reset its counters,
    and a path that leaves the config and comes back gets its old slot (and counts) back.
    ``assign`` only adds paths; ``retire_others`` drops the ones a config no longer has, once
    that config is in force - so a reload that fails leaves the registry as it was. Slots of
    departed paths are reused (zeroed first) only when no fresh slot is left: an old-generation
    worker may record into its old slot while it drains, so reusing late keeps that overlap
    improbable.
    """

    def __init__(self, table: MetricsTable) -> None:
        self._table = table
        self._by_path: dict[str, int] = {}
        self._retired: dict[str, int] = {}  # departed path -> slot, oldest first
        self._next_fresh = NO_ROUTE_SLOT + 1

    def assign(self, route_paths: Sequence[str]) -> tuple[int, ...]:
        """Return the slot of each of ``route_paths`` (same order), allocating new ones.

        Raises ConfigError, changing nothing, when there are not enough slots for the paths in
        use plus the new ones.
        """
        new = [p for p in dict.fromkeys(route_paths) if p not in self._by_path]
        fresh = self._table.capacity - self._next_fresh
        returning = sum(1 for p in new if p in self._retired)
        if len(new) - returning > fresh + len(self._retired) - returning:
            raise ConfigError(
                f"too many distinct route paths for the metrics table "
                f"({self._table.capacity - 1} slots, {len(self._by_path)} in use, "
                f"{len(new)} new)",
                path="routes",
            )
        for path in new:
            if path in self._retired:
                slot = self._retired.pop(path)
            elif self._next_fresh < self._table.capacity:
                slot = self._next_fresh
                self._next_fresh += 1
            else:
                # Checked above: a retired slot that no returning path claims is left.
                oldest = next(p for p in self._retired if p not in new)
                slot = self._retired.pop(oldest)
                self._table.reset_slot(slot)
            self._by_path[path] = slot
        return tuple(self._by_path[p] for p in route_paths)

    def retire_others(self, route_paths: Sequence[str]) -> None:
        """Retire every path not in ``route_paths`` (the config now in force)."""
        keep = set(route_paths)
        for path in [p for p in self._by_path if p not in keep]:
            self._retired[path] = self._by_path.pop(path)

    def labels(self) -> dict[int, str]:
        """Slot -> route label for the paths in use, slot 0 (``""``, no route) included."""
        labels = {NO_ROUTE_SLOT: ""}
        labels.update({slot: path for path, slot in self._by_path.items()})
        return labels
