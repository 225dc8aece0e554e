"""Native peer proxies for the e2e benchmark: HAProxy and nginx, one thread / one worker.

``ensure_installed(name)`` installs the Debian package with apt when the binary is missing
(``apt-get update`` at most once per process; every apt call is bounded in time) and returns
the binary or raises ``PeerUnavailable`` with the reason. The config builders write plain
reverse proxies to a single upstream, keep-alive on both sides, no logging, loopback only.
``PeerProcess`` runs the binary in the foreground and is stopped by its own pid.
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

_APT_TIMEOUT = 300.0  # s per apt-get call
_apt_updated: bool | None = None  # None: not tried, False: update failed


class PeerUnavailable(RuntimeError):
    """The peer's binary is missing and could not be installed."""


_PACKAGES = {"haproxy": "haproxy", "nginx": "nginx"}


def _apt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", *args],
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_APT_TIMEOUT,
    )


def ensure_installed(binary: str) -> str:
    """Path of ``binary``; installs its Debian package first if needed."""
    global _apt_updated
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise PeerUnavailable(f"{binary} is not installed and apt-get is not available")
    if os.geteuid() != 0:
        raise PeerUnavailable(f"{binary} is not installed; installing it with apt needs root")
    try:
        if _apt_updated is None:
            done = _apt("update")
            _apt_updated = done.returncode == 0
            if not _apt_updated:
                raise PeerUnavailable(f"apt-get update failed: {done.stderr.strip()[-500:]}")
        elif not _apt_updated:
            raise PeerUnavailable("apt-get update failed earlier in this run")
        done = _apt("install", "-y", "--no-install-recommends", _PACKAGES[binary])
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"apt-get did not finish within {_APT_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise PeerUnavailable(
            f"apt-get install {_PACKAGES[binary]} failed: {done.stderr.strip()[-500:]}"
        )
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if not found:
        raise PeerUnavailable(f"{binary} still missing after apt-get install")
    return found


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


def nginx_config(workdir: Path, port: int, upstream_port: int) -> str:
    """nginx as a plain HTTP reverse proxy: one worker, keep-alive both sides, no access log."""
    tmp = workdir / "tmp"
    return f"""\
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 60s;

    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


class PeerProcess:
    """A peer proxy in the foreground; ``start()`` waits until its port accepts."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> PeerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
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


def nginx(binary: str, workdir: Path, upstream_port: int) -> PeerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    port = free_port()
    cfg = workdir / "nginx.conf"
    cfg.write_text(nginx_config(workdir, port, upstream_port))
    return PeerProcess(
        "nginx",
        [binary, "-p", str(workdir), "-c", str(cfg), "-e", str(workdir / "error.log")],
        port,
        workdir / "nginx.log",
    )
