"""Start a real `fluxgate run` process for a test and find its ports via gateway.json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class GatewayProcess:
    """A running `fluxgate run` (the master and its workers) on 127.0.0.1:0."""

    def __init__(self, tmp_path: Path, config_text: str, workers: int = 1, env: dict | None = None,
                 listen: str = "127.0.0.1:0"):
        self.dir = tmp_path
        self.listen = listen  # YAML for `listen:`, e.g. "{address: '127.0.0.1:0', tls: {...}}"
        self.state_dir = tmp_path / "state"
        self.config_path = tmp_path / "fluxgate.yaml"
        self.log_path = tmp_path / "gateway.log"
        self.workers = workers
        self.env = env or {}
        self.write_config(config_text)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.admin_port = 0

    def write_config(self, config_text: str) -> None:
        header = (
            f"listen: {self.listen}\n"
            f"state_dir: {self.state_dir}\n"
            "admin: {listen: '127.0.0.1:0', token: test-admin-token}\n"
        )
        self.config_path.write_text(header + config_text)

    def start(self, timeout: float = 15.0) -> GatewayProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxgate.cli.fluxgate", "run", "--config", str(self.config_path),
             "--workers", str(self.workers)],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        info = self.state_dir / "gateway.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            if info.exists():
                try:
                    data = json.loads(info.read_text())
                    ready = bool(data) and self.ready()
                except (ValueError, FileNotFoundError):
                    # Half written, or removed by a master that is exiting: poll on, and
                    # the exit is reported above.
                    data, ready = None, False
                if ready:
                    self.port = data["listen"][1]
                    self.admin_port = data["admin"][1]
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not start:\n{self.log()}")

    def ready(self) -> bool:
        data = json.loads((self.state_dir / "gateway.json").read_text())
        try:
            with socket.create_connection(("127.0.0.1", data["admin"][1]), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                return s.recv(100).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def wait_ready(self, timeout: float = 10.0) -> None:
        if not wait_until(self.ready, timeout):
            raise RuntimeError(f"gateway not ready:\n{self.log()}")

    @property
    def url(self) -> str:
        scheme = "https" if "tls" in self.listen else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def wait_until(condition, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true (True) or ``timeout`` s have passed (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def child_pids(pid: int) -> set[int]:
    """The live children of process `pid` (a master's workers); empty once it is gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def kill_pids(pids) -> None:
    """SIGKILL every pid in `pids` that still exists (workers the test saw, at cleanup)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_in_children(count: int, body) -> list[int]:
    """Run `body()` in `count` forked children at once; their exit codes, 0 where `body`
    returned a true value (a child never returns into pytest)."""
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if body() else 1
            finally:
                os._exit(code)
        pids.append(pid)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (nothing listens on it until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_request(port: int, data: bytes, *, timeout: float = 2.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes, return everything received until the server closes or `timeout`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)
