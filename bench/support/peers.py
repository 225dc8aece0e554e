"""The native peer of the e2e benchmarks, HAProxy (one thread), and the binaries they need.

``require(name)`` returns the binary's path or raises ``PeerUnavailable`` naming
``make bench-deps``: bench/ never installs packages itself (``make bench-deps`` prints the
apt line and runs it only with ``RUN=1``). ``haproxy_config`` writes a plain reverse proxy to
a single upstream, keep-alive on both sides, no logging, loopback only. ``PeerProcess`` runs a
binary (HAProxy, or nginx as the upstream) in the foreground and is stopped by its own pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.gateway import free_port  # the peer binds it a moment later

# What `make bench-deps` installs, by binary (Debian/Ubuntu package names).
PACKAGES = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk"}
DEPS_HINT = "`make bench-deps` prints the install line; `make bench-deps RUN=1` runs it"


class PeerUnavailable(RuntimeError):
    """A binary the benchmark needs is not installed."""


def require(binary: str) -> str:
    """Path of ``binary`` (also looked for in /usr/sbin, where Debian puts haproxy and nginx);
    ``PeerUnavailable`` with the install hint when it is missing. Nothing is installed here."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found:
        return found
    package = PACKAGES.get(binary, binary)
    raise PeerUnavailable(f"{binary} is not installed (Debian/Ubuntu package {package!r}); "
                          f"bench/ does not install packages: {DEPS_HINT}")


def version(path: str) -> str:
    done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


# Shared by every HAProxy peer of the benches: one thread, keep-alive both sides, no log.
HAPROXY_COMMON = """\
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
"""


def haproxy_config(port: int, upstream_port: int) -> str:
    """HAProxy as a plain HTTP reverse proxy: one thread, keep-alive both sides, no log."""
    return HAPROXY_COMMON + f"""\

frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream

backend upstream
    http-reuse safe
    server up1 127.0.0.1:{upstream_port} maxconn 1000
"""


class PeerProcess:
    """A peer proxy in the foreground; ``start()`` waits until its port accepts."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, *,
                 env: dict[str, str] | None = None, scheme: str = "http") -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = env or {}  # added to this process's environment
        self.scheme = scheme  # "https" when the peer terminates TLS
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.description = name  # what the results say about it

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> PeerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env} if self.env else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not accept on port {self.port}:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # both: fast shutdown of master + workers
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def haproxy(binary: str, workdir: Path, upstream_port: int) -> PeerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, upstream_port))
    # -db: foreground, no daemon; no master-worker mode, so the pid is the proxy itself.
    return PeerProcess("haproxy", [binary, "-db", "-f", str(cfg)], port, workdir / "haproxy.log")
