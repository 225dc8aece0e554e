"""The process model end to end: real `fluxgate run` masters with real workers.

Every test starts its gateway on 127.0.0.1:0, finds it through state_dir/gateway.json, and
kills every process it saw (master and workers, by pid) when it ends.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, child_pids, kill_pids

ADMIN_TOKEN = "test-admin-token"  # what tests/support/gateway.py writes into the config

pytestmark = pytest.mark.slow


def routes(upstream_url: str, *paths: str) -> str:
    return "routes:\n" + "".join(
        f"  - route: {p}\n    upstream: {upstream_url}\n    public: true\n" for p in paths
    )


class Tracked:
    """Remembers every worker pid seen under a master so the test can kill them all."""

    def __init__(self) -> None:
        self.gateways: list[GatewayProcess] = []
        self.pids: set[int] = set()

    def workers(self, gw: GatewayProcess) -> set[int]:
        pids = child_pids(gw.proc.pid)
        self.pids |= pids
        return pids

    def cleanup(self) -> None:
        for gw in self.gateways:
            self.workers(gw)
            if gw.proc is not None and gw.proc.poll() is None:
                gw.proc.kill()
                gw.proc.wait(5)
        kill_pids(self.pids)


@pytest.fixture
def tracked():
    t = Tracked()
    try:
        yield t
    finally:
        t.cleanup()


@pytest.fixture
def start(gateway_factory, tracked):
    def _start(config_text: str, workers: int = 2, **kwargs) -> GatewayProcess:
        gw = gateway_factory(config_text, workers=workers, **kwargs)
        tracked.gateways.append(gw)
        wait_for(lambda: len(tracked.workers(gw)) == workers, 10, "workers", gw)
        return gw

    return _start


def wait_for(predicate, timeout: float, what: str, gw: GatewayProcess | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{gw.log() if gw else ''}")


def get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def admin_get(gw: GatewayProcess, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric(gw: GatewayProcess, name_and_labels: str) -> float:
    status, body = admin_get(gw, "/metrics")
    assert status == 200
    m = re.search(rf"^{re.escape(name_and_labels)} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def settled_metric(gw: GatewayProcess, name_and_labels: str, expected: float) -> float:
    """The series' value once it equals `expected`, or its value after 5 s if it never does."""
    deadline = time.monotonic() + 5
    value = metric(gw, name_and_labels)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = metric(gw, name_and_labels)
    return value


def generation(gw: GatewayProcess) -> int:
    return json.loads((gw.state_dir / "gateway.json").read_text())["generation"]


class Load:
    """A bounded client load: threads on fresh connections, plus keep-alive ones.

    A keep-alive client may see its idle connection closed by a draining worker just as it
    reuses it; like every HTTP client it then retries an idempotent request once on a new
    connection (RFC 9112 §9.3.1). That retry is counted, never a failure; any other error,
    and any status but 200, is a failure.
    """

    def __init__(self, port: int, path: str, fresh: int = 3, keepalive: int = 2) -> None:
        self.port, self.path = port, path
        self.stop = threading.Event()
        self.ok = 0
        self.retried = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]
        self.threads += [
            threading.Thread(target=self._keepalive, daemon=True) for _ in range(keepalive)
        ]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _count(self, status: int | None, error: str | None = None) -> None:
        with self._lock:
            if status == 200:
                self.ok += 1
            else:
                self.failures.append(error or f"status {status}")

    def _fresh(self) -> None:
        for _ in range(20_000):  # bounded, whatever happens to `stop`
            if self.stop.is_set():
                return
            try:
                status, _ = get(self.port, self.path)
                self._count(status)
            except (OSError, http.client.HTTPException) as exc:
                self._count(None, repr(exc))

    def _keepalive(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        used = False
        for _ in range(20_000):
            if self.stop.is_set():
                break
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                self._count(resp.status)
                used = not resp.will_close
                if resp.will_close:
                    conn.close()
            except (ConnectionError, http.client.RemoteDisconnected) as exc:
                conn.close()
                if not used:
                    self._count(None, repr(exc))
                    continue
                with self._lock:
                    self.retried += 1
                used = False
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                used = False
                self._count(None, repr(exc))
        conn.close()


# ---- tests -----------------------------------------------------------------------------------


def test_killed_worker_is_replaced_while_the_other_serves(start, tracked, upstream):
    gw = start(routes(upstream.url, "/api"), workers=2)
    before = tracked.workers(gw)
    for _ in range(10):
        assert get(gw.port, "/api/x")[0] == 200
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Requests keep succeeding the moment the worker is gone: the survivor shares the socket.
    failures = 0
    for _ in range(40):
        failures += get(gw.port, "/api/x")[0] != 200
    assert failures == 0
    after = wait_for(
        lambda: (w := tracked.workers(gw)) and victim not in w and len(w) == 2 and w,
        10, "a replacement worker", gw,
    )
    assert (before - {victim}) <= after
    gw.wait_ready(10)
    assert metric(gw, "fluxgate_worker_restarts_total") == 1
    assert metric(gw, "fluxgate_workers_ready") == 2
    for _ in range(10):
        assert get(gw.port, "/api/x")[0] == 200
    assert "died: signal 9" in gw.log()


def test_sighup_reload_under_load_drops_nothing(start, tracked, upstream):
    gw = start(routes(upstream.url, "/api"), workers=2)
    old = tracked.workers(gw)
    assert get(gw.port, "/new/x")[0] == 404
    with Load(gw.port, "/api/load") as load:
        wait_for(lambda: load.ok >= 50, 10, "load to run", gw)
        gw.write_config(routes(upstream.url, "/api", "/new"))
        gw.signal(signal.SIGHUP)
        wait_for(lambda: generation(gw) == 2, 10, "generation 2", gw)
        wait_for(lambda: not (tracked.workers(gw) & old), 10, "old workers to exit", gw)
        at_switch = load.ok
        wait_for(lambda: load.ok >= at_switch + 50, 10, "load on the new generation", gw)
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 100
    assert get(gw.port, "/new/x")[0] == 200  # the new config is in force
    assert len(tracked.workers(gw)) == 2
    assert "reloaded: generation 2" in gw.log()
    assert metric(gw, "fluxgate_worker_restarts_total") == 0


def test_invalid_config_on_sighup_keeps_the_old_one(start, tracked, upstream):
    gw = start(routes(upstream.url, "/api"), workers=2)
    old = tracked.workers(gw)
    gw.config_path.write_text(gw.config_path.read_text() + "routes_typo: []\n")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in gw.log(), 10, "the rejection", gw)
    assert "routes_typo" in gw.log()
    for _ in range(20):
        assert get(gw.port, "/api/x")[0] == 200
    assert tracked.workers(gw) == old
    assert generation(gw) == 1
    gw.wait_ready(5)


