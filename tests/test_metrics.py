"""fluxgate.metrics: the shared request-metrics table and its Prometheus rendering."""

from __future__ import annotations

import os
import stat

import pytest

from fluxgate.errors import ConfigError
from fluxgate.metrics import (
    BUCKETS,
    MetricsTable,
    ProcessMetric,
    RouteSlots,
)
from tests.support.gateway import run_in_children


@pytest.fixture
def table(tmp_path):
    t = MetricsTable.create(str(tmp_path / "metrics.bin"), capacity=8)
    try:
        yield t
    finally:
        t.close()


def samples(text: str) -> dict[str, float]:
    """Sample lines of an exposition as {'name{labels}': value}; fails on malformed lines."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        assert key and key not in out, line
        out[key] = float(value)
    return out


def test_create_file_mode_and_recreate_resets(tmp_path):
    path = str(tmp_path / "metrics.bin")
    t = MetricsTable.create(path, capacity=4)
    t.record(1, 200, 0.001)
    t.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    t = MetricsTable.create(path, capacity=4)  # a new master: counters start from zero
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert t.route_stats(1).count == 0
    finally:
        t.close()


def test_record_counts_status_buckets_and_sum(table):
    table.record(1, 200, 0.0)
    table.record(1, 200, 0.005)  # exactly on a bound: counted in that bucket ("le")
    table.record(1, 404, 0.0051)
    table.record(1, 503, 42.0)  # beyond the last bound: +Inf only
    st = table.route_stats(1)
    assert st.statuses == {200: 2, 404: 1, 503: 1}
    assert st.buckets[0] == 2  # le=0.005
    assert st.buckets[1] == 3  # le=0.01, cumulative
    assert st.buckets[len(BUCKETS) - 1] == 3  # le=10
    assert st.count == st.buckets[-1] == 4
    assert st.sum_us == 5000 + 5100 + 42_000_000
    assert table.route_stats(0).count == 0


def test_record_rejects_bad_status_and_clamps_bad_slot(table):
    with pytest.raises(ValueError):
        table.record(1, 99, 0.1)
    with pytest.raises(ValueError):
        table.record(1, 600, 0.1)
    assert table.route_stats(1).count == 0  # nothing half-counted
    table.record(99, 200, 0.1)  # unknown slot: still counted, under "no route"
    table.record(-1, 200, 0.1)
    assert table.route_stats(0).statuses == {200: 2}
    table.record(2, 200, -1.0)  # a clock step back must not wrap the sum
    table.record(2, 200, float("nan"))
    assert table.route_stats(2).sum_us == 0
    assert table.route_stats(2).buckets[0] == 2  # both counted as 0 s
    table.record(2, 200, 1e9)  # past the last bound: +Inf only
    assert table.route_stats(2).buckets[-2:] == (2, 3)


def test_render_prometheus_text(table):
    table.record(0, 404, 0.002)
    table.record(1, 200, 0.003)
    table.record(1, 200, 0.3)
    table.record(1, 500, 0.02)
    text = table.render(
        {0: "", 1: "/api", 2: "/idle"},
        [
            ProcessMetric("fluxgate_workers", "gauge", "Workers.", 2),
            ProcessMetric("fluxgate_worker_restarts_total", "counter", "Restarts.", 1),
        ],
    )
    assert text.endswith("\n")
    assert "# TYPE fluxgate_requests_total counter" in text
    assert "# TYPE fluxgate_request_duration_seconds histogram" in text
    assert "# TYPE fluxgate_workers gauge" in text
    s = samples(text)
    assert s['fluxgate_requests_total{route="/api",status="200"}'] == 2
    assert s['fluxgate_requests_total{route="/api",status="500"}'] == 1
    assert s['fluxgate_requests_total{route="",status="404"}'] == 1
    assert not any(k.startswith('fluxgate_requests_total{route="/idle"') for k in s)
    h = "fluxgate_request_duration_seconds"
    assert s[f'{h}_bucket{{route="/api",le="0.005"}}'] == 1
    assert s[f'{h}_bucket{{route="/api",le="0.025"}}'] == 2
    assert s[f'{h}_bucket{{route="/api",le="0.25"}}'] == 2
    assert s[f'{h}_bucket{{route="/api",le="0.5"}}'] == 3
    assert s[f'{h}_bucket{{route="/api",le="+Inf"}}'] == 3
    assert s[f'{h}_count{{route="/api"}}'] == 3
    assert s[f'{h}_sum{{route="/api"}}'] == pytest.approx(0.323)
    assert s[f'{h}_count{{route="/idle"}}'] == 0  # a quiet route still has its series
    assert s["fluxgate_workers"] == 2
    assert s["fluxgate_worker_restarts_total"] == 1
    # Buckets never decrease, whatever was recorded.
    les = [s[f'{h}_bucket{{route="/api",le="{le}"}}'] for le in BUCKETS]
    assert les == sorted(les)


def test_render_escapes_label_values(table):
    table.record(1, 200, 0.001)
    text = table.render({1: 'a"b\\c\nd'})
    assert 'route="a\\"b\\\\c\\nd"' in text


def test_open_existing_and_reject_foreign_file(tmp_path, table):
    table.record(3, 201, 0.001)
    other = MetricsTable.open(table.path)
    try:
        assert other.capacity == table.capacity
        assert other.route_stats(3).statuses == {201: 1}
    finally:
        other.close()
    bogus = tmp_path / "bogus.bin"
    bogus.write_bytes(b"\x00" * 4096)
    with pytest.raises(ValueError):
        MetricsTable.open(str(bogus))


def test_exact_counts_from_two_forked_processes(table):
    n = 20_000
    def record() -> bool:
        for i in range(n):
            table.record(1, 200 if i % 2 else 503, 0.001)
        return True

    for code in run_in_children(2, record):
        assert code == 0
    st = table.route_stats(1)
    assert st.statuses == {200: n, 503: n}
    assert st.count == 2 * n
    assert st.sum_us == 2 * n * 1000


def test_route_slots_stable_across_reloads(table):
    slots = RouteSlots(table)
    first = slots.assign(["/a", "/b", "/a"])
    assert first[0] == first[2] and len(set(first)) == 2 and 0 not in first
    slots.retire_others(["/a", "/b"])
    a, b = first[0], first[1]
    table.record(a, 200, 0.01)

    # Reload: /b goes, /c comes, /a keeps its slot and its counts.
    second = slots.assign(["/c", "/a"])
    slots.retire_others(["/c", "/a"])
    assert second[1] == a and second[0] not in (a, b)
    assert table.route_stats(a).count == 1
    assert slots.labels() == {0: "", a: "/a", second[0]: "/c"}

    # /b comes back before its slot was reused: same slot again.
    third = slots.assign(["/b"])
    assert third == (b,)


def test_route_slots_failed_reload_rolls_back(table):
    slots = RouteSlots(table)
    old = ["/a", "/b"]
    slots.assign(old)
    slots.retire_others(old)
    before = slots.labels()
    slots.assign(["/x", "/y"])  # the new generation never became ready...
    slots.retire_others(old)  # ...so the old config stays in force
    assert slots.labels() == before


def test_route_slots_recycle_zeroes_and_capacity(table):
    slots = RouteSlots(table)  # capacity 8: slots 1..7
    paths = [f"/r{i}" for i in range(7)]
    assigned = slots.assign(paths)
    slots.retire_others(paths)
    assert sorted(assigned) == list(range(1, 8))
    table.record(assigned[0], 200, 0.01)
    with pytest.raises(ConfigError):
        slots.assign([f"/too-many-{i}" for i in range(8)])
    # /r0 leaves; the only free slot is its own, zeroed before /new gets it.
    keep = paths[1:]
    slots.retire_others(keep)
    (new_slot,) = slots.assign(["/new"])
    assert new_slot == assigned[0]
    assert table.route_stats(new_slot).count == 0
    # Every slot is in use now; one more path cannot be counted.
    with pytest.raises(ConfigError):
        slots.assign(["/one-more"])
