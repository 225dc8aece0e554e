"""fluxgate.master.arbiter with a stand-in worker: lifecycle, fork hygiene, reload, stop.

Each test runs a real master in a subprocess (it forks and installs signal handlers, which a
pytest process must not do to itself): this file's ``__main__`` block replaces ``run_worker``
with ``fake_run_worker`` and runs ``Arbiter``. The fake reports what it inherited to a JSON
file and behaves as ``FAKE_MODE`` (or a route in its config) says. The real worker is covered
by tests/e2e/test_process_model.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluxgate.master.arbiter import (
    EXIT_WORKER_BOOT_FAILED,
    RESPAWN_MAX_DELAY,
    respawn_delay,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "arbiter-test-admin-token"


# ---- the stand-in worker (runs in the forked child) -----------------------------------------


def fake_run_worker(spec) -> int:
    """Report the inherited process state, signal readiness, idle until told to stop."""
    import asyncio

    from fluxgate.worker.worker import EXIT_BOOT_ERROR, EXIT_OK

    mode = os.environ.get("FAKE_MODE", "")
    report_dir = Path(os.environ["FAKE_REPORT_DIR"])
    routes = [r.route for r in spec.config.routes]
    parent = os.getppid()
    sockets = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with s:
            try:
                sockets[fd] = list(s.getsockname())[:2]
            except OSError:
                pass
    report = {
        "pid": os.getpid(),
        "worker_id": spec.worker_id,
        "routes": routes,
        "route_slots": list(spec.route_slots),
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "handlers": {
            s.name: signal.getsignal(s) == signal.SIG_DFL
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD)
        },
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "running_loop": asyncio.events._get_running_loop() is not None,
        "listen": list(spec.listen_socket.getsockname())[:2],
        "sockets": sockets,
    }
    (report_dir / f"{os.getpid()}.json").write_text(json.dumps(report))
    if mode == "bootfail" or "/boom" in routes:
        return EXIT_BOOT_ERROR
    stop = []
    if mode == "stuck":  # a worker that never drains: only SIGKILL ends it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGQUIT, lambda *a: os._exit(EXIT_OK))
    if "/slowboot" in routes:
        time.sleep(1.0)
    spec.metrics.record(0, 200, 0.001)  # the shared table works from the child
    os.write(spec.ready_fd, b"1")
    os.close(spec.ready_fd)
    deadline = time.monotonic() + 60  # never outlive a broken test
    while not stop and time.monotonic() < deadline and os.getppid() == parent:
        time.sleep(0.02)
    if mode == "slowdrain":
        time.sleep(0.3)
    return EXIT_OK


# ---- harness ---------------------------------------------------------------------------------


CONFIG = """\
listen: {listen}
state_dir: {state}
admin: {{listen: '127.0.0.1:0', token: {token}}}
limits: {{drain_timeout: {drain}}}
routes:
{routes}"""


def write_config(
    path: Path, state: Path, routes=("/a",), drain="0.5s", listen="127.0.0.1:0"
) -> None:
    lines = "".join(
        f"  - route: {r}\n    upstream: http://127.0.0.1:9\n    public: true\n" for r in routes
    )
    path.write_text(
        CONFIG.format(listen=listen, state=state, token=TOKEN, drain=drain, routes=lines)
    )


class Master:
    """A master process running fake workers; knows how to find and kill all of them."""

    def __init__(self, tmp_path: Path, mode: str = "", workers: int = 2, **config) -> None:
        self.dir = tmp_path
        self.state = tmp_path / "state"
        self.reports = tmp_path / "reports"
        self.reports.mkdir(exist_ok=True)
        self.config = tmp_path / "fluxgate.yaml"
        write_config(self.config, self.state, **config)
        self.log_path = tmp_path / "master.log"
        env = dict(os.environ, FAKE_MODE=mode, FAKE_REPORT_DIR=str(self.reports))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.config), str(workers)],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.seen_pids: set[int] = set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def info(self, timeout: float = 10.0) -> dict:
        path = self.state / "gateway.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return json.loads(path.read_text())
            assert self.proc.poll() is None, self.log()
            time.sleep(0.02)
        raise AssertionError(f"no gateway.json\n{self.log()}")

    def children(self) -> set[int]:
        # Imported here: this file also runs as the stand-in master's script, without tests/.
        from tests.support.gateway import child_pids

        pids = child_pids(self.proc.pid)
        self.seen_pids |= pids
        return pids

    def admin(self, method: str, path: str, token: bool = True) -> tuple[int, bytes]:
        port = self.info()["admin"][1]
        head = f"{method} {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        if token:
            head += f"Authorization: Bearer {TOKEN}\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head.encode() + b"Content-Length: 0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        return int(head_bytes.split()[1]), body

    def wait(self, predicate, timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log()}")

    def wait_ready(self, n: int, timeout: float = 10.0) -> set[int]:
        def ready():
            status, body = self.admin("GET", "/readyz", token=False)
            return status == 200 and len(self.children()) == n
        self.wait(ready, timeout, f"{n} ready workers")
        return self.children()

    def exit_code(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        self.children()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        from tests.support.gateway import kill_pids  # local: see children() above

        kill_pids(self.seen_pids)
        self._log.close()


@pytest.fixture
def master_factory(tmp_path):
    started: list[Master] = []

    def start(mode: str = "", workers: int = 2, **config) -> Master:
        m = Master(tmp_path, mode, workers, **config)
        started.append(m)
        return m

    try:
        yield start
    finally:
        for m in started:
            m.cleanup()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def report(m: Master, pid: int) -> dict:
    return json.loads((m.reports / f"{pid}.json").read_text())


# ---- tests -----------------------------------------------------------------------------------


def test_respawn_delay_doubles_and_caps():
    assert respawn_delay(1) == pytest.approx(0.1)
    assert respawn_delay(2) == pytest.approx(0.2)
    assert respawn_delay(4) == pytest.approx(0.8)
    assert respawn_delay(50) == RESPAWN_MAX_DELAY


def test_start_state_file_and_fork_hygiene(master_factory):
    m = master_factory()
    info = m.info()
    assert info["pid"] == m.proc.pid and info["workers"] == 2
    assert info["listen"][1] > 0 and info["admin"][1] > 0
    assert stat.S_IMODE(os.stat(m.state / "gateway.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(m.state).st_mode) == 0o700
    pids = m.wait_ready(2)
    for pid in pids:
        r = report(m, pid)
        assert r["wakeup_fd"] == -1  # the master's wakeup socket was detached
        assert all(r["handlers"].values()), r["handlers"]
        assert r["blocked"] == []  # the fork-time signal mask was lifted
        assert r["running_loop"] is False
        assert r["listen"] == info["listen"]
        bound = list(r["sockets"].values())
        assert info["listen"] in bound  # the listen socket is inherited...
        assert info["admin"] not in bound  # ...the admin listener is not
    assert sorted(report(m, p)["worker_id"] for p in pids) == [0, 1]
    # The metrics table is shared: both workers' records are visible to the master.
    status, body = m.admin("GET", "/metrics")
    assert status == 200
    assert b'fluxgate_requests_total{route="",status="200"} 2' in body
    assert b"fluxgate_workers_ready 2" in body


def test_dead_worker_is_respawned(master_factory):
    m = master_factory()
    pids = m.wait_ready(2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    new = m.wait(lambda: (c := m.children()) and victim not in c and len(c) == 2 and c,
                 what="respawn")
    survivor = (pids - {victim}).pop()
    assert survivor in new
    m.wait_ready(2)
    respawned = (new - pids).pop()
    assert report(m, respawned)["worker_id"] == report(m, victim)["worker_id"]
    status, body = m.admin("GET", "/metrics")
    assert b"fluxgate_worker_restarts_total 1" in body
    assert "died: signal 9" in m.log()


def test_boot_failure_stops_the_master(master_factory):
    m = master_factory(mode="bootfail")
    t0 = time.monotonic()
    code = m.exit_code(timeout=15)
    assert code == EXIT_WORKER_BOOT_FAILED
    assert time.monotonic() - t0 < 10
    assert "failed to boot 5 times in a row" in m.log()
    assert len(list(m.reports.iterdir())) >= 5
    assert not (m.state / "gateway.json").exists()


def test_readyz_waits_for_every_worker(master_factory):
    m = master_factory(routes=("/a", "/slowboot"))
    m.info()
    status, body = m.admin("GET", "/readyz", token=False)
    assert status == 503 and json.loads(body)["status"] == "not_ready"
    m.wait_ready(2)


def test_sighup_reload_replaces_workers(master_factory):
    m = master_factory()
    old = m.wait_ready(2)
    slots_before = report(m, min(old))["route_slots"]
    write_config(m.config, m.state, routes=("/a", "/b"))
    m.proc.send_signal(signal.SIGHUP)
    m.wait(lambda: m.info()["generation"] == 2, what="generation 2")
    new = m.wait(lambda: (c := m.children()) and not (c & old) and len(c) == 2 and c,
                 what="old generation gone")
    for pid in new:
        r = report(m, pid)
        assert r["routes"] == ["/a", "/b"]
        assert r["route_slots"][0] == slots_before[0]  # /a keeps its metrics slot
    status, body = m.admin("GET", "/metrics")
    assert b'route="/b"' in body and b"fluxgate_worker_restarts_total 0" in body
    assert "reloaded: generation 2" in m.log()


def test_reload_rebinds_when_listen_changes(master_factory):
    m = master_factory()
    old = m.wait_ready(2)
    old_listen = m.info()["listen"]
    from tests.support.gateway import free_port

    port = free_port()  # for the new listen address
    write_config(m.config, m.state, listen=f"127.0.0.1:{port}")
    status, body = m.admin("POST", "/admin/reload")
    assert status == 200, body
    assert m.info()["listen"] == ["127.0.0.1", port]
    new = m.wait(lambda: (c := m.children()) and not (c & old) and len(c) == 2 and c,
                 what="old generation gone")
    assert all(report(m, p)["listen"] == ["127.0.0.1", port] for p in new)
    # The old port is closed once its workers are gone: nobody else holds the socket.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(tuple(old_listen), timeout=2).close()
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the kernel queues it on the new socket


def test_cli_check(tmp_path, capsys):
    from fluxgate.cli.fluxgate import main, resolve_config_path

    cfg = tmp_path / "fluxgate.yaml"
    write_config(cfg, tmp_path / "state", routes=("/a", "/b"))
    assert main(["check", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == "config OK: 2 routes\n"
    cfg.write_text(cfg.read_text() + "nope: 1\n")
    assert main(["check", "--config", str(cfg)]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["check", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert resolve_config_path("x.yaml") == "x.yaml"


def test_cli_config_lookup_order(monkeypatch):
    from fluxgate.cli.fluxgate import resolve_config_path

    monkeypatch.setenv("FLUXGATE_CONFIG", "/etc/fg.yaml")
    assert resolve_config_path(None) == "/etc/fg.yaml"
    assert resolve_config_path("cli.yaml") == "cli.yaml"
    monkeypatch.delenv("FLUXGATE_CONFIG")
    assert resolve_config_path(None) == "fluxgate.yaml"


def test_invalid_config_on_sighup_keeps_serving(master_factory):
    m = master_factory()
    old = m.wait_ready(2)
    m.config.write_text(m.config.read_text() + "bogus_key: 1\n")
    m.proc.send_signal(signal.SIGHUP)
    m.wait(lambda: "reload rejected" in m.log(), what="the rejection")
    assert "bogus_key" in m.log()
    time.sleep(0.3)
    assert m.children() == old and all(alive(p) for p in old)
    assert m.admin("GET", "/readyz", token=False)[0] == 200
    assert m.info()["generation"] == 1


def test_reload_whose_workers_cannot_boot_keeps_old(master_factory):
    m = master_factory()
    old = m.wait_ready(2)
    write_config(m.config, m.state, routes=("/a", "/boom"))
    status, body = m.admin("POST", "/admin/reload")
    assert status == 409, body
    assert "exited during boot" in json.loads(body)["error_description"]
    m.wait(lambda: m.children() == old, what="the failed generation to be gone")
    assert m.admin("GET", "/readyz", token=False)[0] == 200
    # The failed generation's slots are rolled back: /boom is not a metrics route.
    assert b'route="/boom"' not in m.admin("GET", "/metrics")[1]
    # A good config afterwards reloads fine.
    write_config(m.config, m.state, routes=("/a", "/c"))
    status, body = m.admin("POST", "/admin/reload")
    assert status == 200 and json.loads(body)["generation"] == 3


def test_sigterm_drains_then_exits_zero(master_factory):
    m = master_factory(mode="slowdrain")
    pids = m.wait_ready(2)
    m.proc.send_signal(signal.SIGTERM)
    assert m.exit_code() == 0
    assert not any(alive(p) for p in pids)
    assert not (m.state / "gateway.json").exists()
    assert not (m.state / "metrics.bin").exists()
    assert (m.state / "admin.token").exists() is False  # token came from the config
    log = m.log()
    assert "stopped: exit code 0" in log and "SIGKILL" not in log


def test_stuck_worker_is_killed_after_drain_timeout(master_factory):
    m = master_factory(mode="stuck", drain="0.3s")
    pids = m.wait_ready(2)
    t0 = time.monotonic()
    m.proc.send_signal(signal.SIGINT)
    assert m.exit_code() == 0
    assert 0.3 <= time.monotonic() - t0 < 5
    assert not any(alive(p) for p in pids)
    assert "did not exit in time: SIGKILL" in m.log()


def test_sigquit_is_fast(master_factory):
    m = master_factory(mode="stuck", drain="30s")
    pids = m.wait_ready(2)
    t0 = time.monotonic()
    m.proc.send_signal(signal.SIGQUIT)
    assert m.exit_code() == 0
    assert time.monotonic() - t0 < 5
    assert not any(alive(p) for p in pids)


def test_sigquit_cuts_a_graceful_stop_short(master_factory):
    m = master_factory(mode="stuck", drain="30s")
    pids = m.wait_ready(2)
    m.proc.send_signal(signal.SIGTERM)
    m.wait(lambda: "graceful stop" in m.log(), what="the graceful stop")
    time.sleep(0.2)
    assert all(alive(p) for p in pids)  # draining (forever, were it not for SIGQUIT)
    t0 = time.monotonic()
    m.proc.send_signal(signal.SIGQUIT)
    assert m.exit_code() == 0
    assert time.monotonic() - t0 < 5
    assert not any(alive(p) for p in pids)


def test_second_master_on_same_state_dir_is_refused(master_factory, tmp_path):
    m = master_factory()
    m.wait_ready(2)
    other = Master(tmp_path, "", 1)
    try:
        assert other.exit_code() == 1
        assert "another gateway is running" in other.log()
    finally:
        other.cleanup()
    assert (m.state / "gateway.json").exists()  # the first one's files are untouched


if __name__ == "__main__":
    # The master under test: the real Arbiter with the stand-in worker.
    import logging

    import fluxgate.worker.worker as worker_module
    from fluxgate.config import load_config
    from fluxgate.master.arbiter import Arbiter

    worker_module.run_worker = fake_run_worker
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    config_path, workers = sys.argv[1], int(sys.argv[2])
    sys.exit(Arbiter(load_config(config_path), config_path, workers_override=workers).run())