def test_sigterm_drains_a_slow_request(start, tracked, upstream):
    gw = start(routes(upstream.url, "/api") + "limits: {drain_timeout: 10s}\n", workers=1)
    workers = tracked.workers(gw)
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["response"] = get(gw.port, "/api/slow/1500", timeout=10)
        except (OSError, http.client.HTTPException) as exc:
            result["error"] = repr(exc)

    client = threading.Thread(target=slow, daemon=True)
    client.start()
    wait_for(lambda: any("/slow/" in r.target for r in upstream.requests), 5, "upstream", gw)
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    # While draining, new connections are not served by anyone.
    time.sleep(0.3)
    with pytest.raises((OSError, http.client.HTTPException)):
        get(gw.port, "/api/x", timeout=1)
    client.join(10)
    assert "error" not in result, result
    status, body = result["response"]
    assert status == 200 and b"/slow/1500" in body
    assert gw.proc.wait(10) == 0
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 8, elapsed  # waited for the request, not for drain_timeout
    assert not any(Path(f"/proc/{p}").exists() for p in workers)
    assert not (gw.state_dir / "gateway.json").exists()
    assert "SIGKILL" not in gw.log()


def test_metrics_count_exactly_across_two_workers(start, tracked, upstream):
    gw = start(routes(upstream.url, "/api"), workers=2)
    w1, w2 = sorted(tracked.workers(gw))
    # Stopping one worker sends every connection to the other, so each phase is served by a
    # known worker and the total must add up across both processes.
    try:
        os.kill(w1, signal.SIGSTOP)
        for _ in range(60):
            assert get(gw.port, "/api/a")[0] == 200
        os.kill(w1, signal.SIGCONT)
        os.kill(w2, signal.SIGSTOP)
        for _ in range(40):
            assert get(gw.port, "/api/b")[0] == 200
        for _ in range(7):
            assert get(gw.port, "/nowhere")[0] == 404
    finally:
        os.kill(w1, signal.SIGCONT)
        os.kill(w2, signal.SIGCONT)
    # A worker counts a request just after its last byte is written; one stopped in between
    # counts it once it runs again, so the totals are read once they have settled.
    assert settled_metric(gw, 'fluxgate_requests_total{route="/api",status="200"}', 100) == 100
    assert settled_metric(gw, 'fluxgate_requests_total{route="",status="404"}', 7) == 7
    assert settled_metric(gw, 'fluxgate_request_duration_seconds_count{route="/api"}', 100) == 100
    bucket = 'fluxgate_request_duration_seconds_bucket{route="/api",le="+Inf"}'
    assert settled_metric(gw, bucket, 100) == 100
    assert metric(gw, "fluxgate_workers") == 2
    status, _ = get(gw.admin_port, "/metrics")
    assert status == 401  # never without the token


def test_workers_that_cannot_boot_stop_the_master(gateway_factory, tracked, tmp_path):
    # An access log path that is a directory passes config validation (it is a string) but
    # no worker can open it: the master must give up instead of respawning forever.
    config = f"access_log: {tmp_path}\n" + routes("http://127.0.0.1:9", "/api")
    (tmp_path / "boot").mkdir()
    gw = GatewayProcess(tmp_path / "boot", config, workers=1)
    tracked.gateways.append(gw)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited early"):
        gw.start(timeout=20)
    assert gw.proc.returncode == 3
    assert time.monotonic() - t0 < 15
    log = gw.log()
    assert "could not boot" in log
    assert "failed to boot 5 times in a row" in log
    assert not (gw.state_dir / "gateway.json").exists()


def test_admin_is_served_by_the_master(start, tracked, upstream):
    gw = start(routes(upstream.url, "/api"), workers=1)
    status, body = get(gw.admin_port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, body = get(gw.admin_port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] == 1
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=3) as s:
        s.sendall(b"NOT HTTP\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
