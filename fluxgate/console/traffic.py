"""Live traffic for the console: rates and latency percentiles from successive snapshots of
the shared request counters (``fluxgate/metrics.py``), the auth-failure counters and the
shadow-decision counters.

The counters only grow, so what happened recently is the difference between the newest
snapshot and one taken about ``WINDOW`` seconds earlier. Percentiles are estimated from the
histogram's bucket differences the way Prometheus' ``histogram_quantile`` does: linear
interpolation inside the bucket that holds the rank.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fluxgate.metrics import BUCKETS, RouteStats

WINDOW = 5.0  # s of history behind each rate and percentile
MIN_SPACING = 0.5  # s: polls closer than this reuse the newest snapshot
KEEP = 30.0  # s of snapshots kept
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class Snapshot:
    """The counters at one instant (monotonic seconds)."""

    at: float
    routes: Mapping[str, RouteStats]  # route label -> its counters
    auth_failures: Mapping[tuple[str, str], int]  # (method, reason) -> refusals
    # (route, method, decision, reason) -> decisions of shadowed middleware
    shadow: Mapping[tuple[str, str, str, str], int]


def quantile(q: float, cumulative: Sequence[int]) -> float | None:
    """The ``q`` quantile in seconds from cumulative bucket counts (``BUCKETS`` then +Inf);
    None without observations. A rank in the +Inf bucket answers the highest finite bound."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, upper in enumerate(BUCKETS):
        if cumulative[i] >= rank:
            lower = BUCKETS[i - 1] if i else 0.0
            in_bucket = cumulative[i] - below
            if in_bucket <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / in_bucket
        below = cumulative[i]
    return BUCKETS[-1]


def _class_counts(statuses: Mapping[int, int]) -> dict[str, int]:
    out = dict.fromkeys(STATUS_CLASSES, 0)
    for status, n in statuses.items():
        label = f"{status // 100}xx"
        if label in out:
            out[label] += n
    return out


def _route_view(new: RouteStats, old: RouteStats | None, seconds: float | None) -> dict:
    totals = _class_counts(new.statuses)
    doc: dict = {"requests": new.count, "statuses": totals, "rps": None, "recent": None}
    doc.update(dict.fromkeys(name for name, _ in QUANTILES))
    if seconds is None:
        return doc
    before = _class_counts(old.statuses) if old is not None else dict.fromkeys(STATUS_CLASSES, 0)
    # max(0, ...): a slot handed to another route path starts again from zero.
    recent = {k: max(0, totals[k] - before[k]) for k in STATUS_CLASSES}
    old_buckets = old.buckets if old is not None else (0,) * len(new.buckets)
    delta = [max(0, a - b) for a, b in zip(new.buckets, old_buckets, strict=True)]
    doc["recent"] = recent
    doc["rps"] = round(sum(recent.values()) / seconds, 2)
    for name, q in QUANTILES:
        value = quantile(q, delta)
        doc[name] = None if value is None else round(value * 1000, 2)  # milliseconds
    return doc


def _counter_rows(new: Mapping[tuple, int], old: Mapping[tuple, int] | None,
                  seconds: float | None) -> list[tuple[tuple, dict]]:
    """(labels, {"total", "per_minute"}) for each counter, sorted by labels."""
    rows = []
    for labels, n in sorted(new.items()):
        per_minute = None
        if old is not None and seconds is not None:
            per_minute = round(max(0, n - old.get(labels, 0)) * 60 / seconds, 1)
        rows.append((labels, {"total": n, "per_minute": per_minute}))
    return rows


class TrafficSampler:
    """Snapshots taken as the console polls (at most one per ``MIN_SPACING``), and the view
    of the last ``WINDOW`` seconds they give."""

    def __init__(self, read: Callable[[], tuple[Mapping[str, RouteStats],
                                                 Mapping[tuple[str, str], int],
                                                 Mapping[tuple[str, str, str, str], int]]],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._snapshots: collections.deque[Snapshot] = collections.deque()

    def sample(self) -> tuple[Snapshot, Snapshot | None]:
        """The newest snapshot (taken now unless one is fresh) and the one to compare it
        with (about WINDOW seconds older, the oldest kept if none is that old; None at
        first)."""
        now = self._clock()
        if not self._snapshots or now - self._snapshots[-1].at >= MIN_SPACING:
            self._snapshots.append(Snapshot(now, *self._read()))
            while now - self._snapshots[0].at > KEEP:
                self._snapshots.popleft()
        newest = self._snapshots[-1]
        base = None
        for snap in self._snapshots:
            if snap is newest:
                break
            if newest.at - snap.at >= WINDOW or base is None:
                base = snap
        return newest, base

    def view(self) -> dict:
        """The JSON the console's traffic and auth-failure panels show."""
        newest, base = self.sample()
        seconds = newest.at - base.at if base is not None else None
        if seconds is not None and seconds <= 0:
            seconds = None
        routes = []
        merged_new: list[int] = [0] * (len(BUCKETS) + 1)
        merged_old: list[int] = [0] * (len(BUCKETS) + 1)
        merged_statuses: collections.Counter[int] = collections.Counter()
        merged_old_statuses: collections.Counter[int] = collections.Counter()
        for label, stats in sorted(newest.routes.items()):
            old = base.routes.get(label) if base is not None else None
            routes.append({"route": label, **_route_view(stats, old, seconds)})
            merged_new = [a + b for a, b in zip(merged_new, stats.buckets, strict=True)]
            merged_statuses.update(stats.statuses)
            if old is not None:
                merged_old = [a + b for a, b in zip(merged_old, old.buckets, strict=True)]
                merged_old_statuses.update(old.statuses)
        total = _route_view(
            RouteStats(dict(merged_statuses), tuple(merged_new), 0),
            RouteStats(dict(merged_old_statuses), tuple(merged_old), 0) if base else None,
            seconds,
        )
        failures = [{"method": method, "reason": reason, **counts} for (method, reason), counts
                    in _counter_rows(newest.auth_failures, base.auth_failures if base else None, seconds)]
        shadow = [{"route": route, "method": method, "decision": decision, "reason": reason,
                   **counts} for (route, method, decision, reason), counts
                  in _counter_rows(newest.shadow, base.shadow if base else None, seconds)]
        return {"window_s": None if seconds is None else round(seconds, 2),
                "total": total, "routes": routes, "auth_failures": failures, "shadow": shadow}
