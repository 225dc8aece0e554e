"""A real redis-server on 127.0.0.1 for cluster mode's tests, and a TCP relay that injects
faults between a gateway node and it.

    def test_keys(redis_server):                # function scope: a fresh, empty server
        redis_server.url                         # redis://127.0.0.1:<port>/0
        redis_server.client().ping()             # a sync redis-py client
        redis_server.stop(); redis_server.start()  # same port; data kept (RDB on stop) ...
        redis_server.restart(empty=True)         # ... or lost, as after a crash without disk

    relay = FaultRelay(redis_server.port).start()   # give nodes relay.url instead
    relay.delay = 0.1          # every chunk held 100 ms each way (a slow Redis)
    relay.partition()          # open connections stall, new ones hang: a partitioned node
    relay.heal()

The package is Debian's `redis-server` (`make sysdeps` installs it as root). Without it the
fixture skips, saying so; under CI (CI=true), where the Makefile installed it, it fails.
Only processes started here are stopped, by their PID.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import free_port, wait_until

REDIS_SERVER = "/usr/bin/redis-server"


def redis_unavailable() -> str | None:
    """Why a redis-server cannot run here, or None."""
    if not (Path(REDIS_SERVER).exists() or shutil.which("redis-server")):
        return "redis-server is missing (apt-get install redis-server; `make sysdeps` as root)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install -e '.[test]')"
    return None


class RedisServer:
    """One redis-server process on 127.0.0.1, its data in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, password: str | None = None,
                 tls: tuple[str, str] | None = None, extra: tuple[str, ...] = (),
                 config_file: Path | None = None):
        """``tls``: (certificate chain file, key file) to serve TLS only on ``port``;
        ``extra``: more command-line options (a cluster node's, a replica's); ``config_file``:
        read first (Sentinel rewrites its own)."""
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.extra = extra
        self.config_file = config_file
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = REDIS_SERVER if Path(REDIS_SERVER).exists() else shutil.which("redis-server")
        args = [
            binary, *([str(self.config_file)] if self.config_file else []), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            cert, key = self.tls
            args[args.index("--port") + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                     "--tls-auth-clients", "no"]
        args += self.extra
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        if not wait_until(self._answers if not self.tls else self._listens, timeout=10):
            self.kill()
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client(timeout=0.5).ping())
        except Exception:
            return False

    def _listens(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def client(self, timeout: float = 5.0):
        """A synchronous redis-py client (decode_responses off: values are bytes)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout)

    def stop(self, save: bool = True) -> None:
        """Stop the server, by its PID; with ``save`` its data is written to disk first, so
        that ``start`` brings it back."""
        if self.process is None or self.process.poll() is not None:
            return
        if save:
            try:
                self.client(timeout=2).save()
            except Exception:
                pass
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server dies with whatever it held in memory."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self, empty: bool = False) -> RedisServer:
        """Stop and start on the same port: with ``empty`` the data is gone (a crash of a
        server without persistence), otherwise it comes back."""
        if empty:
            self.kill()
            (self.directory / "dump.rdb").unlink(missing_ok=True)
        else:
            self.stop(save=True)
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a hung server)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A fresh redis-server on 127.0.0.1 for one test."""
    reason = redis_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"redis-server unavailable under CI: {reason}")
        pytest.skip(reason)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.kill()  # SIGKILL ends a paused (SIGSTOPped) server too


class FaultRelay:
    """A TCP relay on 127.0.0.1 in front of ``target_port``, with faults to inject.

    ``delay`` holds every chunk that many seconds in each direction; ``partition()`` stops
    forwarding (open connections stall, new ones are accepted and hang) until ``heal()``;
    ``reset()`` closes every connection it relays.
    """

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or free_port()
        self.delay = 0.0
        self._partitioned = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultRelay:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def partition(self) -> None:
        self._partitioned.set()

    def heal(self) -> None:
        self._partitioned.clear()

    def reset(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopping.set()
        self.reset()
        if self._thread:
            self._thread.join(timeout=5)
        if self._listener:
            self._listener.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump_pair, args=(client, server), daemon=True).start()

    def _pump_pair(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        # Chunks wait in order, each until its due time, so a delay keeps the byte order.
        pending: dict[socket.socket, list[tuple[float, bytes]]] = {client: [], server: []}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if self._partitioned.is_set():
                    time.sleep(0.02)
                    continue
                try:
                    events = selector.select(timeout=0.01)
                except (OSError, ValueError):
                    return
                for key, _ in events:
                    sock = key.fileobj
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._close(client, server)
                        return
                    pending[peers[sock]].append((time.monotonic() + self.delay, data))
                now = time.monotonic()
                for destination, queue in pending.items():
                    while queue and queue[0][0] <= now:
                        _, data = queue.pop(0)
                        try:
                            destination.setblocking(True)
                            destination.sendall(data)
                            destination.setblocking(False)
                        except OSError:
                            self._close(client, server)
                            return

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass
